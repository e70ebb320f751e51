"""Launching FlashAttention's Triton kernels: configurations, grids, arguments, AOT specs.

Chapter 7. The kernels are in :mod:`lib.attention_kernels`; :mod:`lib.attention` calls
:func:`_flash_fwd_triton` and :func:`_flash_bwd_triton` from its autograd function. One
function per kernel builds its grid and keyword arguments from the tensors
(:func:`_fwd_launch`, :func:`_preprocess_launch`, :func:`_bwd_launch`); the launch and
:func:`aot_specs` both use them, so ``python -m lib.bench compile`` profiles exactly the
launch the library makes (on meta tensors, with Triton's launch-time specialization).
"""

from __future__ import annotations

import math

import torch

from ._triton import triton
from .attention_kernels import (
    LOG2E,
    MAX_HEAD_DIM,
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess,
    _attn_fwd_kernel,
)
from .backend import INTERPRET
from .kernel_spec import KernelSpec
from .validate import check_bool, check_choice, check_int, check_positive_int

# ---------------------------------------------------------------------- configurations

# (BLOCK_M, BLOCK_N, warps, stages) per kernel and padded head dim on a GPU: the launches
# that aot_specs and compile-sweep compile for sm_90a and sm_80 with the launcher's
# specialization and no register spills. For d = 256 the backward kernels split the
# output columns into parts (BLOCK_DO): each part recomputes P, which costs time but
# keeps Q, dO and the accumulators in registers. fp32 tiles (tf32x3: twice the bytes and
# three products) are smaller; fp32 with d > 128 has no table: even 16 x 16 tiles spill
# with a mask, so flash_attention runs the reference there (FP32_KERNEL_MAX_HEAD_DIM).
FP32_KERNEL_MAX_HEAD_DIM = 128
KINDS = ("fwd", "dkdv", "dq")
_GPU_CONFIGS = {
    "fwd": {
        64: dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
        128: dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, num_warps=8, num_stages=2),
    },
    "dkdv": {
        64: dict(BLOCK_M=32, BLOCK_N=128, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=16, BLOCK_N=64, BLOCK_DO=128, num_warps=8, num_stages=1),
    },
    "dq": {
        64: dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, BLOCK_DO=64, num_warps=8, num_stages=2),
    },
    "fwd+mask": {
        64: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, num_warps=8, num_stages=2),
    },
    "dkdv+mask": {
        64: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=16, BLOCK_N=64, BLOCK_DO=128, num_warps=8, num_stages=1),
    },
    "dq+mask": {
        64: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, BLOCK_DO=32, num_warps=8, num_stages=2),
    },
    # fp32, tuned over every head dim of a padded size (16; 24, 32; 40, 64; 80..128),
    # causal or not, by python -m lib.bench compile-sweep
    "fwd/fp32": {
        16: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        32: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        64: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
    },
    "dkdv/fp32": {
        16: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
        32: dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=3),
        64: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=3),
    },
    "dq/fp32": {
        16: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=3),
        32: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=3),
        64: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=3),
        128: dict(BLOCK_M=16, BLOCK_N=64, num_warps=8, num_stages=3),
    },
    "fwd+mask/fp32": {
        16: dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=3),
        32: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        64: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=2),
    },
    "dkdv+mask/fp32": {
        16: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=2),
        32: dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=3),
        64: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=3),
        128: dict(BLOCK_M=32, BLOCK_N=16, num_warps=8, num_stages=3),
    },
    "dq+mask/fp32": {
        16: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=3),
        32: dict(BLOCK_M=32, BLOCK_N=32, num_warps=8, num_stages=3),
        64: dict(BLOCK_M=16, BLOCK_N=64, num_warps=8, num_stages=3),
        128: dict(BLOCK_M=16, BLOCK_N=64, num_warps=8, num_stages=3),
    },
}
_GPU_CONFIGS = {k: {16: v[64], 32: v[64]} | v for k, v in _GPU_CONFIGS.items()}


def kernel_supports(dtype: torch.dtype, d: int) -> bool:
    """Whether the Triton kernels take q, k, v of this dtype and head dim on a GPU
    (fp16/bf16 up to MAX_HEAD_DIM, fp32 up to FP32_KERNEL_MAX_HEAD_DIM)."""
    limit = FP32_KERNEL_MAX_HEAD_DIM if dtype == torch.float32 else MAX_HEAD_DIM
    return d <= limit


