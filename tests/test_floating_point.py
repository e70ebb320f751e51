"""lib/floating_point.py: formats vs torch.finfo, rounding bit-exact vs torch's casts, bit
fields vs torch's stored codes, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.floating_point import (
    FORMATS,
    FloatFormat,
    all_values,
    compose,
    decompose,
    encode,
    format_of,
    neighbours,
    round_to_format,
    ulp,
)

CAST_DTYPES = [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
INT_VIEW = {16: torch.int16, 8: torch.uint8}
INF = float("inf")


def assert_same_as_cast(x: torch.Tensor, dtype: torch.dtype) -> None:
    """round_to_format(x) and x.to(dtype) hold the same bits (NaN: same positions)."""
    fmt = format_of(dtype)
    ours, theirs = round_to_format(x, fmt), x.to(dtype)
    nan = torch.isnan(theirs.float())
    assert torch.equal(torch.isnan(ours), nan)
    a = ours.to(dtype).view(INT_VIEW[fmt.bits])[~nan]
    b = theirs.view(INT_VIEW[fmt.bits])[~nan]
    if not torch.equal(a, b):
        i = (a != b).nonzero()[0, 0]
        raise AssertionError(f"{dtype}: x={x[~nan][i].item()!r} ours={ours[~nan][i].item()!r} "
                             f"torch={theirs[~nan][i].float().item()!r}")
    assert torch.equal(ours[~nan], theirs.float()[~nan])  # same values, as fp32 too


# ------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.dtype is not None])
def test_formats_match_torch_finfo(name):
    fmt = FORMATS[name]
    info = torch.finfo(fmt.dtype)
    assert (fmt.max, fmt.min_normal, fmt.eps, fmt.bits) == (
        info.max, info.smallest_normal, info.eps, info.bits)
    int_dtype = {64: torch.int64, 32: torch.int32, 16: torch.int16, 8: torch.uint8}[fmt.bits]
    assert fmt.min_subnormal == torch.tensor(1, dtype=int_dtype).view(fmt.dtype).item()


def test_tf32_and_named_numbers():
    tf32 = FORMATS["tf32"]
    assert (tf32.bits, tf32.bias, tf32.eps) == (19, 127, 2**-10)
    assert tf32.min_normal == torch.finfo(torch.float32).smallest_normal
    assert tf32.max == 2**127 * (2 - 2**-10)
    assert FORMATS["fp16"].max == 65504 and FORMATS["fp16"].min_subnormal == 2**-24
    assert FORMATS["fp8_e4m3fn"].max == 448 and FORMATS["fp8_e5m2"].max == 57344


@settings(max_examples=30, deadline=None)
@given(e=st.integers(2, 8), m=st.integers(1, 7), finite=st.booleans())
def test_derived_numbers_match_enumeration(e, m, finite):
    """For invented formats of <= 16 bits, the formulas equal what enumerating all codes gives."""
    fmt = FloatFormat("invented", e, m, finite=finite)
    v = all_values(fmt)
    finite_v = v[torch.isfinite(v)]
    positive = finite_v[finite_v > 0].unique()
    assert finite_v.max().item() == fmt.max
    assert positive[0].item() == fmt.min_subnormal
    assert positive[2**m - 1].item() == fmt.min_normal  # 2^m - 1 subnormals come first
    one = (positive == 1).nonzero()[0, 0]
    assert positive[one + 1].item() - 1 == fmt.eps
    assert torch.isinf(v).sum().item() == (0 if finite else 2)
    assert torch.isnan(v).sum().item() == (2 if finite else 2 * (2**m - 1))


# --------------------------------------------------------------------------------- bit fields


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32] + CAST_DTYPES)
def test_decompose_fields(dtype):
    fmt = format_of(dtype)
    x = torch.tensor([1.0, -2.0, 0.0, -0.0, INF]).to(dtype)
    sign, exponent, mantissa = decompose(x)
    top = 2**fmt.exponent_bits - 1
    assert sign.tolist() == [0, 1, 0, 1, 0]
    assert exponent[:4].tolist() == [fmt.bias, fmt.bias + 1, 0, 0]
    assert mantissa[:4].tolist() == [0, 0, 0, 0]
    if fmt.finite:  # inf saturates to max in the fn format: all-ones but the last bit
        assert (exponent[4].item(), mantissa[4].item()) == (top, 2**fmt.mantissa_bits - 2)
    else:
        assert (exponent[4].item(), mantissa[4].item()) == (top, 0)
    assert torch.equal(compose(sign, exponent, mantissa, fmt), x.double())


@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_every_code_composes_to_torch_value_and_encodes_back(dtype):
    fmt = format_of(dtype)
    codes = torch.arange(2**fmt.bits).to(INT_VIEW[fmt.bits])
    stored = codes.view(dtype)
    values = all_values(fmt)
    nan = torch.isnan(values)
    assert torch.equal(nan, torch.isnan(stored.double()))
    assert torch.equal(values[~nan], stored.double()[~nan])
    assert torch.equal(torch.signbit(values[~nan]), torch.signbit(stored.double()[~nan]))
    ours, theirs = encode(stored.float(), fmt), decompose(stored)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a[~nan], b[~nan])


# ----------------------------------------------------------------------------------- rounding


@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_rounding_exhaustive_over_neighbours_and_midpoints(dtype):
    """Every value of the format, every midpoint between neighbours, and the fp32 numbers one
    step either side of each (the boundaries of rounding), plus the specials."""
    fmt = format_of(dtype)
    v = all_values(fmt)
    grid = v[torch.isfinite(v)].unique()  # sorted; +0 and -0 merged
    beyond = torch.tensor([fmt.max * 1.5, fmt.max * 2, 1e30, 3.4e38], dtype=torch.float64)
    points = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, beyond, -beyond]).float()  # exact
    x = torch.cat([points, torch.nextafter(points, torch.tensor(INF)),
                   torch.nextafter(points, torch.tensor(-INF)),
                   torch.tensor([0.0, -0.0, INF, -INF, math.nan, -math.nan])])
    assert_same_as_cast(x, dtype)


@pytest.mark.parametrize("dtype", CAST_DTYPES)
def test_rounding_every_exponent_and_kept_bits_with_boundary_tails(dtype):
    """All fp32 numbers whose dropped low bits are 0, 1, half - 1, half, half + 1 or all ones,
    for every sign, exponent and kept mantissa: every tie and near-tie, in every binade."""
    fmt = format_of(dtype)
    dropped = 23 - fmt.mantissa_bits
    half = 1 << (dropped - 1)
    tails = torch.tensor([0, 1, half - 1, half, half + 1, 2 * half - 1], dtype=torch.int64)
    heads = torch.arange(2 ** (32 - dropped), dtype=torch.int64) << dropped
    bits = (heads[:, None] | tails[None, :]).flatten()
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    assert_same_as_cast(bits.view(torch.float32), dtype)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_rounding_random_bit_patterns(seed):
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (1 << 15,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    for dtype in CAST_DTYPES:
        assert_same_as_cast(x, dtype)
        assert_same_as_cast(x * 2.0**-100, dtype)  # into the subnormal ranges


def test_tf32_matches_integer_rounding():
    """TF32 has no torch dtype: compare with round-to-nearest-even on the fp32 bits."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 0x7F7F0000, (1 << 16,), generator=g, dtype=torch.int64)
    lsb = (bits >> 13) & 1
    expected = ((bits + 0xFFF + lsb) & ~0x1FFF).to(torch.int32).view(torch.float32)
    x = bits.to(torch.int32).view(torch.float32)
    assert torch.equal(round_to_format(x, FORMATS["tf32"]), expected)
    assert torch.equal(round_to_format(-x, FORMATS["tf32"]), -expected)


