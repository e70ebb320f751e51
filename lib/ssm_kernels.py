"""Mamba's selective scan in Triton: a forward and a backward kernel, their launch
configuration, the autograd wrapper and ``aot_specs``.

Chapter 8 (equation numbers refer to it). Gu & Dao (2023), "Mamba: linear-time sequence
modeling with selective state spaces"; Blelloch (1990), "Prefix sums and their applications".

The op (its spec is :func:`lib.ssm.selective_scan_reference`): for every batch b, channel d
and state n, with dt = softplus(delta + delta_bias) (eq. 11),

    x_l = a_l x_{l-1} + b_l,   a_l = exp(dt_l A_dn),   b_l = dt_l B_nl u_l       (eq. 12)
    y_l = sum_n C_nl x_l + D_d u_l,   out_l = y_l * silu(z_l)

Layout of the work. One program per (channel d, batch b): a grid of dim x batch programs,
each independent of the others. A program keeps its N states in registers and walks L in
chunks of BLOCK_L steps. Per chunk it loads u, delta, z (BLOCK_L values, contiguous) and
B, C (BLOCK_N x BLOCK_L tiles, contiguous along L), forms the pairs (a_l, b_l), and runs
``tl.associative_scan`` along L with the combine (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)
(eq. 13): the scan is parallel across the chunk, giving for each position l the pair
(alpha_l, beta_l) of the chunk's steps up to l, and the state carried in from the previous
chunk enters as x_l = alpha_l x_in + beta_l (eq. 14). The carried state is written to HBM once per
chunk (a checkpoint, (batch, dim, n_chunks, N) fp32): the backward kernel restarts each
chunk from it instead of reading all L states, which are never stored (Mamba's
recomputation).

The backward kernel walks the chunks in reverse. For each chunk it recomputes the states
from the checkpoint, then runs the adjoint recurrence g_l = C_l dy_l + a_{l+1} g_{l+1}
(eq. 15) as a reverse associative scan with the same combine, carrying a_first g_first to
the previous chunk. du, d(delta), dz are per (b, d) and written directly; dA and dD are
summed over L in registers and written per (b, d), then summed over the batch in PyTorch;
dB and dC are shared by all channels of a batch element and accumulated with atomic adds
in fp32, as Mamba's CUDA kernel does.

All arithmetic is fp32 whatever the input dtype; outputs are cast to the input dtype.
"""

from __future__ import annotations

import torch

from ._triton import tl, triton
from .backend import INTERPRET
from .kernel_spec import KernelSpec

MAX_STATE = 256  # d_state up to this is supported (padded to a power of two inside)

# --------------------------------------------------------------------------- device code