def _head_block(d: int) -> int:
    """Head dims are padded to a power of two of at least 16 (the smallest tl.dot size)."""
    return max(16, triton.next_power_of_2(d))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: fp16/bf16 operands go to the tensor cores as they are;
    fp32 operands as "tf32x3" (Triton's F32DotTC pass): a = a_big + a_small with a_big
    rounded to TF32, and a b = a_big b_big + a_big b_small + a_small b_big, three TF32
    tensor-core products. The dropped a_small b_small and the 10 bits of each small part
    that a TF32 product keeps leave at most ``5 2^-22 |a| |b|`` (1.2e-6) per product,
    against 2^-10 for one TF32 product (tests/test_attention.py checks this bound on an
    emulation). Under the interpreter tl.dot multiplies in fp32 whatever the precision."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def launch_config(d: int, n_q: int, n_k: int, kind: str = "fwd", masked: bool = False,
                  dtype: torch.dtype = torch.float16, gpu: bool | None = None) -> dict:
    """Block sizes, warps and stages of one kernel launch.

    d, n_q, n_k: head dim (1..256) and sequence lengths (>= 1). kind: ``"fwd"``,
    ``"dkdv"`` or ``"dq"``; masked: an explicit mask is loaded per tile, which takes
    registers, so those launches use smaller tiles; dtype: of q, k, v. gpu: the GPU
    table (default: unless Triton runs interpreted). On a GPU these are the launches
    ``aot_specs`` compiles; under the interpreter cost grows with programs x loop
    iterations, so blocks cover up to 64 rows or columns at once.
    """
    check_int(d, "d", minimum=1, maximum=MAX_HEAD_DIM)
    check_positive_int(n_q, "n_q")
    check_positive_int(n_k, "n_k")
    check_choice(kind, "kind", KINDS)
    check_bool(masked, "masked")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    block_d = _head_block(d)
    if not (gpu if gpu is not None else not INTERPRET):
        block_m = min(64, max(16, triton.next_power_of_2(n_q)))
        block_n = min(64, max(16, triton.next_power_of_2(n_k)))
        cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=1)
    else:
        if not kernel_supports(dtype, d):
            raise ValueError(f"d must be at most {FP32_KERNEL_MAX_HEAD_DIM} for fp32 on a GPU "
                             f"(the kernels' fp32 tiles spill registers beyond), got {d}")
        key = kind + ("+mask" if masked else "") + ("/fp32" if dtype == torch.float32 else "")
        cfg = dict(_GPU_CONFIGS[key][block_d])
    cfg["BLOCK_D"] = block_d
    if kind != "fwd":
        cfg["BLOCK_DO"] = min(cfg.get("BLOCK_DO", block_d), block_d)
    return cfg


# ----------------------------------------------------------------------------- launches


def _strides(t: torch.Tensor, name: str) -> dict:
    """stride_{name}b, stride_{name}h, stride_{name}n of a (B, H, N, d) tensor."""
    return {f"stride_{name}{axis}": t.stride(i) for i, axis in enumerate("bhn")}


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor) -> dict:
    """The explicit mask as kernel arguments (int8); a dummy when there is none."""
    if mask is None:
        return dict(mask_ptr=q, stride_mb=0, stride_mq=0, N_M=1)
    m8 = mask.to(torch.int8).contiguous()
    stride_mb = 0 if m8.dim() == 2 else m8.stride(0)  # (Nq, Nm): the same for every batch
    return dict(mask_ptr=m8, stride_mb=stride_mb, stride_mq=m8.stride(-2), N_M=m8.shape[-1])


def _common_args(q, k, v, causal, scale, mask) -> dict:
    """Arguments every attention kernel but the preprocess takes."""
    return dict(q_ptr=q, k_ptr=k, v_ptr=v, **_mask_args(mask, q), **_strides(q, "q"),
                **_strides(k, "k"), **_strides(v, "v"), H=q.shape[1], N_Q=q.shape[2],
                N_K=k.shape[2], qk_scale=scale * LOG2E.value, HEAD_DIM=q.shape[3],
                CAUSAL=causal, HAS_MASK=mask is not None, PRECISION=_precision(q.dtype))


