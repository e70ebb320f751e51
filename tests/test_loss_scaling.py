"""lib/loss_scaling.py: the fused unscale-and-check kernel vs its reference vs PyTorch's own
op, update_scale vs torch._amp_update_scale_, DynamicLossScaler vs GradScaler, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lib.loss_scaling as ls
from lib.loss_scaling import (
    DynamicLossScaler,
    _unscale_and_check_reference,
    _unscale_and_check_triton,
    launch_table,
    unscale_and_check_,
    update_scale,
)

INF = float("inf")


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


SIZES = [1, 17, 2048, ls.CHUNK, ls.CHUNK + 1, 2 * ls.CHUNK + 999, 3, 0]
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
    monkeypatch.setattr(ls, "_unscale_and_check_kernel", LaunchCounter(launches))
    found = torch.zeros(())
    assert unscale_and_check_([], found, torch.tensor(1.0), backend="triton") is found
    unscale_and_check_([torch.empty(0)], found, torch.tensor(1.0), backend="triton")
    assert found.item() == 0 and launches == []


class LaunchCounter:
    """Stands in for the kernel: counts launches and forwards them."""

    def __init__(self, launches, kernel=ls._unscale_and_check_kernel):
        self.launches, self.kernel = launches, kernel

    def __getitem__(self, grid):
        self.launches.append(grid)
        return self.kernel[grid]


def test_one_launch_for_many_tensors(monkeypatch):
    launches = []
    monkeypatch.setattr(ls, "_unscale_and_check_kernel", LaunchCounter(launches))
    grads = make_grads([5, 70000, 300, 1], [torch.float32, torch.bfloat16, torch.float16,
                                            torch.float32])
    unscale_and_check_(grads, torch.zeros(()), torch.tensor(0.25), backend="triton")
    assert launches == [(1 + 5 + 1 + 1,)]  # one launch, one program per chunk


def test_found_inf_is_not_reset():
    results = run_all_three(make_grads([10, 20], [torch.float32, torch.float16]), found=1.0)
    assert_results_equal(results)
    assert results[0][1] == 1.0


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


def test_launch_table_rows():
    grads = [torch.zeros(5), torch.zeros(2 * ls.CHUNK + 1, dtype=torch.bfloat16)]
    table, programs = launch_table(grads)
    assert programs == 1 + 3
    head = [grads[0].data_ptr(), 5, 0, grads[1].data_ptr(), 2 * ls.CHUNK + 1, 2]
    assert table[:6].tolist() == head  # (address, numel, dtype code) per tensor
    assert table[6:].tolist() == [0, 0, 1, 0, 1, ls.CHUNK, 1, 2 * ls.CHUNK]  # (tensor, start)


# ------------------------------------------------------------------------------ bad input


def scalar(value=0.0, dtype=torch.float32):
    return torch.tensor(value, dtype=dtype)


def tracker(value=0):
    return torch.tensor(value, dtype=torch.int32)


GOOD_STATE = {"scale": 8.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3,
              "_growth_tracker": 1}


@pytest.mark.parametrize(
    "call, error, words",
    [
        # unscale_and_check_: wrong type, dtype, device, shape, sparse, unknown backend
        (lambda: unscale_and_check_(torch.randn(3), scalar(), scalar(1.0)), TypeError,
         "grads must be a list"),
        (lambda: unscale_and_check_("grads", scalar(), scalar(1.0)), TypeError,
         "grads must be a list"),
        (lambda: unscale_and_check_([torch.arange(3)], scalar(), scalar(1.0)), TypeError,
         r"grads\[0\] must have dtype"),
        (lambda: unscale_and_check_([[1.0]], scalar(), scalar(1.0)), TypeError,
         r"grads\[0\] must be a torch.Tensor"),
        (lambda: unscale_and_check_([torch.randn(3).to_sparse()], scalar(), scalar(1.0)),
         ValueError, "sparse"),
        (lambda: unscale_and_check_([torch.randn(3), torch.randn(2, device="meta")], scalar(),
                                    scalar(1.0)), ValueError, "grads must share one device"),
        (lambda: unscale_and_check_([torch.randn(3)], torch.zeros(2), scalar(1.0)), ValueError,
         "found_inf must have exactly one element"),
        (lambda: unscale_and_check_([torch.randn(3)], torch.zeros(0), scalar(1.0)), ValueError,
         "found_inf must have exactly one element"),
        (lambda: unscale_and_check_([torch.randn(3)], scalar(dtype=torch.float64), scalar(1.0)),
         TypeError, "found_inf must have dtype"),
        (lambda: unscale_and_check_([torch.randn(3)], scalar(), scalar(1.0).to("meta")),
         ValueError, "inv_scale must be on the device"),
        (lambda: unscale_and_check_([torch.randn(3)], scalar(), 0.5), TypeError,
         "inv_scale must be a torch.Tensor"),
        (lambda: unscale_and_check_([torch.randn(2)], scalar(), scalar(1.0), backend="cuda"),
         ValueError, "backend must be one of"),
        (lambda: unscale_and_check_([], scalar(), scalar(1.0), backend="gpu"), ValueError,
         "backend must be one of"),
        # launch_table: empty, non-contiguous, sizes
        (lambda: launch_table([]), ValueError, "grads must hold at least one tensor"),
        (lambda: launch_table([torch.randn(4, 4).t()]), ValueError, "contiguous"),
        (lambda: launch_table([torch.randn(4)], chunk=0), ValueError, "chunk must be at least 1"),
        (lambda: launch_table([torch.randn(4)], chunk=2.5), TypeError, "chunk must be an int"),
        # update_scale: a Python float, wrong dtypes, devices, swapped factors, zero interval
        (lambda: update_scale(1024.0, tracker(), scalar(), 2.0, 0.5, 3), TypeError,
         "scale must be a torch.Tensor"),
        (lambda: update_scale(scalar(8.0), tracker().long(), scalar(), 2.0, 0.5, 3), TypeError,
         "growth_tracker must have dtype"),
        (lambda: update_scale(scalar(8.0), tracker(), 0.0, 2.0, 0.5, 3), TypeError,
         "found_inf must be a torch.Tensor"),
        (lambda: update_scale(scalar(8.0), tracker().to("meta"), scalar(), 2.0, 0.5, 3),
         ValueError, "growth_tracker must be on the device"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), 0.5, 2.0, 3), ValueError,
         "growth_factor must be greater than 1"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), 2.0, 1.5, 3), ValueError,
         "backoff_factor must be less than 1"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), 2.0, 0.5, 0), ValueError,
         "growth_interval must be at least 1"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), 2.0, 0.5, 2.0), TypeError,
         "growth_interval must be an int"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), "2", 0.5, 3), TypeError,
         "growth_factor must be a real number"),
        (lambda: update_scale(scalar(8.0), tracker(), scalar(), math.nan, 0.5, 3), ValueError,
         "growth_factor must be finite"),
        # DynamicLossScaler(): zero, negative, NaN, inf, strings, floats, swapped, unknown names
        (lambda: DynamicLossScaler(init_scale=0.0), ValueError, "init_scale must be greater"),
        (lambda: DynamicLossScaler(init_scale=-8.0), ValueError, "init_scale must be greater"),
        (lambda: DynamicLossScaler(init_scale=math.inf), ValueError, "init_scale must be finite"),
        (lambda: DynamicLossScaler(init_scale=1e39), ValueError, "init_scale must fit in fp32"),
        (lambda: DynamicLossScaler(init_scale=math.nan), ValueError, "init_scale must be finite"),
        (lambda: DynamicLossScaler(init_scale="big"), TypeError, "init_scale must be a real"),
        (lambda: DynamicLossScaler(growth_factor=1.0), ValueError, "growth_factor must be greater"),
        (lambda: DynamicLossScaler(backoff_factor=1.0), ValueError, "backoff_factor must be less"),
        (lambda: DynamicLossScaler(growth_factor=0.5, backoff_factor=2.0), ValueError,
         "growth_factor must be greater than 1"),
        (lambda: DynamicLossScaler(growth_interval=0), ValueError,
         "growth_interval must be at least 1"),
        (lambda: DynamicLossScaler(growth_interval=2.5), TypeError,
         "growth_interval must be an int"),
        (lambda: DynamicLossScaler(backend="gpu"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def scaled_once():
    (model, opt), _ = twin_models()
    scaler = DynamicLossScaler(init_scale=2.0**8)
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    return scaler, opt


@pytest.mark.parametrize(
    "new_scale, error, words",
    [
        (0.0, ValueError, "new_scale must be greater than 0"),
        (-4.0, ValueError, "new_scale must be greater than 0"),
        (math.nan, ValueError, "new_scale must be finite"),
        (math.inf, ValueError, "new_scale must be finite"),
        ("1024", TypeError, "new_scale must be a real number"),
        (torch.tensor(0.0), ValueError, "new_scale must be greater than 0"),
        (torch.tensor(2.0**60).double(), TypeError, "new_scale must have dtype"),
        (torch.ones(2), ValueError, "new_scale must have exactly one element"),
    ],
)
def test_update_refuses_a_scale_that_would_make_every_step_nan(new_scale, error, words):
    """update(new_scale=0.0) used to be accepted: then 1/scale = inf, found_inf stayed 0 and
    the optimizer stepped the weights to NaN."""
    scaler, opt = scaled_once()
    scaler.step(opt)
    with pytest.raises(error, match=words):
        scaler.update(new_scale=new_scale)
    assert scaler.get_scale() == 2.0**8  # unchanged
    scaler.update(new_scale=torch.tensor(2.0**4))
    assert scaler.get_scale() == 2.0**4


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"scale": -1.0}, ValueError, r"state\['scale'\] must be greater than 0"),
        ({"scale": 0.0}, ValueError, r"state\['scale'\] must be greater than 0"),
        ({"growth_interval": 0}, ValueError, "growth_interval must be at least 1"),
        ({"growth_factor": 0.5, "backoff_factor": 2.0}, ValueError, "growth_factor must be"),
        ({"backoff_factor": 0.0}, ValueError, "backoff_factor must be greater than 0"),
        ({"_growth_tracker": -1}, ValueError, r"state\['_growth_tracker'\] must be at least 0"),
        ({"scale": "8"}, TypeError, r"state\['scale'\] must be a real number"),
    ],
)
def test_load_state_dict_refuses_what_the_constructor_refuses(change, error, words):
    scaler, _ = scaled_once()
    before = scaler.state_dict()
    with pytest.raises(error, match=words):
        scaler.load_state_dict(GOOD_STATE | change)
    assert scaler.state_dict() == before  # nothing half-loaded
    scaler.load_state_dict(GOOD_STATE)
    assert scaler.state_dict() == GOOD_STATE


def test_load_state_dict_needs_a_whole_dict():
    scaler = DynamicLossScaler()
    with pytest.raises(TypeError, match="state must be a dict"):
        scaler.load_state_dict([("scale", 8.0)])
    with pytest.raises(ValueError, match=r"state is missing the key\(s\) \['_growth_tracker'\]"):
        scaler.load_state_dict({k: v for k, v in GOOD_STATE.items() if k != "_growth_tracker"})


def test_scaler_refuses_what_is_not_a_loss_or_an_optimizer():
    scaler, opt = scaled_once()
    with pytest.raises(TypeError, match="outputs must be a floating-point tensor"):
        scaler.scale(torch.tensor(3))
    with pytest.raises(TypeError, match="outputs must be a tensor"):
        scaler.scale(3.0)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        scaler.unscale_(opt.param_groups)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        scaler.step("sgd")