@triton.jit
def _scan_combine(a_left, b_left, a_right, b_right):
    """(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2): x -> a2 (a1 x + b1) + b2 (eq. 13)."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _softplus(x):
    """log(1 + e^x) as torch's softplus (linear above 20), accurate for small e^x."""
    e = tl.exp(x)
    one_plus = 1.0 + e
    # log(1 + e) = log(u) * e / (u - 1) with u = fl(1 + e) cancels the rounding of 1 + e
    sp = tl.where(one_plus == 1.0, e, tl.log(one_plus) * (e / (one_plus - 1.0)))
    return tl.where(x > 20.0, x, sp)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _chunk_terms(u_row, delta_row, B_base, offs_l, offs_n, A_n, bias, L, N,
                 SOFTPLUS: tl.constexpr):
    """Load one chunk and form dt (eq. 11) and the scan pairs (a, b) of eq. 12.

    Returns u, dt_raw, dt (BLOCK_L,), B (BLOCK_N, BLOCK_L), a, b (BLOCK_N, BLOCK_L).
    Past L: dt = 0, so a = 1 and b = 0 and the carried state passes through unchanged.
    """
    mask_l = offs_l < L
    u = tl.load(u_row + offs_l, mask=mask_l, other=0.0).to(tl.float32)
    dt_raw = tl.load(delta_row + offs_l, mask=mask_l, other=0.0).to(tl.float32) + bias
    dt = _softplus(dt_raw) if SOFTPLUS else dt_raw
    dt = tl.where(mask_l, dt, 0.0)
    tile = offs_n[:, None] * L + offs_l[None, :]
    mask = (offs_n < N)[:, None] & mask_l[None, :]
    B = tl.load(B_base + tile, mask=mask, other=0.0).to(tl.float32)
    a = tl.exp(dt[None, :] * A_n[:, None])
    b = B * (dt * u)[None, :]
    return u, dt_raw, dt, B, a, b


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
    out_ptr, ckpt_ptr, last_ptr,
    DIM, L, N, N_CHUNKS,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    row = pid_b.to(tl.int64) * DIM + pid_d  # the (b, d) row of u, delta, z, out
    u_row, delta_row = u_ptr + row * L, delta_ptr + row * L
    z_row, out_row = z_ptr + row * L, out_ptr + row * L
    ckpt_row = ckpt_ptr + row * N_CHUNKS * N
    B_base = B_ptr + pid_b.to(tl.int64) * N * L
    C_base = C_ptr + pid_b.to(tl.int64) * N * L
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs = tl.arange(0, BLOCK_L)
    A_n = tl.load(A_ptr + pid_d * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    bias = tl.load(delta_bias_ptr + pid_d).to(tl.float32) if HAS_DELTA_BIAS else 0.0
    x = tl.zeros((BLOCK_N,), dtype=tl.float32)  # the state, in registers throughout
    for chunk in range(0, N_CHUNKS):
        offs_l = chunk * BLOCK_L + offs
        mask_l = offs_l < L
        # checkpoint: the state entering this chunk, where the backward restarts
        tl.store(ckpt_row + chunk * N + offs_n, x, mask=mask_n)
        u, dt_raw, dt, B, a, b = _chunk_terms(
            u_row, delta_row, B_base, offs_l, offs_n, A_n, bias, L, N,
            DELTA_SOFTPLUS)
        # scan the chunk in parallel (eq. 13), then add the carried state (eq. 14)
        a_cum, b_cum = tl.associative_scan((a, b), 1, _scan_combine)
        xs = a_cum * x[:, None] + b_cum  # (BLOCK_N, BLOCK_L): the chunk's states
        tile = offs_n[:, None] * L + offs_l[None, :]
        tile_mask = mask_n[:, None] & mask_l[None, :]
        C = tl.load(C_base + tile, mask=tile_mask, other=0.0).to(tl.float32)
        y = tl.sum(C * xs, axis=0)  # (BLOCK_L,): y_l = C_l x_l, eq. 12
        if HAS_D:
            y += tl.load(D_ptr + pid_d).to(tl.float32) * u
        if HAS_Z:  # out = y silu(z)
            z = tl.load(z_row + offs_l, mask=mask_l, other=0.0).to(tl.float32)
            y = y * z * _sigmoid(z)
        tl.store(out_row + offs_l, y.to(out_ptr.dtype.element_ty), mask=mask_l)
        # the last column is the carried state (padding past L leaves it unchanged)
        x = tl.sum(tl.where(offs[None, :] == BLOCK_L - 1, xs, 0.0), axis=1)
    tl.store(last_ptr + row * N + offs_n, x, mask=mask_n)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr,
    ckpt_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr,
    DIM, L, N, N_CHUNKS,
    BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, HAS_DLAST: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    row = pid_b.to(tl.int64) * DIM + pid_d
    u_row, delta_row = u_ptr + row * L, delta_ptr + row * L
    z_row, dout_row = z_ptr + row * L, dout_ptr + row * L
    du_row, ddelta_row, dz_row = du_ptr + row * L, ddelta_ptr + row * L, dz_ptr + row * L
    ckpt_row = ckpt_ptr + row * N_CHUNKS * N
    B_base = B_ptr + pid_b.to(tl.int64) * N * L
    C_base = C_ptr + pid_b.to(tl.int64) * N * L
    # dB, dC: fp32 (batch, N, L), shared by the channels of a batch element
    dB_base = dB_ptr + pid_b.to(tl.int64) * N * L
    dC_base = dC_ptr + pid_b.to(tl.int64) * N * L
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs = tl.arange(0, BLOCK_L)
    A_n = tl.load(A_ptr + pid_d * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    bias = tl.load(delta_bias_ptr + pid_d).to(tl.float32) if HAS_DELTA_BIAS else 0.0
    D = tl.load(D_ptr + pid_d).to(tl.float32) if HAS_D else 0.0
    # h: the gradient reaching the chunk's last state from later steps (at first, from
    # the last state's own gradient)
    if HAS_DLAST:
        h = tl.load(dlast_ptr + row * N + offs_n, mask=mask_n, other=0.0)
        h = h.to(tl.float32)
    else:
        h = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dA = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dD = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for k in range(0, N_CHUNKS):
        chunk = N_CHUNKS - 1 - k
        offs_l = chunk * BLOCK_L + offs
        mask_l = offs_l < L
        tile = offs_n[:, None] * L + offs_l[None, :]
        mask = mask_n[:, None] & mask_l[None, :]
        # recompute the chunk's states from its checkpoint (eqs. 13, 14)
        x_in = tl.load(ckpt_row + chunk * N + offs_n, mask=mask_n, other=0.0)
        u, dt_raw, dt, B, a, b = _chunk_terms(
            u_row, delta_row, B_base, offs_l, offs_n, A_n, bias, L, N,
            DELTA_SOFTPLUS)
        a_cum, b_cum = tl.associative_scan((a, b), 1, _scan_combine)
        xs = a_cum * x_in[:, None] + b_cum
        C = tl.load(C_base + tile, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_row + offs_l, mask=mask_l, other=0.0).to(tl.float32)
        if HAS_Z:  # out = y silu(z): dy = dout silu(z), dz = dout y silu'(z)
            z = tl.load(z_row + offs_l, mask=mask_l, other=0.0).to(tl.float32)
            sz = _sigmoid(z)
            y = tl.sum(C * xs, axis=0) + D * u
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_row + offs_l, dz.to(dz_ptr.dtype.element_ty), mask=mask_l)
            dy = dout * z * sz
        else:
            dy = dout
        tl.atomic_add(dC_base + tile, xs * dy[None, :], mask=mask)
        # the adjoint g_l = C_l dy_l + a_{l+1} g_{l+1} (eq. 15) as a reverse scan;
        # a_{l+1} is loaded one step ahead; the last column takes h with factor 1
        offs_next = offs_l + 1
        mask_next = (offs_next < L) & (offs < BLOCK_L - 1)
        dt_next = tl.load(delta_row + offs_next, mask=mask_next, other=0.0)
        dt_next = dt_next.to(tl.float32) + bias
        if DELTA_SOFTPLUS:
            dt_next = _softplus(dt_next)
        dt_next = tl.where(mask_next, dt_next, 0.0)
        a_next = tl.exp(dt_next[None, :] * A_n[:, None])
        g_a, g_b = tl.associative_scan((a_next, C * dy[None, :]), 1, _scan_combine,
                                       reverse=True)
        g = g_a * h[:, None] + g_b  # (BLOCK_N, BLOCK_L): dLoss/dx_l
        tl.atomic_add(dB_base + tile, g * (dt * u)[None, :], mask=mask)
        gB = tl.sum(g * B, axis=0)  # sum_n g_n B_n
        ga = g * (xs - b)  # g_l a_l x_{l-1}, as a_l x_{l-1} = x_l - b_l
        ddt = gB * u + tl.sum(ga * A_n[:, None], axis=0)
        dA += tl.sum(ga * dt[None, :], axis=1)
        dD += dy * u
        if DELTA_SOFTPLUS:
            ddt = ddt * _sigmoid(dt_raw)
        du = gB * dt + D * dy
        tl.store(du_row + offs_l, du.to(du_ptr.dtype.element_ty), mask=mask_l)
        tl.store(ddelta_row + offs_l, ddt, mask=mask_l)
        # carry to the previous chunk: dLoss/dx_{first - 1} through a_first
        h = tl.sum(tl.where(offs[None, :] == 0, a * g, 0.0), axis=1)
    tl.store(dA_ptr + row * N + offs_n, dA, mask=mask_n)
    if HAS_D:
        tl.store(dD_ptr + row, tl.sum(dD, axis=0))


# ------------------------------------------------------------------- launch configuration

# (BLOCK_L, warps of the forward, warps of the backward) per padded state size BLOCK_N on
# the GPU: the configurations that aot_specs compiles for sm_90a and sm_80 with no register
# spills. Both kernels use the same BLOCK_L: the backward restarts at the forward's
# checkpoints.
_GPU_CONFIGS = {16: (64, 4, 4), 32: (32, 4, 4), 64: (16, 4, 4), 128: (16, 4, 8),
                256: (8, 8, 8)}


def launch_config(n_state: int, length: int, gpu: bool | None = None) -> dict:
    """BLOCK_N, BLOCK_L and the warps of the forward and backward kernels.

    On a GPU (``gpu``, default: unless Triton's interpreter is on): BLOCK_N = next power of
    two >= max(N, 16) and the table above (a tile of BLOCK_N x BLOCK_L holds 1024 or 2048
    fp32 values, a few per thread). Under the interpreter the scan is a Python loop over
    every element, so BLOCK_N is the smallest power of two >= N and one chunk covers up to
    256 steps (fewer, slower Python loops).
    """
    if not (not INTERPRET if gpu is None else gpu):
        block_n = triton.next_power_of_2(max(n_state, 2))
        block_l = min(256, max(16, triton.next_power_of_2(length)))
        return dict(BLOCK_N=block_n, BLOCK_L=block_l, fwd_warps=4, bwd_warps=4)
    block_n = max(16, triton.next_power_of_2(n_state))
    block_l, fwd_warps, bwd_warps = _GPU_CONFIGS[block_n]
    return dict(BLOCK_N=block_n, BLOCK_L=block_l, fwd_warps=fwd_warps, bwd_warps=bwd_warps)


def _flags(D, z, delta_bias, delta_softplus) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
                DELTA_SOFTPLUS=bool(delta_softplus))


