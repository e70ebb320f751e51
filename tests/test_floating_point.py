"""lib/floating_point.py: formats vs torch.finfo, rounding bit-exact vs torch's casts, the fused
unscale-and-check kernel vs its reference vs PyTorch's own op, DynamicLossScaler vs GradScaler."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lib.floating_point as fp
from lib.floating_point import (
    FORMATS,
    DynamicLossScaler,
    FloatFormat,
    _unscale_and_check_reference,
    _unscale_and_check_triton,
    all_values,
    compose,
    decompose,
    encode,
    format_of,
    neighbours,
    round_to_format,
    ulp,
    unscale_and_check_,
    update_scale,
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


# ------------------------------------------------------------- fused unscale and inf/NaN check


def make_grads(sizes, dtypes, seed=0, scale=1000.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g) * scale).to(d) for n, d in zip(sizes, dtypes, strict=True)]


def run_all_three(grads, inv_scale=2.0**-10, found=0.0):
    """(grads, found_inf) after the kernel, the reference and PyTorch's own fused op."""
    inv = torch.tensor(inv_scale)
    results = []
    for fn in (_unscale_and_check_triton, _unscale_and_check_reference, None):
        gs, f = [t.clone() for t in grads], torch.tensor(found)
        if fn is None:  # the oracle takes one dtype per call
            for dtype in {t.dtype for t in gs}:
                torch._amp_foreach_non_finite_check_and_unscale_(
                    [t for t in gs if t.dtype == dtype], f, inv)
        else:
            fn(gs, f, inv)
        results.append((gs, f.item()))
    return results


def assert_results_equal(results):
    (g0, f0), *rest = results
    for g, f in rest:
        assert f == f0
        for a, b in zip(g0, g, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


SIZES = [1, 17, 2048, fp.CHUNK, fp.CHUNK + 1, 2 * fp.CHUNK + 999, 3, 0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16] * 3


@pytest.mark.parametrize("poison", [None, ("inf", 5, -1), ("-inf", 2, 0), ("nan", 1, 7)])
def test_kernel_reference_and_torch_agree(poison):
    grads = make_grads(SIZES, DTYPES[: len(SIZES)])
    if poison:
        value, i, pos = poison
        grads[i][pos] = float(value)
    results = run_all_three(grads)
    assert_results_equal(results)
    assert results[0][1] == (1.0 if poison else 0.0)


@settings(max_examples=10, deadline=None)
@given(specs=st.lists(st.tuples(st.integers(0, 40000), st.sampled_from(range(3))),
                      min_size=1, max_size=6),
       bad=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.floats(0, 1),
                                          st.sampled_from([INF, -INF, math.nan]))),
       inv_exp=st.integers(-24, 4), seed=st.integers(0, 999))
def test_kernel_matches_reference_property(specs, bad, inv_exp, seed):
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    grads = make_grads([n for n, _ in specs], [dtypes[d] for _, d in specs], seed)
    if bad is not None and grads[bad[0] % len(grads)].numel():
        t = grads[bad[0] % len(grads)]
        t[int(bad[1] * (t.numel() - 1))] = bad[2]
    assert_results_equal(run_all_three(grads, inv_scale=2.0**inv_exp))


def test_non_contiguous_misaligned_and_multidimensional_grads():
    base = torch.randn(101)
    grads = [torch.randn(7, 9).t(), base[1:], torch.randn(3, 4, 5).to(torch.bfloat16),
             torch.randn(6, 6, dtype=torch.float16)[:, ::2]]
    grads[1][50] = INF
    assert_results_equal(run_all_three(grads))
    t = grads[0].clone()  # the caller's (non-contiguous) tensor is updated in place
    unscale_and_check_([t], torch.zeros(()), torch.tensor(0.5), backend="triton")
    assert torch.equal(t, grads[0] * 0.5)


def test_empty_list_and_empty_tensors_launch_nothing(monkeypatch):
    launches = []
    monkeypatch.setattr(fp, "_unscale_and_check_kernel", LaunchCounter(launches))
    found = torch.zeros(())
    assert unscale_and_check_([], found, torch.tensor(1.0), backend="triton") is found
    unscale_and_check_([torch.empty(0)], found, torch.tensor(1.0), backend="triton")
    assert found.item() == 0 and launches == []


