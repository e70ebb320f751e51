"""N-gram language models counted with tensor ops: MLE, add-k, Kneser-Ney (chapter 4).

An n-gram model of order ``n`` predicts each token from the ``n - 1`` tokens before it
(the Markov assumption, eq. 2; equation numbers are those of chapter 4) with
probabilities estimated from counts.
Everything here runs on the device of its tensors, with no Python loop over tokens:

* :func:`count_ngrams` (from :mod:`lib.ngram_counting`) counts the n-grams of a sequence
  by packing each one into a single int64 key (its ids as digits in base ``V``) and
  sorting the keys (``torch.unique``).
* :class:`NGramLM` stores, for every order ``k = 1 .. n``, the sorted keys of the k-grams
  and of their contexts, and per-entry weights of one recursion (eq. 6),
  ``p_k(w | h) = alpha_k(h w) + gamma_k(h) p_{k-1}(w | h')``, that every smoothing shares:
  maximum likelihood (eq. 3), add-k (eq. 5), interpolated Kneser-Ney with one
  discount per order (eq. 10) and modified Kneser-Ney with three (eq. 11).
  Scoring a batch of n-grams is ``2n`` binary searches (``torch.searchsorted``) and a
  few gathers.

A k-gram is keyed by its *suffix*: ``key = index_of(last k - 1 tokens) * V + first
token``, where ``index_of`` is the position of the (k-1)-gram in its own sorted table.
Keys stay below ``(number of distinct (k-1)-grams) * V``, far from int64's limit for any
corpus and any order, and ``key // V`` is the suffix, which is what Kneser-Ney's
continuation counts (eq. 9) need: the number of distinct left extensions of a
k-gram is a ``bincount`` of the (k+1)-gram keys divided by ``V``.

Sentences are padded inside :meth:`NGramLM.fit` with ``n - 1`` start markers ``<s>`` and
one end marker ``</s>`` (:func:`lib.corpus.pad_sentence`); the model predicts every
token and ``</s>``, never ``<s>``, so its distributions are over the vocabulary without
``<s>`` (as in KenLM). Unknown tokens map to ``<unk>``.

With ``n - 1`` start markers (NLTK's padding, and this module's), a lower-order n-gram
that begins with ``<s>`` has one left neighbour, ``<s>``: its continuation count (eq. 9
on the padded text) is 1. KenLM's n-grams hold a single ``<s>`` (its adjust_counts
collapses the padding) and the ones that begin with it keep their raw counts, so the
counts of counts below the top order, and the discounts of eq. 8 and eq. 12 estimated
from them, differ slightly from KenLM's on the same text.
"""

from __future__ import annotations

import array
import itertools
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .backend import default_device
from .corpus import BOS, EOS, UNK, Vocabulary, check_sentences
from .ngram_counting import (  # noqa: F401  (count_ngrams, the discounts: lib.ngram's too)
    count_ngrams,
    counts_of_counts,
    find_keys,
    kn_discount,
    modified_kn_discounts,
    pack_ngrams,
)
from .validate import check_choice, check_int, check_long_tensor, check_real

SMOOTHINGS = ("mle", "laplace", "kneser_ney", "modified_kneser_ney")
# KenLM's --discount_fallback default: the discounts used when counts of counts are too
# few to estimate them (tiny or artificial corpora).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def _check_discount(discount, smoothing: str, order: int):
    """Normalise ``discount`` to one entry per order (None: estimate), or raise."""
    if discount is None:
        return [None] * order
    modified = smoothing == "modified_kneser_ney"
    if smoothing not in ("kneser_ney", "modified_kneser_ney"):
        raise ValueError(f"discount applies to Kneser-Ney smoothing only, got "
                         f"smoothing={smoothing!r} with discount={discount!r}")

    def one(value, where):  # a float for KN, a triple (D1, D2, D3+) for modified KN
        if not modified:
            return check_real(value, where, minimum=0.0, maximum=1.0)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
            raise TypeError(f"{where} must be a triple (D1, D2, D3+), got {value!r}")
        return tuple(check_real(v, f"{where}[{c - 1}]", minimum=0.0, maximum=float(c))
                     for c, v in zip((1, 2, 3), value, strict=True))

    per_order = (isinstance(discount, Sequence) and not isinstance(discount, (str, bytes))
                 and len(discount) > 0 and (not modified or isinstance(discount[0], Sequence)))
    if not per_order:
        return [one(discount, "discount")] * order
    if len(discount) != order:
        raise ValueError(f"discount must give one value per order (lowest first), "
                         f"{order} in all, got {len(discount)}")
    return [one(d, f"discount[{k}]") for k, d in enumerate(discount)]