def test_wide_formats_are_the_identity_on_fp32():
    x = torch.randint(-(2**31), 2**31, (4096,), dtype=torch.int64).to(torch.int32)
    x = x.view(torch.float32)
    x = x[~torch.isnan(x)]
    for name in ("fp32", "fp64"):
        assert torch.equal(round_to_format(x, FORMATS[name]).view(torch.int32), x.view(torch.int32))


def test_overflow_conventions():
    x = torch.tensor([500.0, -1e9, INF, -INF, 448.0, math.nan])
    e4m3 = FORMATS["fp8_e4m3fn"]
    assert round_to_format(x, e4m3)[:5].tolist() == [448, -448, 448, -448, 448]  # as torch
    nonsat = round_to_format(x, e4m3, saturate=False)
    assert torch.isnan(nonsat[:4]).all() and nonsat[4] == 448
    fp16 = FORMATS["fp16"]
    y = torch.tensor([65519.0, 65520.0, -7e4, INF])  # 65520 is the tie above max: to inf
    assert round_to_format(y, fp16).tolist() == [65504, INF, -INF, INF]
    assert round_to_format(y, fp16, saturate=True).tolist() == [65504, 65504, -65504, 65504]
    assert torch.isnan(round_to_format(x, fp16, saturate=True)[5])


