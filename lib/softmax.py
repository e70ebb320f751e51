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
Triton kernels (the online forward, the three-sweep safe baseline, the backward) and
their measured loads and stores (:func:`kernel_accesses`) -> autograd wrapper -> public
``softmax``.
"""

import math
from dataclasses import dataclass

import torch

from ._triton import tl, triton
from .access_count import KernelAccesses, count_accesses, interpreted_call
from .backend import INTERPRET, resolve_backend
from .kernel_spec import KernelSpec
from .validate import (
    FLOAT_DTYPES,
    check_choice,
    check_dim,
    check_positive_int,
    check_same,
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


# elements read and written per element of the row, over all tensors (x, y; y, dy, dx)
_PER_ELEMENT = {
    "naive": (2, 1),           # sum of exp(x) (read), exp(x) / d (read, write)
    "safe": (3, 1),            # max (read), sum of exp(x - m) (read), normalise (r, w)
    "online": (2, 1),          # (m, d) in one sweep (read), normalise (read, write)
    "fused": (1, 1),           # the row fits on chip: one read, one write
    "backward": (4, 1),        # y.dy (read y, dy), dx = y (dy - y.dy) (read y, dy; write)
    "backward_fused": (2, 1),  # the row fits on chip: read y and dy once, write dx
}
METHODS = tuple(_PER_ELEMENT)


def softmax_traffic_model(method: str, rows: int, n: int) -> Traffic:
    """Elements moved by each algorithm on a (rows, n) input: the count of the paper's
    analysis (safe softmax 4 accesses per element, online 3) and of our kernels.

    naive:  sum exp(x) (read), then exp(x)/d (read, write)        -> 2 reads, 1 write
    safe:   max (read), sum exp(x - m) (read), normalise (r, w)   -> 3 reads, 1 write
    online: (m, d) in one sweep (read), normalise (read, write)   -> 2 reads, 1 write
    fused:  the row fits on chip: one read, one write             -> 1 read,  1 write
    backward: y.dy (read y, dy), then dx (read y, dy, write dx)   -> 4 reads, 1 write
    backward_fused: the row fits on chip                          -> 2 reads, 1 write
    """
    check_choice(method, "method", METHODS)
    check_positive_int(rows, "rows")
    check_positive_int(n, "n")
    reads, writes = _PER_ELEMENT[method]
    return Traffic(reads=reads * rows * n, writes=writes * rows * n)


# ---------------------------------------------------------------- the (m, d) algebra


def merge_states(
    m1: torch.Tensor, d1: torch.Tensor, m2: torch.Tensor, d2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m1, d1) ⊕ (m2, d2) of eq. 6, elementwise on broadcastable tensors.

    The empty state (-inf, 0) is the identity; merging two empty states gives it
    back (not NaN), because the exponent's reference point falls back to 0 when
    m = -inf.
    """
    for name, t in (("m1", m1), ("d1", d1), ("m2", m2), ("d2", d2)):
        check_tensor(t, name, dtypes=(torch.float32, torch.float64))
    check_same("device", m1=m1, d1=d1, m2=m2, d2=d2)
    try:
        torch.broadcast_shapes(m1.shape, d1.shape, m2.shape, d2.shape)
    except RuntimeError:
        raise ValueError("m1, d1, m2, d2 must broadcast to one shape, got "
                         f"{[tuple(t.shape) for t in (m1, d1, m2, d2)]}") from None
    for name, d in (("d1", d1), ("d2", d2)):
        if bool((d < 0).any()):  # a normalizer is a sum of exponentials
            raise ValueError(f"{name} must be >= 0 (a sum of exponentials), got "
                             f"{d[d < 0].flatten()[0].item():g}")
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
    row = tl.program_id(0).to(tl.int64)  # 64-bit: row * stride may pass 2^31
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * stride_y
    offs_n = tl.arange(0, BLOCK_N)
    NEG_INF: tl.constexpr = -float("inf")
    if SINGLE_BLOCK:
        # the row fits in registers: one read, one write ("fused")
        mask = offs_n < n_cols
        x = tl.load(x_row + offs_n, mask=mask, other=NEG_INF).to(tl.float32)
        m = tl.max(x, 0)
        m_ref = tl.where(m == NEG_INF, 0.0, m)  # all -inf row: e = 0, not NaN
        e = tl.exp(x - m_ref)  # eq. 3
        d = tl.sum(e, 0)
        inv_d = 1.0 / tl.where(d == 0, 1.0, d)  # 0: all -inf row; NaN spreads
        tl.store(y_row + offs_n, (e * inv_d).to(y_ptr.dtype.element_ty),
                 mask=mask)
    else:
        # sweep 1: running max m and normalizer d, rescaled as m grows (eq. 5)
        m = tl.full((), NEG_INF, tl.float32)
        d = tl.full((), 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            x = tl.load(x_row + cols, mask=cols < n_cols, other=NEG_INF)
            x = x.to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
            d = d * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), 0)
            m = m_new
        # sweep 2: y = exp(x - m) / d, written in the output dtype
        m_ref = tl.where(m == NEG_INF, 0.0, m)
        inv_d = 1.0 / tl.where(d == 0, 1.0, d)  # 0: all -inf row; NaN spreads
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=NEG_INF).to(tl.float32)
            y = tl.exp(x - m_ref) * inv_d
            tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_safe_kernel(
    x_ptr, y_ptr, stride_x, stride_y, n_cols,
    BLOCK_N: tl.constexpr,
):
    """The safe softmax (eq. 3) in three sweeps over the row: m, then d, then y.
    The baseline of the online kernel (chapter 1's experiment and
    ``python -m lib.bench softmax``)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * stride_y
    offs_n = tl.arange(0, BLOCK_N)
    NEG_INF: tl.constexpr = -float("inf")
    # sweep 1: m = max_j x_j (elementwise max over blocks, reduced once)
    m_acc = tl.full((BLOCK_N,), NEG_INF, tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        x = tl.load(x_row + cols, mask=cols < n_cols, other=NEG_INF)
        m_acc = tl.maximum(m_acc, x.to(tl.float32))
    m = tl.max(m_acc, 0)
    m_ref = tl.where(m == NEG_INF, 0.0, m)
    # sweep 2: d = sum_j exp(x_j - m)
    d_acc = tl.zeros((BLOCK_N,), tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        x = tl.load(x_row + cols, mask=cols < n_cols, other=NEG_INF)
        d_acc += tl.exp(x.to(tl.float32) - m_ref)
    d = tl.sum(d_acc, 0)
    inv_d = 1.0 / tl.where(d == 0, 1.0, d)  # 0: all -inf row; NaN spreads
    # sweep 3: y = exp(x - m) / d
    for start in range(0, n_cols, BLOCK_N):
        cols = start + offs_n
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=NEG_INF).to(tl.float32)
        y = tl.exp(x - m_ref) * inv_d
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    y_ptr, dy_ptr, dx_ptr, stride_y, stride_dy, stride_dx, n_cols,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr,
):
    """dx = y * (dy - sum(y * dy)) (eq. 7), one program per row: y and dy are
    read once when the row fits in one block, else twice (a sweep for the sum,
    one for dx)."""
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * stride_y
    dy_row = dy_ptr + row * stride_dy
    dx_row = dx_ptr + row * stride_dx
    offs_n = tl.arange(0, BLOCK_N)
    if SINGLE_BLOCK:  # the row fits in registers: read y and dy once
        mask = offs_n < n_cols
        y = tl.load(y_row + offs_n, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + offs_n, mask=mask, other=0.0).to(tl.float32)
        dx = y * (dy - tl.sum(y * dy, 0))
        tl.store(dx_row + offs_n, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:  # sweep 1: <y, dy>; sweep 2: dx
        acc = tl.zeros((BLOCK_N,), tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            mask = cols < n_cols
            y = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            acc += y * dy
        dot = tl.sum(acc, 0)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + offs_n
            mask = cols < n_cols
            y = tl.load(y_row + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            dx = y * (dy - dot)
            tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


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


def _safe_launch(x2d: torch.Tensor, y: torch.Tensor, block_n: int | None = None):
    """Grid, arguments, constexprs and warps of the three-sweep kernel."""
    grid, args, meta, num_warps = _fwd_launch(x2d, y, block_n)
    return grid, args, dict(BLOCK_N=meta["BLOCK_N"]), num_warps


def _bwd_launch(y: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                block_n: int | None = None):
    """Grid, arguments, constexprs and warps of the backward kernel on (rows, n) tensors."""
    rows, n = y.shape
    block_n, num_warps = launch_config(n, block_n)
    args = dict(y_ptr=y, dy_ptr=dy, dx_ptr=dx, stride_y=y.stride(0), stride_dy=dy.stride(0),
                stride_dx=dx.stride(0), n_cols=n)
    return (rows,), args, dict(BLOCK_N=block_n, SINGLE_BLOCK=n <= block_n), num_warps


def _output_like(t: torch.Tensor) -> torch.Tensor:
    """The buffer a kernel writes its output to: like ``t``, except for bf16 under
    Triton's interpreter, which converts fp32 to bf16 by truncating and garbles
    values below bf16's smallest normal number (Triton 3.9). There the kernel
    writes fp32 and PyTorch rounds to bf16, to nearest as a GPU does."""
    if INTERPRET and t.dtype == torch.bfloat16:
        return torch.empty_like(t, dtype=torch.float32)
    return torch.empty_like(t)


def _softmax_fwd_triton(x2d: torch.Tensor, block_n: int | None = None) -> torch.Tensor:
    """Launch the forward kernel on a (rows, n) tensor with unit column stride."""
    y = _output_like(x2d)
    grid, args, meta, num_warps = _fwd_launch(x2d, y, block_n)
    _softmax_fwd_kernel[grid](**args, **meta, num_warps=num_warps)
    return y.to(x2d.dtype)


def _softmax_safe_triton(x2d: torch.Tensor, block_n: int | None = None) -> torch.Tensor:
    """Launch the three-sweep kernel on a (rows, n) tensor with unit column stride."""
    y = _output_like(x2d)
    grid, args, meta, num_warps = _safe_launch(x2d, y, block_n)
    _softmax_safe_kernel[grid](**args, **meta, num_warps=num_warps)
    return y.to(x2d.dtype)


def _softmax_bwd_triton(y: torch.Tensor, dy: torch.Tensor, block_n: int | None = None):
    """Launch the backward kernel on (rows, n) tensors with unit column stride."""
    dx = _output_like(y)
    grid, args, meta, num_warps = _bwd_launch(y, dy, dx, block_n)
    _softmax_bwd_kernel[grid](**args, **meta, num_warps=num_warps)
    return dx.to(y.dtype)


KERNELS = ("forward", "safe", "backward")


def kernel_accesses(x: torch.Tensor, kernel: str = "forward", block_n: int | None = None
                    ) -> KernelAccesses:
    """Launch one softmax kernel on ``x`` as the library does and count, element by
    element, what it loads and stores (:func:`lib.access_count.count_accesses`, through
    Triton's interpreter on the CPU; in a subprocess where Triton runs compiled).

    x: (rows, n) CPU tensor, fp32, fp16 or bf16. kernel: ``"forward"`` (the online
    kernel of :func:`softmax`: one sweep when the row fits in ``BLOCK_N`` columns,
    else two), ``"safe"`` (three sweeps, eq. 3) or ``"backward"`` (eq. 7, on
    y = softmax(x) and an upstream gradient dy of ones). block_n: ``BLOCK_N``, None
    for the library's default (:func:`launch_config`). The entries of the result are
    named after the kernel's parameters (``x_ptr``, ``y_ptr``, ...).
    """
    check_tensor(x, "x", ndim=2, dtypes=FLOAT_DTYPES)
    check_choice(kernel, "kernel", KERNELS)
    if x.device.type != "cpu":
        raise ValueError(f"x must be on the CPU (Triton's interpreter), got {x.device}")
    if x.numel() == 0:
        raise ValueError(f"x must have at least one row and column, got {tuple(x.shape)}")
    if not INTERPRET:  # Triton runs compiled here (CUDA): count in a fresh interpreter
        return interpreted_call("lib.softmax.kernel_accesses", x, kernel, block_n)
    x = x.contiguous()
    if kernel == "backward":
        y = softmax_reference(x)
        dy = torch.ones_like(x)
        grid, args, meta, _ = _bwd_launch(y, dy, torch.empty_like(x), block_n)
        return count_accesses(_softmax_bwd_kernel, grid, **args, **meta)
    launch, fn = {"forward": (_fwd_launch, _softmax_fwd_kernel),
                  "safe": (_safe_launch, _softmax_safe_kernel)}[kernel]
    grid, args, meta, _ = launch(x, torch.empty_like(x), block_n)
    return count_accesses(fn, grid, **args, **meta)


def aot_specs() -> list[KernelSpec]:
    """Default configurations as launched on contiguous fp16 rows (4096 of them),
    compiled ahead of time by ``python -m lib.bench compile``."""
    specs = []
    for n in (1024, 4096):
        x = torch.empty(4096, n, dtype=torch.float16, device="meta")
        _, args, meta, warps = _fwd_launch(x, torch.empty_like(x))
        kind = f"row <= {n}" if meta["SINGLE_BLOCK"] else f"looped, {meta['BLOCK_N']}"
        specs.append(KernelSpec(f"softmax_fwd ({kind})", _softmax_fwd_kernel,
                                constexprs=meta, num_warps=warps, args=args))
        if not meta["SINGLE_BLOCK"]:  # the three-sweep baseline only loops
            _, args, meta, warps = _safe_launch(x, torch.empty_like(x))
            specs.append(KernelSpec(f"softmax_safe (looped, {meta['BLOCK_N']})",
                                    _softmax_safe_kernel, constexprs=meta, num_warps=warps,
                                    args=args))
        y = torch.empty(4096, n, dtype=torch.float16, device="meta")
        _, args, meta, warps = _bwd_launch(y, torch.empty_like(y), torch.empty_like(y))
        specs.append(KernelSpec(f"softmax_bwd ({kind})", _softmax_bwd_kernel,
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

    y = exp(x - m) / d (eq. 3); the Triton kernel computes (m, d) online, block by
    block (eqs. 4-5), and its backward pass is eq. 7.
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
