"""Attention: the readable reference, a tiled forward that counts its memory traffic, and
FlashAttention's Triton forward and backward kernels.

Chapter 7 (equation numbers refer to it). Dao, Fu, Ermon, Rudra & Ré (2022),
"FlashAttention: fast and memory-efficient exact attention with IO-awareness";
Dao (2023), "FlashAttention-2".

Layout (B, H, N, d): q is (B, H, Nq, d), k and v are (B, H, Nk, d). With scale
s = 1/sqrt(d) by default,

    S = s Q K^T,   P = softmax(S) row by row,   O = P V                    (eq. 1)

and the log-sum-exp of each score row, L_i = log sum_j exp(S_ij), is what the backward
pass recomputes P from (eq. 9).

Which keys a query may see:

* ``causal=True`` aligns the causal mask to the bottom-right corner, as flash-attn >= 2.1
  does: query i sees key j iff j <= i + (Nk - Nq). With Nq = Nk this is the usual
  lower triangle; with Nq < Nk (decoding with a KV cache) the last query sees every key.
  PyTorch's ``scaled_dot_product_attention(is_causal=True)`` aligns top-left instead
  (j <= i); ``torch.nn.attention.bias.causal_lower_right`` gives our convention.
* ``mask`` (bool, ``(Nq, Nm)`` or ``(B, Nq, Nm)``, the same for every head) applies to the
  LAST Nm keys, 1 <= Nm <= min(Nk, 128); True means "may attend". The first Nk - Nm keys
  (a shared prefix) are not affected by it. It is combined with ``causal`` by AND. This is
  how chapter 9 verifies a prefix plus a tree of candidate tokens in one pass.
* A query row that sees no key at all outputs zeros and has L = -inf, never NaN (the
  convention of chapter 1's softmax for all -inf rows).

Module layout: reference (the spec) -> tiled forward with traffic counters and the IO
model -> Triton kernels -> autograd wrapper -> public ``flash_attention``.
"""

from __future__ import annotations

import math
import numbers

import torch

from .backend import resolve_backend
from .softmax import softmax_reference
from .validate import FLOAT_DTYPES, check_same, check_tensor

MAX_HEAD_DIM = 256  # head dims up to this are supported (padded to a power of two inside)
MAX_MASK_KEYS = 128  # the explicit mask covers at most this many trailing keys

# ----------------------------------------------------------------------------- reference


def allowed_keys(
    n_q: int,
    n_k: int,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean (Nq, Nk) or (B, Nq, Nk) table of which key each query may see.

    Bottom-right causal alignment (query i sees key j iff j <= i + Nk - Nq), AND the
    explicit ``mask`` on the last Nm keys. ``mask`` must already be validated.
    """
    if mask is not None:
        device = mask.device
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        allowed = j <= i + (n_k - n_q)
    if mask is not None:
        n_m = mask.shape[-1]
        prefix = torch.ones(*mask.shape[:-1], n_k - n_m, dtype=torch.bool, device=device)
        allowed = allowed & torch.cat([prefix, mask], dim=-1)
    return allowed


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Standard attention (eq. 1), materialising the (Nq, Nk) scores, in fp32.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); mask: None, (Nq, Nm) or (B, Nq, Nm) bool on the
    last Nm keys. Returns O (B, H, Nq, d) in q's dtype, and with ``return_lse`` also the
    log-sum-exp L (B, H, Nq) in fp32 (eq. 9). Differentiable through autograd. Rows that
    see no key give zeros and L = -inf.
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    s = scale * (q.float() @ k.float().transpose(-2, -1))  # (B, H, Nq, Nk)
    if causal or mask is not None:
        allowed = allowed_keys(q.shape[-2], k.shape[-2], causal, mask, q.device)
        if allowed.dim() == 3:  # (B, Nq, Nk): the same mask for every head
            allowed = allowed[:, None]
        s = s.masked_fill(~allowed, -math.inf)
    p = softmax_reference(s, dim=-1)  # all -inf rows give zeros, not NaN
    out = (p @ v.float()).to(q.dtype)
    if return_lse:
        return out, torch.logsumexp(s, dim=-1)  # -inf where the row sees no key
    return out


# ------------------------------------------------------------------------------ validation


def _check_inputs(q, k, v, causal, scale, mask) -> tuple[float, torch.Tensor | None]:
    """Validate the public arguments; return the scale as a float and the mask (or None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4, dtypes=FLOAT_DTYPES)
    check_same("dtype", q=q, k=k, v=v)
    check_same("device", q=q, k=k, v=v)
    (bq, hq, n_q, d), (bk, hk, n_k, dk) = q.shape, k.shape
    if (bq, hq) != (bk, hk):
        raise ValueError(
            f"q and k must have the same batch and head sizes (B, H), got {(bq, hq)} and "
            f"{(bk, hk)}"
        )
    if dk != d:
        raise ValueError(f"q and k must have the same head dim d, got {d} and {dk}")
    if v.shape != k.shape:
        raise ValueError(
            f"v must have the shape of k (B, H, Nk, d) = {tuple(k.shape)}, got {tuple(v.shape)}"
        )
    if n_q < 1 or n_k < 1 or d < 1:
        raise ValueError(
            f"q and k need at least one query, key and head dim, got Nq={n_q}, Nk={n_k}, d={d}"
        )
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim d must be at most {MAX_HEAD_DIM}, got {d}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype bool (True = may attend), got {mask.dtype}")
        if mask.device != q.device:
            raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")
        if mask.dim() not in (2, 3):
            raise ValueError(
                f"mask must have shape (Nq, Nm) or (B, Nq, Nm), got {tuple(mask.shape)}"
            )
        n_m = mask.shape[-1]
        if mask.shape[-2] != n_q or (mask.dim() == 3 and mask.shape[0] != bq):
            want = f"({n_q}, Nm) or ({bq}, {n_q}, Nm)"
            raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")
        if not 1 <= n_m <= min(n_k, MAX_MASK_KEYS):
            raise ValueError(
                f"mask covers the last Nm keys with 1 <= Nm <= min(Nk, {MAX_MASK_KEYS}) = "
                f"{min(n_k, MAX_MASK_KEYS)}, got Nm={n_m}"
            )
    return float(scale), mask


# ---------------------------------------------------------------------------- public function


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
):
    """Exact attention softmax(s Q K^T) V (eq. 1) without materialising the scores.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); any Nq, Nk >= 1, d <= 256; fp32, fp16 or bf16
    (all three the same), fp32 accumulation. scale: default 1/sqrt(d).
    causal: bottom-right aligned (query i sees key j iff j <= i + Nk - Nq), as flash-attn
    >= 2.1; SDPA's ``is_causal`` is top-left aligned (see the module docstring).
    mask: None or bool (Nq, Nm) / (B, Nq, Nm) on the last Nm <= 128 keys, True = may
    attend, ANDed with ``causal``.
    backend: ``"auto"`` (Triton on CUDA, the PyTorch reference elsewhere), ``"triton"``
    (the kernels; Triton's interpreter on CPU) or ``"torch"`` (:func:`attention_reference`).
    Returns O (B, H, Nq, d) in q's dtype, and with ``return_lse`` also the log-sum-exp
    L (B, H, Nq) in fp32 (natural log; -inf for a row that sees no key, whose O is zero).
    Differentiable in q, k, v with either backend.
    """
    scale, mask = _check_inputs(q, k, v, causal, scale, mask)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if resolve_backend(backend, q) == "torch":
        return attention_reference(q, k, v, causal, scale, mask, return_lse=return_lse)
    raise NotImplementedError("the Triton path of flash_attention is being written")
