"""Floating-point formats, exact rounding to any (exponent, mantissa) split, and loss scaling.

Chapter 2 (equation numbers refer to it). IEEE 754-2019; Micikevicius et al. (2018), "Mixed
precision training"; Micikevicius et al. (2022), "FP8 formats for deep learning".

A format with e exponent bits and m mantissa (fraction) bits stores a sign s, a biased
exponent E and a fraction f. With bias = 2^(e-1) - 1 (eq. 2) its value is

    (-1)^s 2^(E - bias) (1 + f / 2^m)     for 0 < E < 2^e - 1   (normal, eq. 1)
    (-1)^s 2^(1 - bias) (f / 2^m)          for E = 0             (subnormal, eq. 1)

and the all-ones exponent holds inf and NaN. The "fn" variant of FP8 E4M3 has no infinities
and keeps only the all-ones code for NaN, so its top exponent holds ordinary numbers.

Module layout: formats (:class:`FloatFormat`, :data:`FORMATS`) -> bit fields
(:func:`decompose`, :func:`encode`, :func:`compose`) -> rounding (:func:`round_to_format`,
:func:`ulp`, :func:`neighbours`) -> the fused unscale-and-check: reference, Triton kernel,
public :func:`unscale_and_check_` -> :func:`update_scale` and :class:`DynamicLossScaler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._triton import tl, triton
from .aot import KernelSpec
from .backend import check_backend, resolve_backend
from .validate import FLOAT_DTYPES, check_positive_int, check_tensor

# ------------------------------------------------------------------------------------ formats


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    finite: the "fn" variant (FP8 E4M3FN): no infinities, NaN only at the all-ones code, so the
    top exponent holds numbers and the largest one is 2^(bias+1) (2 - 2^(1-m)) (eq. 3).
    dtype: the torch dtype that stores the format, when there is one.
    The derived numbers are exact Python floats (chapter 2, eqs. 2-4).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    finite: bool = False
    dtype: torch.dtype | None = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        for field, low, high in (("exponent_bits", 2, 11), ("mantissa_bits", 1, 52)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"{field} must be in [{low}, {high}], got {value}")

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """2^(e-1) - 1 (eq. 2)."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: 1 - bias (eq. 2)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number: bias, or bias + 1 for the fn variant."""
        return self.bias + (1 if self.finite else 0)

    @property
    def max(self) -> float:
        """Largest finite number (eq. 3): all-ones fraction, or all-ones minus one for fn."""
        frac = 2.0 - 2.0 ** (1 - self.mantissa_bits if self.finite else -self.mantissa_bits)
        return math.ldexp(frac, self.emax)

    @property
    def min_normal(self) -> float:
        """2^emin (eq. 4)."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """2^(emin - m), one unit in the last place below the normals (eq. 4)."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Machine epsilon 2^-m: the distance from 1 to the next number (eq. 4)."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def has_inf(self) -> bool:
        return not self.finite

    def __str__(self) -> str:
        return f"{self.name} (E{self.exponent_bits}M{self.mantissa_bits}{'FN' * self.finite})"


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("fp64", 11, 52, dtype=torch.float64),
        FloatFormat("fp32", 8, 23, dtype=torch.float32),
        FloatFormat("tf32", 8, 10),  # tensor-core input format; stored in 32-bit registers
        FloatFormat("fp16", 5, 10, dtype=torch.float16),
        FloatFormat("bf16", 8, 7, dtype=torch.bfloat16),
        FloatFormat("fp8_e4m3fn", 4, 3, finite=True, dtype=torch.float8_e4m3fn),
        FloatFormat("fp8_e5m2", 5, 2, dtype=torch.float8_e5m2),
    )
}
_BY_DTYPE = {f.dtype: f for f in FORMATS.values() if f.dtype is not None}
_INT_VIEW = {64: torch.int64, 32: torch.int32, 16: torch.int16, 8: torch.uint8}


def format_of(dtype: torch.dtype) -> FloatFormat:
    """The :class:`FloatFormat` stored by a torch floating dtype."""
    if dtype not in _BY_DTYPE:
        names = ", ".join(str(d).removeprefix("torch.") for d in _BY_DTYPE)
        raise TypeError(f"dtype must be one of ({names}), got {dtype}")
    return _BY_DTYPE[dtype]


