"""Softmax: the safe reference, the online (m, d) algebra, and a Triton online-softmax kernel.

Chapter 1 (equation numbers refer to it). Milakov & Gimelshein (2018),
"Online normalizer calculation for softmax".

For a row x of length N the softmax is y_i = exp(x_i - m) / d with m = max_j x_j and
d = sum_j exp(x_j - m) (eq. 3). The online form keeps a running state (m, d) and
updates it one block at a time (eq. 5); two partial states merge with

    (m1, d1) ⊕ (m2, d2) = (max(m1, m2), d1 exp(m1 - m) + d2 exp(m2 - m))    (eq. 6)

which is associative and commutative, so blocks can be processed in any order.

Convention for rows that are entirely -inf (every entry masked): the output row is
all zeros, not NaN as ``torch.softmax`` gives. Such a row has no mass to distribute;
zeros are what FlashAttention returns for a fully masked query (chapter 7) and they
keep NaN out of gradients. A row holding +inf or NaN gives a row of NaN, as
``torch.softmax`` does, in every backend.

Module layout: reference (the spec) -> memory-traffic model -> (m, d) algebra ->
Triton kernels -> autograd wrapper -> public ``softmax``.
"""

import math
from dataclasses import dataclass

import torch

from ._triton import tl, triton
from .backend import resolve_backend
from .kernel_spec import KernelSpec
from .validate import (
    FLOAT_DTYPES,
    check_choice,
    check_dim,
    check_positive_int,
    check_tensor,
)

# ----------------------------------------------------------------------------- reference


def softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Safe softmax along ``dim`` (eq. 3), computed in fp32 (fp64 for fp64 input),
    returned in ``x.dtype``.

    x: fp32, fp16, bf16 or fp64, at least one dimension; the result has the same shape.
    All -inf rows give zeros; a row holding NaN or +inf gives NaN, as ``torch.softmax``.
    """
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES + (torch.float64,))
    dim = check_dim(dim, x.dim())
    if x.shape[dim] == 0:  # nothing to normalise, as torch.softmax
        return torch.empty_like(x)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    m = xf.amax(dim=dim, keepdim=True)  # NaN if the row holds one; +inf makes x - m NaN
    m = torch.where(m == -math.inf, torch.zeros_like(m), m)  # all -inf row: exp(-inf) = 0
    e = torch.exp(xf - m)
    d = e.sum(dim=dim, keepdim=True)  # 0 only for an all -inf row; NaN spreads to the row
    # dividing by 1 where d = 0 keeps NaN out of an all -inf row's values and gradient
    y = e / torch.where(d == 0, torch.ones_like(d), d)
    return y.to(x.dtype)


# ------------------------------------------------------------ memory-traffic model


@dataclass
class Traffic:
    """Elements loaded from and stored to main memory (HBM on a GPU) by a softmax."""

    reads: int = 0
    writes: int = 0

    def bytes(self, itemsize: int) -> int:
        return (self.reads + self.writes) * itemsize


METHODS = ("naive", "safe", "online", "fused")


def softmax_traffic_model(method: str, rows: int, n: int) -> Traffic:
    """Elements moved by each algorithm on a (rows, n) input.

    naive:  sum exp(x) (read), then exp(x)/d (read, write)        -> 2 reads, 1 write
    safe:   max (read), sum exp(x - m) (read), normalise (r, w)   -> 3 reads, 1 write
    online: (m, d) in one sweep (read), normalise (read, write)   -> 2 reads, 1 write
    fused:  the row fits on chip: one read, one write             -> 1 read,  1 write
    """
    reads = {"naive": 2, "safe": 3, "online": 2, "fused": 1}
    check_choice(method, "method", METHODS)
    check_positive_int(rows, "rows")
    check_positive_int(n, "n")
    return Traffic(reads=reads[method] * rows * n, writes=rows * n)


def softmax_counted(x: torch.Tensor, method: str, block: int = 128) -> tuple[torch.Tensor, Traffic]:
    """Run one softmax algorithm on a 2-D ``x`` (rows, n), sweeping ``block`` columns at a time.

    Every load from ``x`` and every store to the output goes through a counter, so the
    returned :class:`Traffic` is measured, not assumed; tests check it against
    :func:`softmax_traffic_model`. ``naive`` overflows exactly as eq. 1 does.
    """
    check_tensor(x, "x", ndim=2, dtypes=FLOAT_DTYPES)
    check_positive_int(block, "block")
    check_choice(method, "method", METHODS)
    rows, n = x.shape
    t = Traffic()
    y = torch.empty_like(x)
    blocks = [slice(s, min(s + block, n)) for s in range(0, n, block)]

    def load(cols):
        t.reads += rows * (cols.stop - cols.start)
        return x[:, cols].float()

    def store(cols, value):
        t.writes += rows * (cols.stop - cols.start)
        y[:, cols] = value.to(x.dtype)

    if method == "fused":  # the whole row lives in registers / SRAM
        row = load(slice(0, n))
        store(slice(0, n), softmax_reference(row))
        return y, t
    m = torch.zeros(rows, 1)  # naive: no max subtraction at all
    if method == "safe":
        m = torch.full((rows, 1), -math.inf)
        for cols in blocks:
            m = torch.maximum(m, load(cols).amax(1, keepdim=True))
    d = torch.zeros(rows, 1)
    if method == "online":
        m = torch.full((rows, 1), -math.inf)
        for cols in blocks:
            xb = load(cols)
            m_new = torch.maximum(m, xb.amax(1, keepdim=True))
            d = d * torch.exp(m - m_new) + torch.exp(xb - m_new).sum(1, keepdim=True)
            m = m_new
    else:
        for cols in blocks:
            d = d + torch.exp(load(cols) - m).sum(1, keepdim=True)
    for cols in blocks:
        store(cols, torch.exp(load(cols) - m) / d)
    return y, t


# ---------------------------------------------------------------- the (m, d) algebra


def merge_states(
    m1: torch.Tensor, d1: torch.Tensor, m2: torch.Tensor, d2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m1, d1) ⊕ (m2, d2) of eq. 6, elementwise on broadcastable tensors.

    The empty state (-inf, 0) is the identity; merging two empty states gives it back
    (not NaN), because the exponent's reference point falls back to 0 when m = -inf.
    """
    for name, t in (("m1", m1), ("d1", d1), ("m2", m2), ("d2", d2)):
        check_tensor(t, name, dtypes=(torch.float32, torch.float64))
    m = torch.maximum(m1, m2)
    m_ref = torch.where(m == -math.inf, torch.zeros_like(m), m)
    return m, d1 * torch.exp(m1 - m_ref) + d2 * torch.exp(m2 - m_ref)


