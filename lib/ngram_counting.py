"""Counting n-grams with sorted int64 keys, and discounts from counts of counts (chapter 4).

The counting half of :mod:`lib.ngram`: :func:`count_ngrams` packs every window of ``n``
ids into one int64 key (the ids as digits in base ``V``, :func:`pack_ngrams`) and counts
the keys with ``torch.unique``, a sort, on the device of the ids; :func:`find_keys` looks
keys up in a sorted array with ``torch.searchsorted``. The discount half turns counts of
counts ``n_1, n_2, ...`` (how many n-grams were seen once, twice, ...) into Kneser-Ney's
discount (eq. 8, :func:`kn_discount`) and modified Kneser-Ney's three
(eq. 12, :func:`modified_kn_discounts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .validate import check_int, check_long_tensor

_INT64_MAX = 2**63 - 1


# ------------------------------------------------------------------------ counting


def pack_ngrams(ngrams: torch.Tensor, base: int) -> torch.Tensor:
    """One int64 key per row of ``ngrams`` (M, n): its ids as the digits of a base-``base`` number.

    Keys sort like the rows (lexicographically) because every id is below ``base``.
    Requires ``base ** n <= 2**63 - 1``; :func:`count_ngrams` checks this.
    """
    key = torch.zeros(ngrams.shape[0], dtype=torch.long, device=ngrams.device)
    for j in range(ngrams.shape[1]):  # Horner's rule over the n columns
        key = key * base + ngrams[:, j]
    return key


def count_ngrams(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct n-grams of the 1-D sequence ``ids`` and how often each occurs.

    ids: (N,) int64, values >= 0. Returns ``(ngrams, counts)``: (M, n) int64
    rows in lexicographic order and (M,) int64 counts, on the device of ``ids``.
    The N - n + 1 windows are packed into int64 keys (:func:`pack_ngrams`, base
    ``max(ids) + 1``) and counted by ``torch.unique``, a sort. When ``base ** n``
    would overflow int64 the rows themselves are sorted (``torch.unique(dim=0)``:
    slower, same result).
    """
    check_long_tensor(ids, "ids", ndim=1, low=0)
    check_int(n, "n", minimum=1)
    if ids.numel() < n:
        empty = torch.zeros(0, dtype=torch.long, device=ids.device)
        return empty.reshape(0, n), empty
    windows = ids.unfold(0, n, 1)  # (N - n + 1, n) view: row i is ids[i : i + n]
    base = int(ids.max()) + 1
    if base ** n > _INT64_MAX:
        return torch.unique(windows, dim=0, return_counts=True)
    keys, counts = torch.unique(pack_ngrams(windows, base), return_counts=True)
    digits = [keys // base ** (n - 1 - j) % base for j in range(n)]  # unpack
    return torch.stack(digits, dim=1), counts


def find_keys(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Position of each of ``keys`` in ``sorted_keys``, or -1 where it is absent."""
    pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == keys, pos, -1)


# ------------------------------------------------------------------ discounts


def kn_discount(counts_of_counts: Sequence[int]) -> float | None:
    """The Kneser-Ney discount ``D = n1 / (n1 + 2 n2)`` (eq. 8), or None if undefined.

    counts_of_counts: ``[n1, n2, ...]``, the number of n-grams seen once, twice, ...
    Undefined (None) when ``n1`` or ``n2`` is 0, where the estimate degenerates to 0 or 1.
    """
    n1, n2 = counts_of_counts[0], counts_of_counts[1]
    if n1 == 0 or n2 == 0:
        return None
    return n1 / (n1 + 2 * n2)


def modified_kn_discounts(counts_of_counts: Sequence[int]) -> tuple[float, float, float] | None:
    """Modified Kneser-Ney discounts ``D_c = c - (c + 1) Y n_{c+1} / n_c`` for c = 1, 2, 3.

    Here ``Y = n1 / (n1 + 2 n2)``: chapter 4's eq. 12, as KenLM computes it (Chen &
    Goodman's eq. 26). counts_of_counts: ``[n1, n2, n3, n4]``. None when ``n1``, ``n2`` or ``n3``
    is 0 or a discount falls outside ``[0, c]`` (KenLM refuses such data unless told to
    fall back).
    """
    n = [0, *counts_of_counts[:4]]
    if min(n[1], n[2], n[3]) == 0:
        return None
    y = n[1] / (n[1] + 2 * n[2])
    d = tuple(c - (c + 1) * y * n[c + 1] / n[c] for c in (1, 2, 3))
    if any(not 0 <= d[c - 1] <= c for c in (1, 2, 3)):
        return None
    return d


def counts_of_counts(counts: torch.Tensor, top: int = 4) -> list[int]:
    """``[n1, ..., n_top]``: how many entries of ``counts`` equal 1, 2, ..., ``top``."""
    hist = torch.bincount(counts.clamp(max=top + 1), minlength=top + 2)
    return [int(v) for v in hist[1 : top + 1]]