def _check_format(fmt) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat (see FORMATS), got {type(fmt).__name__}")
    if fmt.exponent_bits > 8 and fmt.mantissa_bits < 23:
        raise ValueError(
            f"fmt={fmt} has a wider range than fp32 but fewer mantissa bits: rounding fp32 "
            "values to it can land above fp32's largest number, which the fp32 result cannot hold"
        )
    return fmt


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k as float64 for integer k in [-1022, 1023], built from its bit fields: exact."""
    return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)


# --------------------------------------------------------------------------------- bit fields


def decompose(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stored bit fields of ``x``: (sign, biased exponent, fraction) as int64 tensors.

    x: any shape, dtype fp64, fp32, fp16, bf16, float8_e4m3fn or float8_e5m2 (eq. 1).
    """
    check_tensor(x, "x")
    fmt = format_of(x.dtype)
    bits = x.contiguous().view(_INT_VIEW[fmt.bits]).to(torch.int64)
    sign = (bits >> (fmt.bits - 1)) & 1
    exponent = (bits >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
    return sign, exponent, bits & (2**fmt.mantissa_bits - 1)


def compose(
    sign: torch.Tensor, exponent: torch.Tensor, mantissa: torch.Tensor, fmt: FloatFormat
) -> torch.Tensor:
    """The values (float64) of the bit fields (sign, biased exponent, fraction) in ``fmt`` (eq. 1).

    The inverse of :func:`encode`. Codes beyond the format's numbers give inf or NaN as the
    format defines them (the fn variant: NaN only at the all-ones code).
    """
    m, top = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    sign, exponent, mantissa = (torch.as_tensor(t).long() for t in (sign, exponent, mantissa))
    normal = exponent > 0
    frac = normal.double() + mantissa.double() / 2.0**m  # 1.f or 0.f: exact in float64
    value = frac * _pow2(torch.where(normal, exponent - fmt.bias, fmt.emin))
    if fmt.finite:
        nan = (exponent == top) & (mantissa == 2**m - 1)
    else:
        value = torch.where((exponent == top) & (mantissa == 0), math.inf, value)
        nan = (exponent == top) & (mantissa != 0)
    value = torch.where(nan, math.nan, value)
    return torch.where(sign == 1, -value, value)


def all_values(fmt: FloatFormat) -> torch.Tensor:
    """Every code of a format of at most 16 bits, in code order, as float64 (length 2^bits)."""
    _check_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"fmt must have at most 16 bits to list its values, {fmt} has {fmt.bits}")
    code = torch.arange(2**fmt.bits)
    m = fmt.mantissa_bits
    return compose(code >> (fmt.bits - 1), (code >> m) & (2**fmt.exponent_bits - 1),
                   code & (2**m - 1), fmt)


# ----------------------------------------------------------------------------------- rounding


def _check_values(x) -> torch.Tensor:
    return check_tensor(x, "x", dtypes=FLOAT_DTYPES)