def online_softmax_states(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running online-softmax states after each block of ``block`` entries of the last dim.

    x: (..., N) -> m, d: (..., ceil(N / block)), fp32. Entry k is the state (m, d) of
    x[..., : (k + 1) * block]; the last entry is the state of the whole row (eq. 5).
    ``block=1`` steps element by element, as the chapter's widget does.
    """
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_positive_int(block, "block")
    if x.shape[-1] == 0:
        raise ValueError("x must have at least one entry in its last dimension")
    xf = x.float() if x.dtype != torch.float64 else x
    m = torch.full(x.shape[:-1], -math.inf, dtype=xf.dtype, device=x.device)
    d = torch.zeros_like(m)
    ms, ds = [], []
    for start in range(0, x.shape[-1], block):
        xb = xf[..., start : start + block]
        mb = xb.amax(-1)  # the block's own state (mb, db)
        mb_ref = torch.where(mb == -math.inf, torch.zeros_like(mb), mb)
        db = torch.exp(xb - mb_ref[..., None]).sum(-1)
        m, d = merge_states(m, d, mb, db)
        ms.append(m)
        ds.append(d)
    return torch.stack(ms, -1), torch.stack(ds, -1)


# ---------------------------------------------------------------------------- Triton kernels


@triton.jit
def _softmax_fwd_kernel(
    x_ptr, y_ptr, stride_x, stride_y, n_cols,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
):
    """One program per row; the row is swept in blocks of BLOCK_N columns."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * stride_y
    offs_n = tl.arange(0, BLOCK_N)
    if SINGLE_BLOCK:
        # the row fits in registers: one read, one write ("fused" in the traffic model)
        mask = offs_n < n_cols
        x = tl.load(x_row + offs_n, mask=mask, other=-float("inf")).to(tl.float32)
        m = tl.max(x, 0)
        m_ref = tl.where(m == -float("inf"), 0.0, m)
        e = tl.exp(x - m_ref)
        d = tl.sum(e, 0)
        inv_d = 1.0 / tl.where(d == 0, 1.0, d)  # 0: all -inf row (e = 0); NaN spreads
        tl.store(y_row + offs_n, (e * inv_d).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # pass 1: running max m and normalizer d, rescaled when m grows (eq. 5)
        m = tl.full((), -float("inf"), tl.float32)
        d = tl.full((), 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            x = tl.load(x_row + cols, mask=cols < n_cols, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
            d = d * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), 0)
            m = m_new
        # pass 2: y = exp(x - m) / d, written in the output dtype
        m_ref = tl.where(m == -float("inf"), 0.0, m)
        inv_d = 1.0 / tl.where(d == 0, 1.0, d)  # 0: all -inf row (e = 0); NaN spreads
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=-float("inf")).to(tl.float32)
            y = tl.exp(x - m_ref) * inv_d
            tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    y_ptr, dy_ptr, dx_ptr, stride_y, stride_dy, stride_dx, n_cols,
    BLOCK_N: tl.constexpr,
):
    """dx = y * (dy - sum(y * dy)) (eq. 7), one program per row, two sweeps."""
    row = tl.program_id(0).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        mask = cols < n_cols
        y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        acc += y * dy
    dot = tl.sum(acc, 0)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        mask = cols < n_cols
        y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
        dx = y * (dy - dot)
        tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


MAX_BLOCK_N = 2048  # columns per block: a row up to this length stays in registers


