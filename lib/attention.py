"""Attention: the readable reference (the spec) and FlashAttention, the public op.

Chapter 7 (equation numbers refer to it). Dao, Fu, Ermon, Rudra & Ré (2022),
"FlashAttention: fast and memory-efficient exact attention with IO-awareness";
Dao (2023), "FlashAttention-2".

Layout (B, H, N, d): q is (B, H, Nq, d), k and v are (B, H, Nk, d). With scale
s = 1/sqrt(d) by default,

    S = s Q K^T,   P = softmax(S) row by row,   O = P V                    (eq. 1)

and the log-sum-exp of each score row, L_i = log sum_j exp(S_ij) (eq. 6), is what the
backward pass recomputes P from, P_ij = exp(S_ij - L_i) (eq. 10).

Which keys a query may see:

* ``causal=True`` aligns the causal mask to the bottom-right corner, as flash-attn >= 2.1
  does: query i sees key j iff j <= i + (Nk - Nq) (eq. 7). With Nq = Nk this is the usual
  lower triangle; with Nq < Nk (decoding with a KV cache) the last query sees every key.
  PyTorch's ``scaled_dot_product_attention(is_causal=True)`` aligns top-left instead
  (j <= i); ``torch.nn.attention.bias.causal_lower_right`` gives our convention.
* ``mask`` (bool, ``(Nq, Nm)`` or ``(B, Nq, Nm)``, the same for every head) applies to the
  LAST Nm keys, 1 <= Nm <= min(Nk, 128); True means "may attend". The first Nk - Nm keys
  (a shared prefix) are not affected by it. It is combined with ``causal`` by AND. This is
  how chapter 9 verifies a prefix plus a tree of candidate tokens in one pass.
* A query row that sees no key at all outputs zeros and has L = -inf, never NaN (the
  convention of chapter 1's softmax for all -inf rows).

NaN in q, k or v spreads as in PyTorch's attention: a NaN score makes its whole row NaN,
and a NaN in a value row that a query cannot see (masked out, P = 0) still gives
0 * NaN = NaN in that query's output, in the reference as in SDPA and the kernels.

The Triton path (:mod:`lib.attention_kernels`): a forward kernel, and a backward made of a
small kernel for D = rowsum(dO o O) (eq. 8), a dK/dV kernel and a dQ kernel, both
recomputing P from L. Their launches compile for sm_90a and sm_80 with no register spills
(``python -m lib.bench compile``). The IO model and the tiled forward that counts its
traffic are in :mod:`lib.attention_io`.

Module layout: reference (the spec) -> input checks -> autograd wrapper -> public
``flash_attention``.
"""

from __future__ import annotations

import math

import torch