def test_signed_zero_and_underflow():
    fp16 = FORMATS["fp16"]
    x = torch.tensor([2.0**-25, 2.0**-25 * 1.0000001, -(2.0**-26), 3 * 2.0**-25, -0.0])
    r = round_to_format(x, fp16)
    assert r.tolist() == [0.0, 2.0**-24, -0.0, 2 * 2.0**-24, -0.0]  # ties to even, even at 0
    assert torch.signbit(r).tolist() == [False, False, True, False, True]


@settings(max_examples=40, deadline=None)
@given(e=st.integers(2, 8), m=st.integers(1, 23), finite=st.booleans(),
       values=st.lists(st.floats(-1e30, 1e30), min_size=2, max_size=40))
def test_rounding_properties_on_invented_formats(e, m, finite, values):
    """Idempotent, monotone, error at most half an ulp (below the overflow threshold)."""
    fmt = FloatFormat("invented", e, m, finite=finite)
    x = torch.tensor(sorted(values), dtype=torch.float32)
    r = round_to_format(x, fmt)
    assert torch.equal(round_to_format(r, fmt), r)
    finite_r = r[torch.isfinite(r)]
    assert (finite_r[1:] >= finite_r[:-1]).all()
    inside = x.abs() <= fmt.max
    err = (r.double() - x.double()).abs()[inside]
    assert (err <= ulp(x, fmt)[inside] / 2).all()


def test_ulp_is_the_spacing():
    fp16 = FORMATS["fp16"]
    x = torch.tensor([0.0, -0.0, 2.0**-30, 2.0**-14, 1.0, 1.99, 2048.0, 65504.0])
    expected = [2.0**-24] * 4 + [2.0**-10, 2.0**-10, 2.0, 32.0]
    assert ulp(x, fp16).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_neighbours_are_the_adjacent_codes(dtype):
    fmt = format_of(dtype)
    grid = all_values(fmt)
    grid = grid[torch.isfinite(grid)].unique()
    below, above = neighbours(grid.float(), fmt)
    assert torch.equal(below[1:], grid[:-1]) and torch.equal(above[:-1], grid[1:])
    if fmt.has_inf:
        assert below[0] == -INF and above[-1] == INF
    else:  # the fn format: the codes beyond +-max are NaN
        assert below[0].isnan() and above[-1].isnan()
    x = torch.tensor([1.1, -1.1, 0.0])
    b, a = neighbours(x, fmt)
    r = round_to_format(x, fmt).double()
    assert (b < r).all() and (r < a).all()


# ------------------------------------------------------------------------------ bad input

FP16 = FORMATS["fp16"]
ONES = torch.ones(3, dtype=torch.long)