def _inputs(u, delta, A, B, C, D, z, delta_bias) -> dict:
    """The input pointers; an absent optional input points at u (never read: its flag is off)."""
    return dict(u_ptr=u, delta_ptr=delta, A_ptr=A, B_ptr=B, C_ptr=C,
                D_ptr=u if D is None else D, z_ptr=u if z is None else z,
                delta_bias_ptr=u if delta_bias is None else delta_bias)


def _fwd_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out, ckpt, last, cfg):
    """Grid, arguments, constexprs and warps of the forward kernel."""
    batch, dim, length = u.shape
    args = _inputs(u, delta, A, B, C, D, z, delta_bias)
    args |= dict(out_ptr=out, ckpt_ptr=ckpt, last_ptr=last, DIM=dim, L=length, N=A.shape[1],
                 N_CHUNKS=ckpt.shape[2])
    meta = dict(BLOCK_N=cfg["BLOCK_N"], BLOCK_L=cfg["BLOCK_L"],
                **_flags(D, z, delta_bias, delta_softplus))
    return (dim, batch), args, meta, cfg["fwd_warps"]


def _bwd_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout, dlast,
                grads, cfg):
    """Grid, arguments, constexprs and warps of the backward kernel; ``grads`` holds the
    output buffers du, ddelta, dA, dB, dC, dD, dz (dD, dz None when D, z are)."""
    batch, dim, length = u.shape
    du, ddelta, dA, dB, dC, dD, dz = grads
    args = _inputs(u, delta, A, B, C, D, z, delta_bias)
    args |= dict(ckpt_ptr=ckpt, dout_ptr=dout, dlast_ptr=u if dlast is None else dlast,
                 du_ptr=du, ddelta_ptr=ddelta, dA_ptr=dA, dB_ptr=dB, dC_ptr=dC,
                 dD_ptr=ddelta if dD is None else dD, dz_ptr=du if dz is None else dz,
                 DIM=dim, L=length, N=A.shape[1], N_CHUNKS=ckpt.shape[2])
    meta = dict(BLOCK_N=cfg["BLOCK_N"], BLOCK_L=cfg["BLOCK_L"], HAS_DLAST=dlast is not None,
                **_flags(D, z, delta_bias, delta_softplus))
    return (dim, batch), args, meta, cfg["bwd_warps"]