def launch_config(n_cols: int, block_n: int | None = None) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for rows of ``n_cols``: one block per row when it fits.

    block_n: None for the default, else a power of two (the width of ``tl.arange``).
    """
    check_positive_int(n_cols, "n_cols")
    if block_n is not None:
        check_positive_int(block_n, "block_n")
        if block_n & (block_n - 1):
            raise ValueError(f"block_n must be a power of two, got {block_n}")
    if block_n is None:
        block_n = min(triton.next_power_of_2(n_cols), MAX_BLOCK_N)
    num_warps = 4 if block_n <= 1024 else 8
    return block_n, num_warps


def _fwd_launch(x2d: torch.Tensor, y: torch.Tensor, block_n: int | None = None):
    """Grid, arguments, constexprs and warps of the forward kernel on a (rows, n) input."""
    rows, n = x2d.shape
    block_n, num_warps = launch_config(n, block_n)
    args = dict(x_ptr=x2d, y_ptr=y, stride_x=x2d.stride(0), stride_y=y.stride(0), n_cols=n)
    return (rows,), args, dict(BLOCK_N=block_n, SINGLE_BLOCK=n <= block_n), num_warps


def _bwd_launch(y: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                block_n: int | None = None):
    """Grid, arguments, constexprs and warps of the backward kernel on (rows, n) tensors."""
    rows, n = y.shape
    block_n, num_warps = launch_config(n, block_n)
    args = dict(y_ptr=y, dy_ptr=dy, dx_ptr=dx, stride_y=y.stride(0), stride_dy=dy.stride(0),
                stride_dx=dx.stride(0), n_cols=n)
    return (rows,), args, dict(BLOCK_N=block_n), num_warps


def _softmax_fwd_triton(x2d: torch.Tensor, block_n: int | None = None) -> torch.Tensor:
    """Launch the forward kernel on a (rows, n) tensor with unit column stride."""
    y = torch.empty_like(x2d)
    grid, args, meta, num_warps = _fwd_launch(x2d, y, block_n)
    _softmax_fwd_kernel[grid](**args, **meta, num_warps=num_warps)
    return y


def _softmax_bwd_triton(y: torch.Tensor, dy: torch.Tensor, block_n: int | None = None):
    dx = torch.empty_like(y)
    grid, args, meta, num_warps = _bwd_launch(y, dy, dx, block_n)
    _softmax_bwd_kernel[grid](**args, **meta, num_warps=num_warps)
    return dx


def aot_specs() -> list[KernelSpec]:
    """Default configurations as launched on contiguous fp16 rows (4096 of them),
    compiled ahead of time by ``python -m lib.bench compile``."""
    specs = []
    for name, n in (("softmax_fwd (row <= 1024)", 1024), ("softmax_fwd (looped, 2048)", 4096)):
        x = torch.empty(4096, n, dtype=torch.float16, device="meta")
        _, args, meta, warps = _fwd_launch(x, torch.empty_like(x))
        if not meta["SINGLE_BLOCK"]:
            name = f"softmax_fwd (looped, {meta['BLOCK_N']})"
        specs.append(KernelSpec(name, _softmax_fwd_kernel, constexprs=meta, num_warps=warps,
                                args=args))
    y = torch.empty(4096, 4096, dtype=torch.float16, device="meta")
    _, args, meta, warps = _bwd_launch(y, torch.empty_like(y), torch.empty_like(y))
    specs.append(KernelSpec(f"softmax_bwd ({meta['BLOCK_N']})", _softmax_bwd_kernel,
                            constexprs=meta, num_warps=warps, args=args))
    return specs


# ------------------------------------------------------------------------ autograd + public


class _TritonSoftmax(torch.autograd.Function):
    """Softmax over the last dim of a 2-D tensor; saves y for the backward (eq. 7)."""

    @staticmethod
    def forward(ctx, x2d):
        y = _softmax_fwd_triton(x2d)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return _softmax_bwd_triton(y, dy.contiguous())


def softmax(x: torch.Tensor, dim: int = -1, backend: str = "auto") -> torch.Tensor:
    """Softmax of ``x`` along ``dim`` with fp32 math; the output has ``x``'s shape and dtype.

    x: any shape with at least one dimension, dtype fp32, fp16 or bf16.
    backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"triton"`` (the online-softmax
    kernel, through Triton's interpreter on CPU) or ``"torch"`` (:func:`softmax_reference`).
    Differentiable with either backend. Rows that are entirely -inf give zeros (where
    ``torch.softmax`` gives NaN); a row holding NaN or +inf gives NaN, as in torch.
    """
    check_tensor(x, "x", min_ndim=1, dtypes=FLOAT_DTYPES)
    dim = check_dim(dim, x.dim())
    if resolve_backend(backend, x) == "torch":
        return softmax_reference(x, dim)
    xt = x.movedim(dim, -1)
    shape = xt.shape
    if xt.numel() == 0:
        return torch.empty_like(x)
    x2d = xt.reshape(-1, shape[-1]).contiguous()  # (rows, n), unit column stride
    y = _TritonSoftmax.apply(x2d)
    return y.reshape(shape).movedim(-1, dim)