@pytest.mark.parametrize(
    "call, error, words",
    [
        # wrong type and dtype of x, named x
        (lambda: round_to_format(torch.arange(3), FP16), TypeError, "x must have dtype"),
        (lambda: round_to_format(torch.ones(2, dtype=torch.float64), FP16), TypeError,
         "x must have dtype"),
        (lambda: round_to_format([1.0], FP16), TypeError, "x must be a torch.Tensor"),
        (lambda: ulp(torch.arange(3), FP16), TypeError, "x must have dtype"),
        (lambda: encode("1.5", FP16), TypeError, "x must be a torch.Tensor"),
        (lambda: neighbours(torch.ones(2, dtype=torch.int32), FP16), TypeError,
         "x must have dtype"),
        (lambda: decompose(torch.arange(3)), TypeError, "x must have dtype"),
        (lambda: decompose(torch.ones(2, dtype=torch.complex64)), TypeError, "x must have dtype"),
        (lambda: decompose(1.5), TypeError, "x must be a torch.Tensor"),
        # a format given by name, or of the wrong kind
        (lambda: round_to_format(torch.ones(2), "fp16"), TypeError, "fmt must be a FloatFormat"),
        (lambda: compose(0, 15, 0, "fp16"), TypeError, "fmt must be a FloatFormat"),
        (lambda: all_values(None), TypeError, "fmt must be a FloatFormat"),
        (lambda: round_to_format(torch.ones(2), FloatFormat("w", 9, 10)), ValueError,
         "wider range than fp32"),
        (lambda: all_values(FORMATS["fp32"]), ValueError, "at most 16 bits"),
        # a string where a bool belongs: "no" is truthy
        (lambda: round_to_format(torch.ones(2), FP16, saturate="no"), TypeError,
         "saturate must be a bool"),
        (lambda: round_to_format(torch.ones(2), FP16, saturate=0), TypeError,
         "saturate must be a bool"),
        # compose: fields out of range, not integers, shapes that do not broadcast
        (lambda: compose(2, 15, 0, FP16), ValueError, r"sign must hold values in \[0, 1\]"),
        (lambda: compose(0, 32, 0, FP16), ValueError, r"exponent must hold values in \[0, 31\]"),
        (lambda: compose(0, -1, 0, FP16), ValueError, "exponent must hold values in"),
        (lambda: compose(0, 15, 1024, FP16), ValueError,
         r"mantissa must hold values in \[0, 1023\]"),
        (lambda: compose(0, 15, torch.tensor([0.5]), FP16), TypeError,
         "mantissa must hold integers"),
        (lambda: compose(0, "15", 0, FP16), TypeError, "exponent must be an integer tensor"),
        (lambda: compose(0, 15.0, 0, FP16), TypeError, "exponent must be an integer tensor"),
        (lambda: compose(ONES[:2] * 0, ONES * 15, ONES * 0, FP16), ValueError,
         "must have shapes that broadcast"),
        # FloatFormat fields: sizes out of range, floats, strings, bools, unknown dtype
        (lambda: FloatFormat("x", 1, 3), ValueError, "exponent_bits must be at least 2"),
        (lambda: FloatFormat("x", 12, 3), ValueError, "exponent_bits must be at most 11"),
        (lambda: FloatFormat("x", 4, 0), ValueError, "mantissa_bits must be at least 1"),
        (lambda: FloatFormat("x", 4, -3), ValueError, "mantissa_bits must be at least 1"),
        (lambda: FloatFormat("x", 4.0, 3), TypeError, "exponent_bits must be an int"),
        (lambda: FloatFormat("x", "4", 3), TypeError, "exponent_bits must be an int"),
        (lambda: FloatFormat("x", 4, 3, finite="yes"), TypeError, "finite must be a bool"),
        (lambda: FloatFormat("x", 4, 3, dtype="float16"), TypeError, "dtype must be a torch"),
        (lambda: FloatFormat(3, 4, 3), TypeError, "name must be a str"),
        (lambda: format_of(torch.int8), TypeError, "dtype must be one of"),
        (lambda: format_of("float16"), TypeError, "dtype must be a torch.dtype"),
        (lambda: format_of([torch.float16]), TypeError, "dtype must be a torch.dtype"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_empty_and_special_values_pass_through():
    empty = torch.empty(0)
    assert round_to_format(empty, FP16).shape == (0,)
    assert all(f.shape == (0,) for f in encode(empty, FP16))
    assert compose(torch.empty(0, dtype=torch.long), 0, 0, FP16).shape == (0,)
    r = round_to_format(torch.tensor([math.nan, INF, -INF]), FP16)
    assert r[0].isnan() and r[1:].tolist() == [INF, -INF]