# ---------------------------------------------------------------------- the model


@dataclass
class Level:
    """The tables of order ``k``: k-grams seen in training and their (k-1)-token contexts.

    gram_keys (M,) and ctx_keys (C,): sorted int64 keys (see the module docstring).
    gram_ctx (M,): the context index of each k-gram. counts (M,): the count each k-gram
    enters the estimate with: its raw count, or for Kneser-Ney below the top order its
    continuation count (eq. 9). alpha (M,) and gamma (C,): the weights of eq.
    (6). active: False for the lower orders of add-k, which does not interpolate.
    """

    gram_keys: torch.Tensor
    ctx_keys: torch.Tensor
    gram_ctx: torch.Tensor
    counts: torch.Tensor
    alpha: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    active: bool = True


class NGramLM:
    """An n-gram language model of order ``order`` with one of :data:`SMOOTHINGS`.

    * ``"mle"``: relative frequencies (eq. 3); an unseen context falls back to the
      longest seen suffix of it, but an unseen word in a seen context has probability 0.
    * ``"laplace"``: add ``k`` to every count (eq. 5; Lidstone for ``k != 1``).
    * ``"kneser_ney"``: interpolated Kneser-Ney (eq. 10) with one discount per order:
      ``discount`` None (estimated, eq. 8), a float in [0, 1], or one float per order
      (lowest first). The unigram level is interpolated with the uniform distribution.
    * ``"modified_kneser_ney"``: three discounts per order for counts 1, 2 and 3+
      (eq. 11): None (Chen & Goodman's estimate, eq. 12), a triple, or one
      triple per order.

    ``fit(sentences)`` takes a list of token lists. Tensors live on ``device`` (default:
    CUDA when present). Probabilities are float64.
    """

    def __init__(self, order: int, smoothing: str = "mle", k: float = 1.0, discount=None,
                 device: torch.device | str | None = None):
        self.order = check_int(order, "order", minimum=1)
        self.smoothing = check_choice(smoothing, "smoothing", SMOOTHINGS)
        self.k = check_real(k, "k", minimum=0.0, strict=True)
        self._discount = _check_discount(discount, smoothing, order)
        self.device = torch.device(device) if device is not None else default_device()
        self.discounts: list | None = None  # the discounts used, per order, after fit
        self.vocabulary: Vocabulary | None = None
        self.levels: list[Level] = []

    def __repr__(self) -> str:
        size = "unfitted" if self.vocabulary is None else f"vocab={len(self.vocabulary)}"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}, {size})"

    # ------------------------------------------------------------------ fitting

    @property
    def vocab(self) -> list[str]:
        """The known tokens: ``<s>``, ``</s>``, ``<unk>``, then by frequency (ties: first seen)."""
        return list(self._fitted().itos)

    def fit(self, sentences: Sequence[Sequence[str]]) -> NGramLM:
        """Count the n-grams of ``sentences`` (a list of token lists) and set the weights."""
        check_sentences(sentences)
        freq = Counter(itertools.chain.from_iterable(sentences))
        for marker in (BOS, EOS):
            if marker in freq:
                i = next(i for i, tokens in enumerate(sentences) if marker in tokens)
                raise ValueError(f"sentences[{i}] holds the marker {marker!r}: markers are "
                                 "added by fit, pass the bare tokens")
        words = [t for t, _ in freq.most_common() if t != UNK]  # ties: first seen first
        self.vocabulary = Vocabulary([BOS, EOS, UNK, *words], sep=" ", unk=UNK)
        windows = self.ngrams_of(sentences)  # (T, n): one row per predicted token
        self.levels = self._count_levels(windows)
        self._set_weights()
        return self

    def ngrams_of(self, sentences: Sequence[Sequence[str]]) -> torch.Tensor:
        """(T, order) ids: each predicted token (words and ``</s>``) after its padded history.

        Unknown tokens become ``<unk>``; row t is the context of token t, then token t.
        """
        n, stoi, unk = self.order, self.vocabulary.stoi, self.vocabulary.stoi[UNK]
        start, end = [BOS] * (n - 1), [EOS]  # the padding of lib.corpus.pad_sentence
        stream = itertools.chain.from_iterable(itertools.chain(start, s, end) for s in sentences)
        # map runs in C: a Python loop over the tokens would take most of the fit time
        ids = array.array("q", map(stoi.get, stream, itertools.repeat(unk)))
        flat = torch.frombuffer(ids, dtype=torch.long).to(self.device, copy=True)
        windows = flat.unfold(0, n, 1)  # every n consecutive ids
        # a window ending at a <s> lies in the padding (or across two sentences): drop it;
        # every other window ends at a predicted token and holds only its own sentence
        return windows[windows[:, -1] != stoi[BOS]]

    def _count_levels(self, windows: torch.Tensor) -> list[Level]:
        """Sorted gram and context tables for k = 1 .. n (see the module docstring)."""
        n, V = self.order, len(self.vocabulary)
        T = windows.shape[0]
        gram_idx = torch.zeros(T, dtype=torch.long, device=self.device)  # the empty gram
        ctx_idx = torch.zeros(T, dtype=torch.long, device=self.device)  # the empty context
        levels = []
        for k in range(1, n + 1):
            first = windows[:, n - k]  # the token that extends the (k-1)-gram to the left
            gram_keys, gram_idx, raw = torch.unique(gram_idx * V + first, return_inverse=True,
                                                    return_counts=True)
            if k == 1:
                ctx_keys = torch.zeros(1, dtype=torch.long, device=self.device)
            else:  # the context of a k-gram is its first k - 1 tokens, keyed the same way
                ctx_keys, ctx_idx = torch.unique(ctx_idx * V + first, return_inverse=True)
            gram_ctx = torch.empty_like(gram_keys).scatter_(0, gram_idx, ctx_idx)
            levels.append(Level(gram_keys, ctx_keys, gram_ctx, raw))
        if self.smoothing in ("kneser_ney", "modified_kneser_ney"):
            for k in range(n - 1):  # continuation counts N1+(. g) below the top (eq. 9)
                levels[k].counts = torch.bincount(levels[k + 1].gram_keys // V,
                                                  minlength=levels[k].gram_keys.numel())
        return levels

    def _set_weights(self) -> None:
        """alpha and gamma of eq. (6) for every order, for this smoothing."""
        V_pred = len(self.vocabulary) - 1  # predicted tokens: all but <s>
        kneser_ney = self.smoothing in ("kneser_ney", "modified_kneser_ney")
        self.discounts = [] if kneser_ney else None
        for k, level in enumerate(self.levels):
            c = level.counts.double()
            ctx_total = torch.bincount(level.gram_ctx, weights=c,
                                       minlength=level.ctx_keys.numel())
            if self.smoothing == "laplace":  # eq. (5): only the top order counts
                level.active = k == self.order - 1
                denominator = ctx_total + self.k * V_pred
                # (c + k) / (C + kV) = c / (C + kV) + kV / (C + kV) * uniform
                level.alpha = c / denominator[level.gram_ctx]
                level.gamma = self.k * V_pred / denominator
                continue
            # what each k-gram gives up: 0 for MLE, eq. (10) or (11) for Kneser-Ney
            removed = (self._discount_of(k, level.counts) if kneser_ney
                       else torch.zeros_like(c))
            level.alpha = (c - removed) / ctx_total[level.gram_ctx]
            level.gamma = torch.bincount(level.gram_ctx, weights=removed,
                                         minlength=level.ctx_keys.numel()) / ctx_total

    def _discount_of(self, k: int, counts: torch.Tensor) -> torch.Tensor:
        """(M,) float64: the discount of each k-gram of order k + 1; records it in discounts."""
        given = self._discount[k]
        coc = counts_of_counts(counts)
        if self.smoothing == "kneser_ney":
            d = given if given is not None else kn_discount(coc)
            if d is None:
                d = 0.75
                warnings.warn(f"order {k + 1}: too few counts of counts {coc[:2]} to estimate "
                              f"the Kneser-Ney discount; using {d}", stacklevel=4)
            self.discounts.append(d)
            return torch.full_like(counts, d, dtype=torch.float64)
        d3 = given if given is not None else modified_kn_discounts(coc)
        if d3 is None:
            d3 = FALLBACK_DISCOUNTS
            warnings.warn(f"order {k + 1}: counts of counts {coc} give no valid modified "
                          f"Kneser-Ney discounts; using KenLM's fallback {d3}", stacklevel=4)
        self.discounts.append(tuple(d3))
        table = torch.tensor([0.0, *d3], dtype=torch.float64, device=counts.device)
        return table[counts.clamp(max=3)]

    # ------------------------------------------------------------------ scoring

    def _fitted(self) -> Vocabulary:
        if self.vocabulary is None:
            raise RuntimeError("the model is not fitted: call fit(sentences) first")
        return self.vocabulary

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """(len(tokens),) ids on the model's device; unknown tokens become ``<unk>``."""
        return self._fitted().encode(list(tokens)).to(self.device)

    def ngram_probs(self, ngrams: torch.Tensor,
                    context_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """p(w | h) for a batch of n-grams: ngrams (B, order) ids, context first, w last.

        Returns (B,) float64, by :meth:`interpolate` (eq. 6). context_lengths
        (B,), optional: use only the last ``L`` context tokens of a row (the others are
        ignored), the lower-order estimate NLTK gives for short contexts.
        """
        V = len(self._fitted())
        n = self.order
        check_long_tensor(ngrams, "ngrams", ndim=2, low=0, high=V)
        if ngrams.shape[1] != n:
            raise ValueError(f"ngrams must have {n} columns (order {n}), got shape "
                             f"{tuple(ngrams.shape)}")
        if ngrams.device != self.device:
            raise ValueError(f"ngrams must be on the model's device {self.device}, "
                             f"got {ngrams.device}")
        if context_lengths is not None:
            check_long_tensor(context_lengths, "context_lengths", ndim=1, low=0, high=n)
            if context_lengths.shape[0] != ngrams.shape[0]:
                raise ValueError("context_lengths must have one entry per row of ngrams")
            context_lengths = context_lengths.to(self.device)
        return self.interpolate(ngrams, context_lengths)

    def interpolate(self, ngrams: torch.Tensor,
                    context_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. (6) for checked ids (B, order): p_0 uniform, k = 1 .. n.

        Each order looks its k-gram and context up in sorted key tables (2 binary
        searches) and mixes ``alpha + gamma * p``. Users call :meth:`ngram_probs`.
        """
        V, n = len(self.vocabulary), self.order
        word = ngrams[:, -1]
        p = torch.full(word.shape, 1 / (V - 1), dtype=torch.float64,
                       device=word.device)  # p_0: uniform over all but <s>
        p[word == self.vocabulary.stoi[BOS]] = 0.0  # <s> is never predicted
        gram = ctx = torch.zeros_like(word)  # the empty gram and empty context
        for k, level in enumerate(self.levels, start=1):
            first = ngrams[:, n - k]  # extends the (k-1)-gram and its context
            gram = find_keys(level.gram_keys, gram * V + first)  # -1: unseen
            if k > 1:
                ctx = find_keys(level.ctx_keys, ctx * V + first)
            if not level.active:  # add-k: only the top order
                continue
            use = ctx >= 0  # an unseen context passes p through
            if context_lengths is not None:
                use &= context_lengths >= k - 1
            alpha = torch.where(gram >= 0, level.alpha[gram.clamp(min=0)], 0.0)
            p = torch.where(use, alpha + level.gamma[ctx.clamp(min=0)] * p, p)
        return p

    def ngram_logprobs(self, ngrams: torch.Tensor) -> torch.Tensor:
        """Natural log of :meth:`ngram_probs` (``-inf`` where the probability is 0)."""
        return self.ngram_probs(ngrams).log()

    def _context_ids(self, context: Sequence[str]) -> tuple[torch.Tensor, int]:
        """The last order - 1 context tokens as ids, left-padded with <s>; and their number."""
        if isinstance(context, str) or not isinstance(context, Sequence):
            raise TypeError(f"context must be a tuple of str tokens, got "
                            f"{type(context).__name__}")
        if any(not isinstance(t, str) for t in context):
            raise TypeError("context must hold str tokens")
        m = self.order - 1
        context = list(context)[len(context) - m:] if m else []
        ids = self.encode([BOS] * (m - len(context)) + context)
        return ids, len(context)

    def next_probs(self, context: Sequence[str] = ()) -> torch.Tensor:
        """(V,) float64: the probability of every token of :attr:`vocab` after ``context``.

        A context shorter than order - 1 uses the lower-order estimate (as :meth:`prob`).
        """
        ids, length = self._context_ids(context)
        V = len(self.vocabulary)
        words = torch.arange(V, device=self.device)
        ngrams = torch.cat([ids.expand(V, -1), words[:, None]], dim=1)
        lengths = torch.full((V,), length, dtype=torch.long, device=self.device)
        return self.ngram_probs(ngrams, lengths)

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        """p(word | context); context holds the previous tokens (the last order - 1 count)."""
        if not isinstance(word, str):
            raise TypeError(f"word must be a str, got {type(word).__name__}")
        ids, length = self._context_ids(context)
        ngram = torch.cat([ids, self.encode([word])])[None]
        lengths = torch.tensor([length], device=self.device)
        return float(self.ngram_probs(ngram, lengths))

    def logprob(self, word: str, context: Sequence[str] = ()) -> float:
        """Natural log of :meth:`prob`; ``-inf`` for probability 0."""
        p = self.prob(word, context)
        return math.log(p) if p > 0 else -math.inf

    def sentence_logprobs(self, tokens: Sequence[str]) -> torch.Tensor:
        """(len(tokens) + 1,) float64: ln p of each token and of ``</s>`` given its history."""
        if isinstance(tokens, str) or not isinstance(tokens, Sequence):
            raise TypeError(f"tokens must be a list of str tokens, got {type(tokens).__name__}")
        if any(not isinstance(t, str) for t in tokens):
            raise TypeError("tokens must hold str tokens")
        self._fitted()
        return self.ngram_logprobs(self.ngrams_of([list(tokens)]))

    def score_sentence(self, tokens: Sequence[str]) -> float:
        """ln p(tokens, </s>): the sum of the sentence's log-probabilities (eq. 1)."""
        return float(self.sentence_logprobs(tokens).sum())

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        """exp of the mean negative log-probability per predicted token (eq. 4).

        Every token and every ``</s>`` is predicted; ``inf`` when one has probability 0.
        """
        self._fitted()
        check_sentences(sentences)
        logp = self.ngram_logprobs(self.ngrams_of(sentences))
        return math.exp(-float(logp.mean()))

    # --------------------------------------------------------------- generation

    def generate(self, n: int, seed: int = 0, context: Sequence[str] = ()) -> list[str]:
        """Sample up to ``n`` tokens after ``context`` (a sentence start by default).

        Each token is drawn from :meth:`next_probs` of the last order - 1 tokens; sampling
        stops early when ``</s>`` is drawn (it is not returned). Deterministic for a seed.
        """
        vocab = self._fitted()
        check_int(n, "n", minimum=0)
        check_int(seed, "seed", minimum=0)
        self._context_ids(context)  # validates it
        history = [BOS] * (self.order - 1) + list(context)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list[str] = []
        for _ in range(n):
            m = self.order - 1
            probs = self.next_probs(history[len(history) - m:] if m else [])
            token = vocab.itos[int(torch.multinomial(probs, 1, generator=gen))]
            if token == EOS:
                break
            out.append(token)
            history.append(token)
        return out