def _exponent(a: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """floor(log2 a) clamped below at emin: the binade whose spacing applies to a >= 0 (eq. 5)."""
    _, e = torch.frexp(a)  # a = f 2^e with f in [0.5, 1): exact, also for fp32 subnormals
    e = torch.where(a == 0, fmt.emin, e.to(torch.int64) - 1)  # 0 lies in the subnormal range
    return e.clamp(min=fmt.emin)


def round_to_format(
    x: torch.Tensor, fmt: FloatFormat, saturate: bool | None = None
) -> torch.Tensor:
    """Round ``x`` to the nearest number of ``fmt``, ties to even (chapter 2, eqs. 5-7).

    x: any shape, fp32 (or fp16/bf16, which fp32 holds exactly). Returns fp32 of the same shape,
    holding values of ``fmt`` exactly: bit-exact with torch's casts to float16, bfloat16,
    float8_e4m3fn and float8_e5m2. Subnormals use the fixed spacing 2^(emin - m); -0 stays -0;
    NaN stays NaN. Numbers whose rounding exceeds ``fmt.max`` (and +-inf) become +-max when
    ``saturate``, else +-inf (NaN for a format without inf). ``saturate=None`` takes the
    format's convention, as torch does: fn formats saturate, IEEE formats overflow to inf.
    """
    _check_values(x)
    _check_format(fmt)
    if saturate is None:
        saturate = fmt.finite
    xd = x.double()
    a = xd.abs()
    spacing = _pow2(_exponent(a, fmt) - fmt.mantissa_bits)  # ulp at a (eq. 5)
    r = torch.round(a / spacing) * spacing  # torch.round: half to even (eq. 6); a / spacing exact
    overflow = r > fmt.max  # also a = inf; the rounding of eq. 6 is unbounded above (eq. 7)
    beyond = fmt.max if saturate else (math.inf if fmt.has_inf else math.nan)
    r = torch.where(overflow, beyond, r)
    r = torch.where(torch.isnan(a), math.nan, r)
    return torch.copysign(r, xd).float()


def ulp(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """The spacing of ``fmt``'s numbers at |x| (eq. 5), float64; 2^(emin - m) below the normals."""
    _check_values(x)
    _check_format(fmt)
    return _pow2(_exponent(x.double().abs(), fmt) - fmt.mantissa_bits)


def encode(x: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bit fields (sign, biased exponent, fraction) of ``round_to_format(x, fmt)`` in ``fmt``.

    Works for invented formats that no torch dtype stores; equals :func:`decompose` of the
    torch cast for the formats that one does (NaN is encoded as the canonical quiet NaN).
    """
    r = round_to_format(x, fmt).double()
    a = r.abs()
    m, top = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    e = _exponent(a, fmt)
    normal = a >= fmt.min_normal
    exponent = torch.where(normal, e + fmt.bias, 0)
    mantissa = (a / _pow2(e - m)).nan_to_num(0.0, 0.0).to(torch.int64)
    mantissa = torch.where(normal, mantissa - 2**m, mantissa)
    exponent = torch.where(torch.isinf(a) | torch.isnan(a), top, exponent)
    mantissa = torch.where(torch.isinf(a), 0, mantissa)
    nan_fraction = 2**m - 1 if fmt.finite else 2 ** (m - 1)
    mantissa = torch.where(torch.isnan(a), nan_fraction, mantissa)
    return torch.signbit(r).to(torch.int64), exponent, mantissa


def neighbours(x: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """The numbers of ``fmt`` just below and just above ``round_to_format(x, fmt)`` (float64).

    Steps one code down and up: below +0 is -min_subnormal; above max is inf (NaN for fn).
    For a non-finite rounded value both neighbours are that value.
    """
    sign, exponent, mantissa = encode(x, fmt)
    m = fmt.mantissa_bits
    code = (exponent << m) | mantissa
    ordinal = torch.where(sign == 1, -code, code)  # monotone in the value; +0 and -0 are 0

    def from_ordinal(o):
        c = o.abs()
        return compose((o < 0).to(torch.int64), c >> m, c & (2**m - 1), fmt)

    r = round_to_format(x, fmt).double()
    below = torch.where(torch.isfinite(r), from_ordinal(ordinal - 1), r)
    above = torch.where(torch.isfinite(r), from_ordinal(ordinal + 1), r)
    return below, above


# ------------------------------------------------------- fused unscale and inf/NaN check: spec


def _unscale_and_check_reference(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> torch.Tensor:
    """g <- g * inv_scale for every g in ``grads`` (fp32 math), found_inf <- 1 if any input was
    inf or NaN (eq. 10). The spec of the kernel; same contract as PyTorch's
    ``torch._amp_foreach_non_finite_check_and_unscale_``."""
    for g in grads:
        gf = g.float()
        bad = (~torch.isfinite(gf)).any().float()
        found_inf.copy_(torch.maximum(found_inf, bad.reshape(found_inf.shape)))
        g.copy_(gf * inv_scale.reshape(()))
    return found_inf


# -------------------------------------------------------------- the kernel: one launch for all

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CHUNK = 16384  # elements per program; a tensor of n elements gets ceil(n / CHUNK) programs
BLOCK_BYTES = 4096  # bytes per block inside a chunk: 1024 fp32 or 2048 fp16/bf16 elements


@triton.jit
def _check_and_scale(g, inv_scale):
    """(g * inv_scale in fp32, 1 where g was NaN or +-inf) for a block g."""
    g = g.to(tl.float32)
    return g * inv_scale, ((g != g) | (tl.abs(g) == float("inf"))).to(tl.int32)


@triton.jit
def _unscale_span(ptr, start, end, inv_scale, BLOCK: tl.constexpr):
    """Unscale ptr[start:end] in place in blocks of BLOCK; return 1 if any element was inf/NaN.

    Full blocks load without a mask, and the hints say that their offsets are BLOCK-aligned
    and the addresses 16-byte aligned (start is a multiple of CHUNK, each tensor starts
    16-byte aligned), so the compiler emits 16-byte vector loads; the partial block is masked.
    """
    bad = tl.zeros((), tl.int32)
    n_full = (end - start) // BLOCK
    for i in range(0, n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        p = tl.multiple_of(ptr + offs, 16)
        y, b = _check_and_scale(tl.load(p), inv_scale)
        tl.store(p, y.to(ptr.dtype.element_ty))
        bad = tl.maximum(bad, tl.max(b, 0))
    offs = start + n_full * BLOCK + tl.arange(0, BLOCK)
    mask = offs < end
    y, b = _check_and_scale(tl.load(ptr + offs, mask=mask, other=0.0), inv_scale)
    tl.store(ptr + offs, y.to(ptr.dtype.element_ty), mask=mask)
    return tl.maximum(bad, tl.max(b, 0))


@triton.jit
def _unscale_and_check_kernel(
    table_ptr, found_inf_ptr, inv_scale_ptr, n_tensors,
    CHUNK: tl.constexpr, BLOCK_BYTES: tl.constexpr,
):
    """One program per chunk of one tensor, for all tensors in one launch (multi-tensor apply).

    table (int64): rows (address, numel, dtype code) for each tensor, then rows
    (tensor index, chunk start) for each program.
    """
    pid = tl.program_id(0).to(tl.int64)
    # which tensor and which chunk of it
    tensor = tl.load(table_ptr + 3 * n_tensors + 2 * pid)
    start = tl.load(table_ptr + 3 * n_tensors + 2 * pid + 1)
    address = tl.load(table_ptr + 3 * tensor)
    numel = tl.load(table_ptr + 3 * tensor + 1)
    code = tl.load(table_ptr + 3 * tensor + 2)
    end = tl.minimum(start + CHUNK, numel)
    inv_scale = tl.load(inv_scale_ptr)
    # the address becomes a typed pointer (one name per type: the compiler wants one type per
    # variable across branches). Blocks are BLOCK_BYTES long, so the fp32 and 16-bit branches
    # get differently sized blocks, each with its own 16-byte-vector layout.
    if code == 0:
        ptr_fp32 = address.to(tl.pointer_type(tl.float32))
        bad = _unscale_span(ptr_fp32, start, end, inv_scale, BLOCK_BYTES // 4)
    elif code == 1:
        ptr_fp16 = address.to(tl.pointer_type(tl.float16))
        bad = _unscale_span(ptr_fp16, start, end, inv_scale, BLOCK_BYTES // 2)
    else:
        ptr_bf16 = address.to(tl.pointer_type(tl.bfloat16))
        bad = _unscale_span(ptr_bf16, start, end, inv_scale, BLOCK_BYTES // 2)
    # every writer writes the same 1.0: no atomics needed
    tl.store(found_inf_ptr, 1.0, mask=bad > 0)


def launch_table(grads: list[torch.Tensor], chunk: int = CHUNK) -> tuple[torch.Tensor, int]:
    """The int64 table of :func:`_unscale_and_check_kernel` (on the grads' device) and the grid.

    grads: non-empty, contiguous fp32/fp16/bf16 tensors on one device, each 16-byte aligned.
    Built with vectorised ops on the host (no per-chunk Python loop): rows
    (address, numel, dtype code) per tensor, then (tensor index, start) per chunk.
    """
    tensor_rows = torch.tensor([[g.data_ptr(), g.numel(), DTYPE_CODES[g.dtype]] for g in grads])
    numel = tensor_rows[:, 1]
    counts = (numel + chunk - 1) // chunk  # chunks (programs) per tensor
    index = torch.repeat_interleave(torch.arange(len(grads)), counts)
    first = torch.cumsum(counts, 0) - counts  # id of each tensor's first chunk
    start = (torch.arange(int(counts.sum())) - first[index]) * chunk
    table = torch.cat([tensor_rows.flatten(), torch.stack([index, start], 1).flatten()])
    if grads[0].is_cuda:
        table = table.pin_memory().to(grads[0].device, non_blocking=True)
    return table, index.numel()


def _unscale_and_check_triton(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> torch.Tensor:
    """Same contract as :func:`_unscale_and_check_reference`: one kernel launch for all grads.

    Tensors that are not contiguous or not 16-byte aligned are processed as aligned
    contiguous copies inside the same launch and copied back afterwards.
    """
    work = [g if g.is_contiguous() and g.data_ptr() % 16 == 0
            else torch.empty_like(g, memory_format=torch.contiguous_format).copy_(g)
            for g in grads if g.numel() > 0]
    if not work:
        return found_inf
    table, programs = launch_table(work)
    _unscale_and_check_kernel[(programs,)](
        table, found_inf, inv_scale, len(work), CHUNK=CHUNK, BLOCK_BYTES=BLOCK_BYTES,
        num_warps=4,
    )
    for g, w in zip((g for g in grads if g.numel() > 0), work, strict=True):
        if w is not g:
            g.copy_(w)
    return found_inf


def aot_specs() -> list[KernelSpec]:
    """Default configuration, compiled ahead of time by ``python -m lib.bench compile``."""
    signature = {"table_ptr": "*i64", "found_inf_ptr": "*fp32", "inv_scale_ptr": "*fp32",
                 "n_tensors": "i32"}
    return [KernelSpec("unscale_and_check (fp32/fp16/bf16)", _unscale_and_check_kernel,
                       signature, {"CHUNK": CHUNK, "BLOCK_BYTES": BLOCK_BYTES}, num_warps=4)]


# ------------------------------------------------------------------------------------ public


def _check_scalar(t, name: str, device: torch.device) -> None:
    check_tensor(t, name, dtypes=(torch.float32,))
    if t.numel() != 1:
        raise ValueError(f"{name} must have exactly one element, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the grads' device {device}, got {t.device}")


def unscale_and_check_(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Multiply every gradient by ``inv_scale`` in place and flag inf/NaN (chapter 2, eq. 10).

    grads: a list of tensors of any shapes, fp32/fp16/bf16 mixed, on one device.
    found_inf: one-element fp32 tensor, set to 1.0 if any gradient held inf or NaN (it is not
    reset: pass zeros). inv_scale: one-element fp32 tensor, 1 / scale. Returns ``found_inf``.
    backend: ``"triton"`` runs ONE kernel launch for all tensors; ``"torch"`` the reference.
    No host synchronisation: the caller reads ``found_inf`` when it needs it.
    """
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads must be a list of tensors, got {type(grads).__name__}")
    grads = list(grads)
    for i, g in enumerate(grads):
        check_tensor(g, f"grads[{i}]", dtypes=FLOAT_DTYPES)
        if g.is_sparse:
            raise ValueError(f"grads[{i}] is sparse; only dense gradients are supported")
        if g.device != grads[0].device:
            raise ValueError(f"grads must share one device: grads[0] is on {grads[0].device}, "
                             f"grads[{i}] on {g.device}")
    device = grads[0].device if grads else found_inf.device
    _check_scalar(found_inf, "found_inf", device)
    _check_scalar(inv_scale, "inv_scale", device)
    if not grads:
        return found_inf
    if resolve_backend(backend, *grads) == "torch":
        return _unscale_and_check_reference(grads, found_inf, inv_scale)
    return _unscale_and_check_triton(grads, found_inf, inv_scale)


def update_scale(
    scale: torch.Tensor, growth_tracker: torch.Tensor, found_inf: torch.Tensor,
    growth_factor: float, backoff_factor: float, growth_interval: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of dynamic loss scaling (eq. 11), in place on the 0-d tensors, no host sync.

    An inf/NaN multiplies the scale by ``backoff_factor`` and resets the count of good steps;
    ``growth_interval`` good steps in a row multiply it by ``growth_factor`` (unless that
    overflows fp32) and reset the count. Same rule as ``torch._amp_update_scale_``.
    """
    found = found_inf.reshape(()) > 0
    good_steps = growth_tracker + 1
    grow = ~found & (good_steps == growth_interval)
    # products in float64, rounded once to the fp32 scale, as PyTorch's kernels compute them
    grown = (scale.double() * growth_factor).float()
    backed_off = (scale.double() * backoff_factor).float()
    new_scale = torch.where(found, backed_off,
                            torch.where(grow & torch.isfinite(grown), grown, scale))
    scale.copy_(new_scale)
    growth_tracker.copy_(torch.where(found | grow, torch.zeros_like(good_steps), good_steps))
    return scale, growth_tracker


READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"


class DynamicLossScaler:
    """Dynamic loss scaling, used exactly as ``torch.amp.GradScaler`` (chapter 2, eqs. 9-11).

    Per iteration::

        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)   # optional: to clip or inspect the true gradients
        scaler.step(optimizer)       # skipped when a gradient is inf/NaN
        scaler.update()

    The unscale and the inf/NaN check run as one fused pass over all gradients of an
    optimizer (:func:`unscale_and_check_`, one Triton launch per device). Differences from
    GradScaler: ``unscale_`` returns ``found_inf`` (a 0-d fp32 tensor) instead of None; there is
    no ``enabled`` switch; optimizers with their own scale handling (``_step_supports_amp_scaling``)
    are stepped like any other.
    """

    def __init__(
        self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
        backoff_factor: float = 0.5, growth_interval: int = 2000, backend: str = "auto",
    ):
        for name, value in (("init_scale", init_scale), ("growth_factor", growth_factor),
                            ("backoff_factor", backoff_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale}")
        if not growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        check_positive_int(growth_interval, "growth_interval")
        check_backend(backend)
        self.init_scale, self.growth_factor = float(init_scale), float(growth_factor)
        self.backoff_factor, self.growth_interval = float(backoff_factor), growth_interval
        self.backend = backend
        self._scale: torch.Tensor | None = None  # 0-d fp32, created on the loss's device
        self._growth_tracker: torch.Tensor | None = None  # 0-d int32: good steps in a row
        self._init_tracker = 0
        self._states: dict[int, dict] = {}  # id(optimizer) -> stage and found_inf per device

    def _lazy_init(self, device: torch.device) -> None:
        if self._scale is None:
            self._scale = torch.full((), self.init_scale, dtype=torch.float32, device=device)
            self._growth_tracker = torch.full((), self._init_tracker, dtype=torch.int32,
                                              device=device)

    def _state(self, optimizer) -> dict:
        return self._states.setdefault(id(optimizer), {"stage": READY, "found_inf": {}})

    def _require_scale(self, what: str) -> None:
        if self._scale is None:
            raise RuntimeError(f"{what} was called before scale(loss) in this run")

    def scale(self, outputs):
        """``outputs * scale`` (eq. 9): a tensor, or a list/tuple of tensors."""
        if isinstance(outputs, torch.Tensor):
            self._lazy_init(outputs.device)
            return outputs * self._scale.to(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"outputs must be a tensor or a list/tuple of tensors, "
                        f"got {type(outputs).__name__}")

    def unscale_(self, optimizer) -> torch.Tensor:
        """Divide the optimizer's gradients by the scale in place; return found_inf (0-d fp32)."""
        self._require_scale("unscale_")
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer "
                               "since the last update()")
        if state["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step()")
        inv_scale = self._scale.double().reciprocal().float()  # as GradScaler: 1/s in fp64
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dtype == torch.float16:
                    raise ValueError(
                        "Attempting to unscale FP16 gradients: keep fp32 master weights (eq. 8) "
                        "so that unscaled gradients are not rounded to fp16 again")
                by_device.setdefault(p.grad.device, []).append(p.grad)
        found = {}
        for device, grads in by_device.items():
            found[device] = torch.zeros((), dtype=torch.float32, device=device)
            unscale_and_check_(grads, found[device], inv_scale.to(device), self.backend)
        state["found_inf"], state["stage"] = found, UNSCALED
        total = torch.zeros((), dtype=torch.float32, device=self._scale.device)
        for f in found.values():
            total = total + f.to(total.device)
        return total

    def step(self, optimizer, *args, **kwargs):
        """Unscale (if not done yet) and call ``optimizer.step`` unless a gradient is inf/NaN."""
        self._require_scale("step")
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not supported with loss scaling")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        retval = None
        if not sum(f.item() for f in state["found_inf"].values()):
            retval = optimizer.step(*args, **kwargs)
        state["stage"] = STEPPED
        return retval

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Back off after an inf/NaN, grow after ``growth_interval`` good steps (eq. 11)."""
        self._require_scale("update")
        if new_scale is not None:
            self._scale.fill_(float(new_scale))
        else:
            found = [f.to(self._scale.device) for s in self._states.values()
                     for f in s["found_inf"].values()]
            if not found:
                raise RuntimeError("No inf checks were recorded prior to update(): call "
                                   "step(optimizer) first")
            update_scale(self._scale, self._growth_tracker, sum(found), self.growth_factor,
                         self.backoff_factor, self.growth_interval)
        self._states = {}

    def get_scale(self) -> float:
        """The current scale as a Python float (syncs with the device)."""
        return self.init_scale if self._scale is None else self._scale.item()

    def state_dict(self) -> dict:
        """The keys of ``GradScaler.state_dict``, so either can resume the other's run."""
        tracker = (self._init_tracker if self._growth_tracker is None
                   else int(self._growth_tracker.item()))
        return {"scale": self.get_scale(), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": tracker}

    def load_state_dict(self, state: dict) -> None:
        self.init_scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        if self._scale is not None:
            self._scale.fill_(self.init_scale)
            self._growth_tracker.fill_(int(state["_growth_tracker"]))
        self._init_tracker = int(state["_growth_tracker"])