from .attention_kernels import MAX_HEAD_DIM
from .attention_launch import _flash_bwd_triton, _flash_fwd_triton, kernel_supports
from .backend import resolve_backend
from .softmax import softmax_reference
from .validate import (
    FLOAT_DTYPES,
    check_bool,
    check_positive_int,
    check_real,
    check_same,
    check_tensor,
)

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

    Bottom-right causal alignment (query i sees key j iff j <= i + Nk - Nq, eq. 7), AND
    the explicit ``mask``, bool (Nq, Nm) or (B, Nq, Nm), on the last Nm <= Nk keys.
    On ``mask``'s device when it is given, else on ``device``.
    """
    check_positive_int(n_q, "n_q")
    check_positive_int(n_k, "n_k")
    check_bool(causal, "causal")
    if mask is not None:
        _check_mask(mask, n_q, n_k, batch=None, max_keys=n_k)
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
    """Standard attention (eq. 1), materialising the (Nq, Nk) scores, in fp32
    (in fp64 for fp64 inputs, so that it can serve as a high-precision oracle).

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); mask: None, (Nq, Nm) or (B, Nq, Nm)
    bool on the last Nm keys. Returns O (B, H, Nq, d) in q's dtype, and with
    ``return_lse`` also the log-sum-exp L (B, H, Nq) in fp32 (fp64) (eq. 6).
    Differentiable through autograd. Rows that see no key give zeros and
    L = -inf. Bad input raises as in :func:`flash_attention`, without the
    kernels' limits (any d, any Nm <= Nk).
    """
    scale, mask = _check_inputs(q, k, v, causal, scale, mask, kernel_limits=False)
    check_bool(return_lse, "return_lse")
    f = torch.promote_types(q.dtype, torch.float32)  # the dtype of the arithmetic
    s = scale * (q.to(f) @ k.to(f).transpose(-2, -1))  # (B, H, Nq, Nk)
    if causal or mask is not None:
        allowed = allowed_keys(q.shape[-2], k.shape[-2], causal, mask, q.device)
        if allowed.dim() == 3:  # (B, Nq, Nk): the same mask for every head
            allowed = allowed[:, None]
        s = s.masked_fill(~allowed, -math.inf)
    p = softmax_reference(s, dim=-1)  # all -inf rows give zeros, not NaN
    out = (p @ v.to(f)).to(q.dtype)
    if return_lse:
        return out, torch.logsumexp(s, dim=-1)  # -inf where the row sees no key
    return out


# ------------------------------------------------------------------------------ validation


def _check_inputs(q, k, v, causal, scale, mask,
                  kernel_limits: bool = True) -> tuple[float, torch.Tensor | None]:
    """Validate the public arguments; return the scale as a float and the mask (or None).

    kernel_limits: also the Triton kernels' limits, fp32/fp16/bf16, d <= 256 and Nm <= 128
    (the reference also takes fp64 and any d, Nm; flash_attention keeps the limits on
    every backend: one API).
    """
    dtypes = FLOAT_DTYPES if kernel_limits else FLOAT_DTYPES + (torch.float64,)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4, dtypes=dtypes)
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
    if kernel_limits and d > MAX_HEAD_DIM:
        raise ValueError(f"head dim d must be at most {MAX_HEAD_DIM}, got {d}")
    check_bool(causal, "causal")
    scale = 1.0 / math.sqrt(d) if scale is None else check_real(scale, "scale")
    if mask is not None:
        _check_mask(mask, n_q, n_k, bq, MAX_MASK_KEYS if kernel_limits else n_k)
        if mask.device != q.device:
            raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")
    return scale, mask


def _check_mask(mask, n_q: int, n_k: int, batch: int | None, max_keys: int) -> None:
    """mask: bool (n_q, Nm) or (batch, n_q, Nm) with 1 <= Nm <= min(n_k, max_keys)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype bool (True = may attend), got {mask.dtype}")
    b = "B" if batch is None else batch
    want = f"({n_q}, Nm) or ({b}, {n_q}, Nm)"
    if mask.dim() not in (2, 3) or mask.shape[-2] != n_q or (
            mask.dim() == 3 and batch is not None and mask.shape[0] != batch):
        raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")
    n_m, limit = mask.shape[-1], min(n_k, max_keys)
    if not 1 <= n_m <= limit:
        raise ValueError(
            f"mask covers the last Nm keys with 1 <= Nm <= {limit} (Nk = {n_k}), got Nm={n_m}"
        )


# --------------------------------------------------------------------------- autograd wrapper


class _FlashAttention(torch.autograd.Function):
    """Saves exactly what the backward needs: q, k, v, O and L (not the Nq x Nk matrix P)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, mask):
        out, lse = _flash_fwd_triton(q, k, v, causal, scale, mask)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.scale = causal, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(out)
        dq, dk, dv = _flash_bwd_triton(q, k, v, out, lse, do, dlse, ctx.causal, ctx.scale,
                                       mask)
        return dq, dk, dv, None, None, None


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
    Differentiable in q, k, v with either backend. fp32 products on a GPU run on the
    tensor cores as "tf32x3" (three TF32 products, at most ``5 2^-22 |a| |b|`` each,
    :func:`lib.attention_launch._precision`); the interpreter multiplies in fp32. fp32
    with d > 128 runs :func:`attention_reference` on every backend (it materialises the
    scores): the kernels' fp32 tiles for such head dims spill registers on sm_80 and
    sm_90a. NaN in q, k or v spreads as in PyTorch, even from a value a query cannot see.
    """
    scale, mask = _check_inputs(q, k, v, causal, scale, mask)
    check_bool(return_lse, "return_lse")
    if (resolve_backend(backend, q) == "torch" or q.shape[0] * q.shape[1] == 0
            or not kernel_supports(q.dtype, q.shape[-1])):  # (nothing to launch; fp32 d > 128)
        return attention_reference(q, k, v, causal, scale, mask, return_lse=return_lse)
    out, lse = _FlashAttention.apply(q, k, v, causal, scale, mask)
    return (out, lse) if return_lse else out
