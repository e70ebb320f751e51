"""Floating-point formats and exact rounding to any (exponent, mantissa) split.

Chapter 2 (equation numbers refer to it). IEEE 754-2019; Micikevicius et al. (2022), "FP8
formats for deep learning". Loss scaling, the other half of the chapter, is
:mod:`lib.loss_scaling`.

A format with e exponent bits and m mantissa (fraction) bits stores a sign s, a biased
exponent E and a fraction f. With bias = 2^(e-1) - 1 (eq. 2) its value is

    (-1)^s 2^(E - bias) (1 + f / 2^m)     for 0 < E < 2^e - 1   (normal, eq. 1)
    (-1)^s 2^(1 - bias) (f / 2^m)          for E = 0             (subnormal, eq. 1)

and the all-ones exponent holds inf and NaN. The "fn" variant of FP8 E4M3 has no infinities
and keeps only the all-ones code for NaN, so its top exponent holds ordinary numbers.

Module layout: formats (:class:`FloatFormat`, :data:`FORMATS`) -> bit fields
(:func:`decompose`, :func:`encode`, :func:`compose`) -> rounding (:func:`round_to_format`,
:func:`ulp`, :func:`neighbours`). Everything is plain PyTorch on any device; the rounding
is the spec that the chapter checks bit for bit against torch's own casts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validate import FLOAT_DTYPES, check_bool, check_int, check_tensor

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
        # at most fp64's fields: the arithmetic below is exact in float64
        check_int(self.exponent_bits, "exponent_bits", minimum=2, maximum=11)
        check_int(self.mantissa_bits, "mantissa_bits", minimum=1, maximum=52)
        check_bool(self.finite, "finite")
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {type(self.dtype).__name__}")

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
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
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
    check_tensor(x, "x", dtypes=_BY_DTYPE)
    fmt = format_of(x.dtype)
    bits = x.contiguous().view(_INT_VIEW[fmt.bits]).to(torch.int64)
    sign = (bits >> (fmt.bits - 1)) & 1
    exponent = (bits >> fmt.mantissa_bits) & (2**fmt.exponent_bits - 1)
    return sign, exponent, bits & (2**fmt.mantissa_bits - 1)


def compose(
    sign: torch.Tensor, exponent: torch.Tensor, mantissa: torch.Tensor, fmt: FloatFormat
) -> torch.Tensor:
    """The values (float64) of the bit fields (sign, biased exponent, fraction) in ``fmt`` (eq. 1).

    The inverse of :func:`encode`. sign, exponent, mantissa: integer tensors (or ints) of
    shapes that broadcast, with values in [0, 1], [0, 2^e - 1] and [0, 2^m - 1]. Codes beyond
    the format's numbers give inf or NaN as the format defines them (the fn variant: NaN
    only at the all-ones code).
    """
    _check_format(fmt)
    m, top = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    sign, exponent, mantissa = (_check_field(t, name, high) for t, name, high in
                                ((sign, "sign", 1), (exponent, "exponent", top),
                                 (mantissa, "mantissa", 2**m - 1)))
    try:
        torch.broadcast_shapes(sign.shape, exponent.shape, mantissa.shape)
    except RuntimeError:
        raise ValueError(
            f"sign, exponent and mantissa must have shapes that broadcast, got "
            f"{tuple(sign.shape)}, {tuple(exponent.shape)}, {tuple(mantissa.shape)}") from None
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


def _check_field(t, name: str, high: int) -> torch.Tensor:
    """An integer bit field (tensor or int) with values in [0, high], as an int64 tensor."""
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"{name} must be an integer tensor or an int, got {type(t).__name__}")
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {t.dtype}")
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > high):
        raise ValueError(f"{name} must hold values in [0, {high}], got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


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
    """Round ``x`` to the nearest number of ``fmt``, ties to even (eqs. 5-7).

    x: any shape, fp32 (or fp16/bf16, which fp32 holds exactly). Returns fp32
    of the same shape, holding values of ``fmt`` exactly: bit-exact with torch's
    casts to float16, bfloat16, float8_e4m3fn and float8_e5m2. Subnormals use the
    fixed spacing 2^(emin - m); -0 stays -0; NaN stays NaN. Numbers whose rounding
    exceeds ``fmt.max`` (and +-inf) become +-max when ``saturate``, else +-inf
    (NaN for a format without inf). ``saturate=None`` takes the format's
    convention, as torch does: fn formats saturate, IEEE formats overflow to inf.
    """
    _check_values(x)
    _check_format(fmt)
    if saturate is None:
        saturate = fmt.finite
    check_bool(saturate, "saturate")  # a string such as "no" would be truthy
    xd = x.double()
    a = xd.abs()
    spacing = _pow2(_exponent(a, fmt) - fmt.mantissa_bits)  # ulp at a (eq. 5)
    # torch.round rounds half to even (eq. 6); a / spacing is exact
    r = torch.round(a / spacing) * spacing
    # also a = inf; the rounding of eq. 6 is unbounded above (eq. 7)
    overflow = r > fmt.max
    beyond = fmt.max if saturate else (math.inf if fmt.has_inf else math.nan)
    r = torch.where(overflow, beyond, r)
    r = torch.where(torch.isnan(a), math.nan, r)
    return torch.copysign(r, xd).float()


def ulp(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """The spacing of ``fmt``'s numbers at x (eq. 5), float64; 2^(emin - m) below the normals."""
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