def _fwd_buffers(u, n_state, n_chunks):
    f32 = dict(dtype=torch.float32, device=u.device)
    batch, dim, _ = u.shape
    return (torch.empty_like(u), torch.empty(batch, dim, n_chunks, n_state, **f32),
            torch.empty(batch, dim, n_state, **f32))


def _bwd_buffers(u, A, B, C, D, z):
    f32 = dict(dtype=torch.float32, device=u.device)
    batch, dim, _ = u.shape
    return (torch.empty_like(u), torch.empty(u.shape, **f32),
            torch.empty(batch, dim, A.shape[1], **f32), torch.zeros(B.shape, **f32),
            torch.zeros(C.shape, **f32), torch.empty(batch, dim, **f32) if D is not None else None,
            torch.empty_like(z) if z is not None else None)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, block_l=None):
    """Launch the forward kernel on contiguous inputs (validated by the caller).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L); D, delta_bias: (dim,).
    Returns out (batch, dim, L) in u's dtype, the last state (batch, dim, N) fp32 and the
    chunk checkpoints (batch, dim, n_chunks, N) fp32. ``block_l`` overrides the chunk
    length (tests use it to cross several chunks on small inputs).
    """
    cfg = launch_config(A.shape[1], u.shape[2])
    cfg["BLOCK_L"] = block_l or cfg["BLOCK_L"]
    out, ckpt, last = _fwd_buffers(u, A.shape[1], triton.cdiv(u.shape[2], cfg["BLOCK_L"]))
    grid, args, meta, warps = _fwd_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          out, ckpt, last, cfg)
    _selective_scan_fwd_kernel[grid](**args, **meta, num_warps=warps)
    return out, last, ckpt


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, dout,
                       dlast=None, block_l=None):
    """Launch the backward kernel; returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias.

    ``ckpt`` (batch, dim, n_chunks, N) comes from :func:`selective_scan_fwd` called with the
    same ``block_l``. Every gradient has the dtype of its input (None where the input is
    None).
    """
    cfg = launch_config(A.shape[1], u.shape[2])
    cfg["BLOCK_L"] = block_l or cfg["BLOCK_L"]
    if ckpt.shape[2] != triton.cdiv(u.shape[2], cfg["BLOCK_L"]):
        raise ValueError(f"ckpt has {ckpt.shape[2]} chunks, which BLOCK_L={cfg['BLOCK_L']} "
                         "does not give: pass the forward's block_l")
    grads = _bwd_buffers(u, A, B, C, D, z)
    grid, args, meta, warps = _bwd_launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          ckpt, dout, dlast, grads, cfg)
    _selective_scan_bwd_kernel[grid](**args, **meta, num_warps=warps)
    du, ddelta, dA, dB, dC, dD, dz = grads
    ddelta_bias = ddelta.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return (du, ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None, dz, ddelta_bias)