class LaunchCounter:
    """Stands in for the kernel: counts launches and forwards them."""

    def __init__(self, launches, kernel=fp._unscale_and_check_kernel):
        self.launches, self.kernel = launches, kernel

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.kernel[grid]


def test_one_launch_for_many_tensors(monkeypatch):
    launches = []
    monkeypatch.setattr(fp, "_unscale_and_check_kernel", LaunchCounter(launches))
    grads = make_grads([5, 70000, 300, 1], [torch.float32, torch.bfloat16, torch.float16,
                                            torch.float32])
    unscale_and_check_(grads, torch.zeros(()), torch.tensor(0.25), backend="triton")
    assert launches == [(1 + 5 + 1 + 1,)]  # one launch, one program per chunk


def test_found_inf_is_not_reset():
    results = run_all_three(make_grads([10, 20], [torch.float32, torch.float16]), found=1.0)
    assert_results_equal(results)
    assert results[0][1] == 1.0


@pytest.mark.parametrize(
    "grads, found, inv, error, words",
    [
        (torch.randn(3), torch.zeros(()), torch.ones(()), TypeError, "grads must be a list"),
        ([torch.arange(3)], torch.zeros(()), torch.ones(()), TypeError, r"grads\[0\] must have"),
        ([torch.randn(3).to_sparse()], torch.zeros(()), torch.ones(()), ValueError, "sparse"),
        ([torch.randn(3), torch.randn(2, device="meta")], torch.zeros(()), torch.ones(()),
         ValueError, "grads must share one device"),
        ([torch.randn(3)], torch.zeros(2), torch.ones(()), ValueError, "found_inf must have"),
        ([torch.randn(3)], torch.zeros((), dtype=torch.float64), torch.ones(()), TypeError,
         "found_inf must have dtype"),
        ([torch.randn(3)], torch.zeros(()), torch.ones((), device="meta"), ValueError,
         "inv_scale must be on"),
        ([torch.randn(3)], torch.zeros(()), 0.5, TypeError, "inv_scale must be a torch.Tensor"),
    ],
)
def test_unscale_bad_input(grads, found, inv, error, words):
    with pytest.raises(error, match=words):
        unscale_and_check_(grads, found, inv)


def test_unscale_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        unscale_and_check_([torch.randn(2)], torch.zeros(()), torch.ones(()), backend="cuda")


# --------------------------------------------------------------------- scale update and scaler


@settings(max_examples=30, deadline=None)
@given(found=st.lists(st.booleans(), min_size=1, max_size=60), interval=st.integers(1, 5),
       growth=st.sampled_from([2.0, 1.5, 4.0]), backoff=st.sampled_from([0.5, 0.25, 0.9]),
       init_exp=st.integers(100, 127))
def test_update_scale_matches_torch_op(found, interval, growth, backoff, init_exp):
    """Against torch._amp_update_scale_, GradScaler's own update, including growth into inf."""
    ours = (torch.tensor(2.0**init_exp), torch.tensor(0, dtype=torch.int32))
    theirs = (torch.tensor(2.0**init_exp), torch.tensor(0, dtype=torch.int32))
    for f in found:
        flag = torch.tensor(float(f))
        update_scale(*ours, flag, growth, backoff, interval)
        torch._amp_update_scale_(*theirs, flag, growth, backoff, interval)
        assert ours[0].item() == theirs[0].item() and ours[1].item() == theirs[1].item()


def train_steps(scaler, model, optimizer, pattern, unscale_first=False):
    """One step per entry of pattern: False = finite gradients, True = an inf in the loss."""
    scales = []
    for k, bad in enumerate(pattern):
        optimizer.zero_grad()
        x = torch.full((4, 3), float(k % 5 + 1))
        loss = model(x).pow(2).mean() * (INF if bad else 1.0)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def twin_models():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    return (a, torch.optim.SGD(a.parameters(), lr=1e-3)), (b, torch.optim.SGD(b.parameters(),
                                                                             lr=1e-3))


@pytest.mark.parametrize("backend, unscale_first", [("torch", False), ("torch", True),
                                                    ("triton", False)])