def _fwd_launch(q, k, v, out, lse, causal, scale, mask, cfg):
    """Grid and keyword arguments of the forward kernel (the launch and aot_specs)."""
    args = _common_args(q, k, v, causal, scale, mask) | _strides(out, "o")
    args |= dict(o_ptr=out, lse_ptr=lse, **cfg)
    return (triton.cdiv(q.shape[2], cfg["BLOCK_M"]), q.shape[0] * q.shape[1]), args


def _preprocess_launch(out, do, delta):
    """Grid and keyword arguments of the D = rowsum(dO o O) kernel."""
    block_d = _head_block(out.shape[3])
    block_m = min(128, max(16, 4096 // block_d))  # a (block_m x block_d) tile of O and dO
    args = dict(o_ptr=out, do_ptr=do, delta_ptr=delta, **_strides(out, "o"),
                **_strides(do, "do"), H=out.shape[1], N_Q=out.shape[2], HEAD_DIM=out.shape[3],
                BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4, num_stages=1)
    return (triton.cdiv(out.shape[2], block_m), out.shape[0] * out.shape[1]), args


def _bwd_launch(kind, q, k, v, do, lse, delta, grads, causal, scale, mask, cfg):
    """Grid and keyword arguments of the dK, dV (``grads`` = dk, dv) or dQ (dq) kernel."""
    args = _common_args(q, k, v, causal, scale, mask) | _strides(do, "do")
    args |= dict(do_ptr=do, lse_ptr=lse, delta_ptr=delta, sm_scale=scale, **cfg)
    parts = cfg["BLOCK_D"] // cfg["BLOCK_DO"]  # column parts of the output
    if kind == "dkdv":
        args |= dict(dk_ptr=grads[0], dv_ptr=grads[1])
        return (triton.cdiv(k.shape[2], cfg["BLOCK_N"]), q.shape[0] * q.shape[1], parts), args
    args |= dict(dq_ptr=grads[0])
    return (triton.cdiv(q.shape[2], cfg["BLOCK_M"]), q.shape[0] * q.shape[1], parts), args


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _override(cfg: dict, **blocks) -> dict:
    """cfg with the block sizes given (not None) replaced: tests use small blocks."""
    return cfg | {name: value for name, value in blocks.items() if value is not None}


def _flash_fwd_triton(q, k, v, causal, scale, mask, block_m=None, block_n=None):
    """Launch the forward kernel; returns O (B, H, Nq, d) in q's dtype and L (B, H, Nq) fp32."""
    q, k, v = map(_last_dim_contiguous, (q, k, v))
    batch, heads, n_q, d = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
    cfg = launch_config(d, n_q, k.shape[2], "fwd", mask is not None, q.dtype)
    grid, args = _fwd_launch(q, k, v, out, lse, causal, scale, mask,
                             _override(cfg, BLOCK_M=block_m, BLOCK_N=block_n))
    _attn_fwd_kernel[grid](**args)
    return out, lse


def _flash_bwd_triton(q, k, v, out, lse, do, dlse, causal, scale, mask,
                      block_m=None, block_n=None, block_do=None):
    """dQ, dK, dV (eqs. 8-10) by recomputing P from L; ``dlse`` (or None) is L's gradient."""
    q, k, v, out, do = map(_last_dim_contiguous, (q, k, v, out, do))
    batch, heads, n_q, d = q.shape
    delta = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
    grid, args = _preprocess_launch(out, do, delta)
    _attn_bwd_preprocess[grid](**args)
    if dlse is not None:  # dL_i/dS_ij = P_ij, so L's gradient enters as D_i - dL_i
        delta = delta - dlse.float()
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    for kind, kernel, grads in (("dkdv", _attn_bwd_dkdv_kernel, (dk, dv)),
                                ("dq", _attn_bwd_dq_kernel, (dq,))):
        cfg = launch_config(d, n_q, k.shape[2], kind, mask is not None, q.dtype)
        cfg = _override(cfg, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DO=block_do)
        grid, args = _bwd_launch(kind, q, k, v, do, lse, delta, grads, causal, scale, mask, cfg)
        kernel[grid](**args)
    return dq, dk, dv


# ------------------------------------------------------------- ahead-of-time compilation

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (dtype, head dim, causal, explicit mask): the rows of `python -m lib.bench compile`
AOT_VARIANTS = (
    [("fp16", d, True, False) for d in (64, 128, 256)]
    + [("fp16", d, False, False) for d in (64, 128)]
    + [("fp16", d, True, True) for d in (64, 128, 256)]
    + [("bf16", 64, True, False)]
    + [("fp32", d, True, False) for d in (32, 64, 128)]
    + [("fp16", d, True, False) for d in (40, 80, 96)]
)


def kernel_specs(dtype: str, d: int, causal: bool, masked: bool, batch: int = 4,
                 heads: int = 16, n: int = 2048, n_mask: int = 64) -> list[KernelSpec]:
    """The forward, dK/dV and dQ launches of one variant on contiguous (B, H, N, d)
    tensors, as :func:`_flash_fwd_triton` and :func:`_flash_bwd_triton` make them on a
    GPU (meta tensors: no memory is allocated)."""
    def make(*shape, dt=_DTYPES[dtype]):
        return torch.empty(*shape, dtype=dt, device="meta")

    q, k, v, out, do = (make(batch, heads, n, d) for _ in range(5))
    lse, delta = (make(batch, heads, n, dt=torch.float32) for _ in range(2))
    mask = make(batch, n, n_mask, dt=torch.bool) if masked else None
    scale = 1.0 / math.sqrt(d)
    variant = f"{dtype} d={d} {'causal' if causal else 'full'}{'+mask' if masked else ''}"
    specs = []
    for kind in KINDS:
        cfg = launch_config(d, n, n, kind, masked, _DTYPES[dtype], gpu=True)
        if kind == "fwd":
            _, args = _fwd_launch(q, k, v, out, lse, causal, scale, mask, cfg)
        else:
            grads = (make(batch, heads, n, d),) * (2 if kind == "dkdv" else 1)
            _, args = _bwd_launch(kind, q, k, v, do, lse, delta, grads, causal, scale, mask,
                                  cfg)
        warps, stages = args.pop("num_warps"), args.pop("num_stages")
        kernel = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel,
                  "dq": _attn_bwd_dq_kernel}[kind]
        specs.append(KernelSpec(f"attn_{kind} {variant}", kernel, num_warps=warps,
                                num_stages=stages, matmul=True, args=args))
    return specs


# Every launch class the Triton path makes on a GPU, for `python -m lib.bench
# compile-sweep`: each padded head dim, at a power of two (no column mask, aligned strides)
# and below it (masked columns; strides not divisible by 16 for 24 and 40); 3 dtypes
SWEEP_HEAD_DIMS = (16, 24, 32, 40, 64, 80, 96, 128, 160, 256)


def sweep_specs() -> list[KernelSpec]:
    """Every kernel for every dtype, head dim of :data:`SWEEP_HEAD_DIMS`, causal or not,
    with or without a mask: what `compile-sweep` checks for spills."""
    return [spec for dtype in _DTYPES for d in SWEEP_HEAD_DIMS for causal in (True, False)
            for masked in (False, True) if kernel_supports(_DTYPES[dtype], d)
            for spec in kernel_specs(dtype, d, causal, masked)]


def aot_specs() -> list[KernelSpec]:
    """The launches ``python -m lib.bench compile`` profiles: every kernel for the
    variants of :data:`AOT_VARIANTS`, and the preprocess kernel (fp16 and fp32)."""
    specs = [s for variant in AOT_VARIANTS for s in kernel_specs(*variant)]
    for dtype in ("fp16", "fp32"):
        out = torch.empty(4, 16, 2048, 128, dtype=_DTYPES[dtype], device="meta")
        delta = torch.empty(4, 16, 2048, dtype=torch.float32, device="meta")
        _, args = _preprocess_launch(out, torch.empty_like(out), delta)
        warps, stages = args.pop("num_warps"), args.pop("num_stages")
        specs.append(KernelSpec(f"attn_bwd_preprocess {dtype} d=128", _attn_bwd_preprocess,
                                num_warps=warps, num_stages=stages, args=args))
    return specs