def _meta(dtype, *shape):
    """A tensor on the meta device: it has a 16-byte-aligned address, as a CUDA tensor."""
    return torch.empty(*shape, dtype=dtype, device="meta")


def aot_specs() -> list[KernelSpec]:
    """Every GPU configuration the op launches, as launched with D, z, delta_bias, softplus
    and the last state's gradient (the most registers) on (batch 2, dim 1536, L 2048):
    each BLOCK_N for bf16 inputs, and N <= 16 for fp16 and fp32."""
    specs = []
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"),
                        (torch.float32, "fp32")):
        for block_n in _GPU_CONFIGS if dtype == torch.bfloat16 else (16,):
            cfg = launch_config(block_n, 2048, gpu=True)
            u, B = _meta(dtype, 2, 1536, 2048), _meta(dtype, 2, block_n, 2048)
            A, D = _meta(torch.float32, 1536, block_n), _meta(torch.float32, 1536)
            C, z = torch.empty_like(B), torch.empty_like(u)
            inputs = (u, torch.empty_like(u), A, B, C, D, z, torch.empty_like(D))
            out, ckpt, last = _fwd_buffers(u, block_n, 2048 // cfg["BLOCK_L"])
            _, args, consts, warps = _fwd_launch(*inputs, True, out, ckpt, last, cfg)
            specs.append(KernelSpec(f"selective_scan_fwd ({name}, N<={block_n})",
                                    _selective_scan_fwd_kernel, constexprs=consts,
                                    num_warps=warps, args=args))
            grads = _bwd_buffers(u, A, B, C, D, z)
            _, args, consts, warps = _bwd_launch(*inputs, True, ckpt, torch.empty_like(u), last,
                                                 grads, cfg)
            specs.append(KernelSpec(f"selective_scan_bwd ({name}, N<={block_n})",
                                    _selective_scan_bwd_kernel, constexprs=consts,
                                    num_warps=warps, args=args))
    return specs


# --------------------------------------------------------------------------- autograd wrapper


class SelectiveScanFn(torch.autograd.Function):
    """Saves the inputs and the chunk checkpoints (not the L states); backward recomputes."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last, ckpt = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                             delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        dlast = None if dlast is None else dlast.float().contiguous()
        grads = selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus,
                                   ckpt, dout, dlast)
        return (*grads, None)