def test_scale_trajectory_equals_gradscaler(backend, unscale_first):
    pattern = [False] * 7 + [True, True] + [False] * 4 + [True] + [False] * 9
    kwargs = dict(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    (m1, o1), (m2, o2) = twin_models()
    ours = train_steps(DynamicLossScaler(**kwargs, backend=backend), m1, o1, pattern,
                       unscale_first)
    theirs = train_steps(torch.amp.GradScaler("cpu", **kwargs), m2, o2, pattern, unscale_first)
    assert ours == theirs
    assert ours[6] == 2.0**12 and ours[8] == 2.0**10  # grew twice, then backed off twice
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)  # same skipped steps, same unscaled updates


@settings(max_examples=8, deadline=None)
@given(pattern=st.lists(st.booleans(), min_size=1, max_size=25), interval=st.integers(1, 4))
def test_scale_trajectory_property(pattern, interval):
    kwargs = dict(init_scale=2.0**12, growth_interval=interval, backoff_factor=0.25)
    (m1, o1), (m2, o2) = twin_models()
    ours = train_steps(DynamicLossScaler(**kwargs, backend="torch"), m1, o1, pattern)
    assert ours == train_steps(torch.amp.GradScaler("cpu", **kwargs), m2, o2, pattern)


def test_state_dict_round_trip_with_gradscaler():
    (m1, o1), (m2, o2) = twin_models()
    theirs = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    train_steps(theirs, m2, o2, [False, False])
    ours = DynamicLossScaler()
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict() == theirs.state_dict()
    assert train_steps(ours, m1, o1, [False, True]) == train_steps(theirs, m2, o2, [False, True])


def test_unscale_returns_found_inf_and_true_gradients():
    (model, opt), _ = twin_models()
    scaler = DynamicLossScaler(init_scale=2.0**8)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    found = scaler.unscale_(opt)
    assert found.item() == 0.0
    torch.testing.assert_close(model.weight.grad, torch.ones(2, 3), rtol=0, atol=0)


def test_scaler_misuse_raises():
    (model, opt), _ = twin_models()
    scaler = DynamicLossScaler()
    with pytest.raises(RuntimeError, match="before scale"):
        scaler.step(opt)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    with pytest.raises(RuntimeError, match="No inf checks"):
        scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="Closure"):
        scaler.step(opt, closure=lambda: 0)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
        scaler.step(opt)
    with pytest.raises(RuntimeError, match="after step"):
        scaler.unscale_(opt)
    with pytest.raises(TypeError, match="outputs must be a tensor"):
        scaler.scale(3.0)


def test_fp16_gradients_are_refused():
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = DynamicLossScaler()
    scaler.scale(model(torch.ones(1, 3, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="FP16 gradients"):
        scaler.unscale_(opt)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"init_scale": 0.0}, ValueError, "init_scale must be positive"),
        ({"init_scale": "big"}, TypeError, "init_scale must be a float"),
        ({"growth_factor": 1.0}, ValueError, "growth_factor must be > 1"),
        ({"backoff_factor": 1.0}, ValueError, "backoff_factor must be in"),
        ({"growth_interval": 0}, ValueError, "growth_interval must be at least 1"),
        ({"growth_interval": 2.5}, TypeError, "growth_interval must be an int"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
    ],
)
def test_scaler_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        DynamicLossScaler(**kwargs)


# ----------------------------------------------------------------------- bad input elsewhere


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: round_to_format(torch.arange(3), FORMATS["fp16"]), TypeError, "x must have dtype"),
        (lambda: round_to_format(torch.ones(2, dtype=torch.float64), FORMATS["fp16"]), TypeError,
         "x must have dtype"),
        (lambda: round_to_format([1.0], FORMATS["fp16"]), TypeError, "x must be a torch.Tensor"),
        (lambda: round_to_format(torch.ones(2), "fp16"), TypeError, "fmt must be a FloatFormat"),
        (lambda: round_to_format(torch.ones(2), FloatFormat("w", 9, 10)), ValueError,
         "wider range than fp32"),
        (lambda: FloatFormat("x", 1, 3), ValueError, "exponent_bits must be in"),
        (lambda: FloatFormat("x", 4, 0), ValueError, "mantissa_bits must be in"),
        (lambda: FloatFormat("x", 4.0, 3), TypeError, "exponent_bits must be an int"),
        (lambda: FloatFormat(3, 4, 3), TypeError, "name must be a str"),
        (lambda: decompose(torch.arange(3)), TypeError, "dtype must be one of"),
        (lambda: all_values(FORMATS["fp32"]), ValueError, "at most 16 bits"),
        (lambda: format_of(torch.int8), TypeError, "dtype must be one of"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()
