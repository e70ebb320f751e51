"""lib/checkpointing.py: gradients vs no checkpointing vs torch.utils.checkpoint, the memory
model vs bytes counted with lib.memory's saved-tensor hooks, forward calls, schedules, bad
input."""

import math

import pytest
import torch
import torch.utils.checkpoint as torch_cp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib.checkpointing import (
    checkpoint,
    checkpoint_recursive,
    checkpoint_sequential,
    forward_count,
    mlp_chain,
    optimal_segments,
    peak_activations,
    recursive_schedule,
    segment_schedule,
    segment_sizes,
)
from lib.memory import forward_calls, peak_memory, saved_activation_bytes

WIDTH, BATCH = 8, 5
UNIT = WIDTH * BATCH * 4  # bytes of one fp32 (BATCH, WIDTH) activation


def gradients(run, model, x, seed=1):
    """Gradients of sum(run(x)**2) w.r.t. x (if it needs grad) and every parameter, and the
    next random number: a checkpoint must leave the RNG where the plain forward leaves it."""
    torch.manual_seed(seed)
    leaves = ([x] if x.requires_grad else []) + list(model.parameters())
    grads = torch.autograd.grad(run(x).pow(2).sum(), leaves)
    return list(grads) + [torch.rand(3)]


def assert_identical(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


# ----------------------------------------------------------------------------- gradients


def test_checkpoint_with_dropout_equals_plain_and_torch():
    model = mlp_chain(6, WIDTH, p_drop=0.4).train()
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    plain = gradients(model, model, x)
    ours = gradients(lambda x: checkpoint(model, x), model, x)
    oracle = gradients(lambda x: torch_cp.checkpoint(model, x, use_reentrant=False), model, x)
    assert_identical(ours, plain)
    assert_identical(oracle, plain)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 12), data=st.data(), seed=st.integers(0, 2**16))
def test_checkpoint_sequential_any_segments_equals_plain_and_torch(n, data, seed):
    k = data.draw(st.integers(1, n))
    torch.manual_seed(seed)
    model = mlp_chain(n, WIDTH, p_drop=0.3, seed=seed).train()
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    plain = gradients(model, model, x, seed)
    ours = gradients(lambda x: checkpoint_sequential(model, k, x), model, x, seed)
    oracle = gradients(
        lambda x: torch_cp.checkpoint_sequential(model, k, x, use_reentrant=False), model, x, seed)
    assert_identical(ours, plain)
    assert_identical(oracle, plain)


def test_without_preserved_rng_state_dropout_gradients_differ():
    """The reason for preserve_rng_state: a new dropout mask in the recomputation."""
    model = mlp_chain(4, WIDTH, p_drop=0.5).train()
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    plain = gradients(model, model, x)
    wrong = gradients(lambda x: checkpoint(model, x, preserve_rng_state=False), model, x)
    assert not torch.equal(plain[0], wrong[0])


def test_keyword_and_non_tensor_arguments():
    w = torch.randn(WIDTH, WIDTH, requires_grad=True)
    b = torch.randn(WIDTH, requires_grad=True)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)

    def fn(x, w, power, *, bias, act="tanh", scale=1.0):
        y = getattr(torch, act)(x @ w + bias) * scale
        return y.pow(power)

    def grads(run):
        out = run(x, w, 3, bias=b, act="sigmoid", scale=0.5)
        return torch.autograd.grad(out.sum(), [x, w, b])

    assert_identical(grads(lambda *a, **k: checkpoint(fn, *a, **k)), grads(fn))


def test_several_outputs_and_non_tensor_outputs():
    x = torch.randn(BATCH, WIDTH, requires_grad=True)

    def fn(x):
        h = torch.tanh(x)
        return h.exp(), (h * x).sum(0), "label", 7

    def grads(run):
        a, b, label, seven = run(x)
        assert (label, seven) == ("label", 7)
        return torch.autograd.grad(a.sum() + b.pow(2).sum(), x)

    assert_identical(grads(lambda x: checkpoint(fn, x)), grads(fn))


def test_inputs_that_do_not_require_grad_still_train_the_parameters():
    model = mlp_chain(5, WIDTH, p_drop=0.2).train()
    x = torch.randn(BATCH, WIDTH)  # data: no grad
    plain = gradients(model, model, x)
    assert_identical(gradients(lambda x: checkpoint(model, x), model, x), plain)
    assert_identical(gradients(lambda x: checkpoint_sequential(model, 3, x), model, x), plain)


def test_integer_tensor_arguments():
    x = torch.randn(10, WIDTH, requires_grad=True)
    index = torch.tensor([3, 1, 4, 1, 5])

    def fn(x, index):
        return torch.tanh(x[index]).sum()

    (g,) = torch.autograd.grad(checkpoint(fn, x, index), x)
    (g0,) = torch.autograd.grad(fn(x, index), x)
    assert torch.equal(g, g0)


def test_recursive_checkpoint_equals_plain():
    model = mlp_chain(11, WIDTH, p_drop=0.3).train()
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    assert_identical(gradients(lambda x: checkpoint_recursive(model, x), model, x),
                     gradients(model, model, x))


def test_autocast_is_replayed_in_the_recomputation():
    model = mlp_chain(3, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)

    def run(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x)
        assert out.dtype == torch.bfloat16
        return gradients(lambda _: out.float(), model, x)

    assert_identical(run(lambda x: checkpoint(model, x)), run(model))


def test_backward_twice_with_retain_graph():
    model = mlp_chain(4, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    loss = checkpoint_sequential(model, 2, x).sum()
    g1 = torch.autograd.grad(loss, x, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, x)[0]
    assert torch.equal(g1, g2)


def test_no_grad_runs_fn_plainly():
    model = mlp_chain(3, WIDTH)
    x = torch.randn(BATCH, WIDTH)
    with torch.no_grad():
        assert torch.equal(checkpoint(model, x), model(x))


def test_a_function_that_changes_between_runs_is_detected():
    calls = []

    def fn(x):
        calls.append(1)
        return x.exp() if len(calls) == 1 else x.exp().exp()  # more saved tensors the 2nd time

    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="recomputation saved"):
        checkpoint(fn, x).sum().backward()


# ----------------------------------------------------------------------------- memory and calls


@pytest.mark.parametrize("n", [1, 7, 16])
def test_saved_bytes_equal_the_model_for_every_k(n):
    """Exactly (k - 1) + n // k activations at the peak (eq. 4), as the schedule predicts."""
    model = mlp_chain(n, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    for k in range(1, n + 1):
        measured = saved_activation_bytes(
            lambda x, k=k: checkpoint_sequential(model, k, x), x)
        assert measured == peak_activations(n, k) * UNIT == segment_schedule(n, k).peak * UNIT


def test_64_layers_k8_needs_at_most_a_third():
    model = mlp_chain(64, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    plain = saved_activation_bytes(model, x)
    k8 = saved_activation_bytes(lambda x: checkpoint_sequential(model, 8, x), x)
    assert plain == 64 * UNIT
    assert k8 == 15 * UNIT and 3 * k8 <= plain


@pytest.mark.parametrize("n", [2, 5, 16, 21])
def test_recursive_bytes_and_calls_equal_its_schedule(n):
    model = mlp_chain(n, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    run = lambda x: checkpoint_recursive(model, x)
    schedule = recursive_schedule(n)
    assert saved_activation_bytes(run, x) == schedule.peak * UNIT
    per_layer = [sum(s.op != "backward" and s.layer == i for s in schedule.steps)
                 for i in range(1, n + 1)]
    assert forward_calls(list(model), run, x) == per_layer
    if n & (n - 1) == 0:  # a power of two: the first layer at every level, the last once
        assert per_layer[0] == int(math.log2(n)) + 1 and per_layer[-1] == 1


@pytest.mark.parametrize("n", [12, 16])
def test_hooks_count_torch_checkpoint_sequential_like_ours_where_segments_agree(n):
    """The oracle for the ledger: PyTorch's checkpoint_sequential, k dividing n."""
    model = mlp_chain(n, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    for k in [k for k in range(1, n + 1) if n % k == 0]:
        ours = saved_activation_bytes(lambda x, k=k: checkpoint_sequential(model, k, x), x)
        theirs = saved_activation_bytes(
            lambda x, k=k: torch_cp.checkpoint_sequential(model, k, x, use_reentrant=False), x)
        assert ours == theirs == peak_activations(n, k) * UNIT


def test_hooks_do_not_see_what_torch_checkpoint_recomputes():
    """Our checkpoint keeps recomputed tensors as saved tensors, PyTorch's does not (chapter 3
    shows this blind spot of the ledger): a 6 + 2 cut peaks while rebuilding the 6."""
    model = mlp_chain(8, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)

    def uneven(ckpt):
        return lambda x: model[6:](ckpt(model[:6], x))

    torch_ckpt = lambda m, x: torch_cp.checkpoint(m, x, use_reentrant=False)  # noqa: E731
    assert saved_activation_bytes(uneven(checkpoint), x) == 6 * UNIT
    assert saved_activation_bytes(uneven(torch_ckpt), x) == (1 + 2) * UNIT


@pytest.mark.parametrize("n,k", [(1, 1), (10, 1), (10, 3), (10, 10), (64, 8)])
def test_one_extra_forward_per_checkpointed_segment(n, k):
    model = mlp_chain(n, WIDTH)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    calls = forward_calls(list(model), lambda x: checkpoint_sequential(model, k, x), x)
    sizes = segment_sizes(n, k)
    assert calls == [2] * (n - sizes[-1]) + [1] * sizes[-1]
    assert sum(calls) == forward_count(n, k) == segment_schedule(n, k).forwards


def test_optimal_segments_minimises_the_exact_peak():
    for n in range(1, 1001):
        best = min(peak_activations(n, k) for k in range(1, n + 1))
        assert peak_activations(n, optimal_segments(n)) == best
    assert optimal_segments(64) == 8 and optimal_segments(1) == 1


def test_schedules_are_valid():
    for n, k in [(1, 1), (9, 3), (13, 4), (20, 20)]:
        for schedule in (segment_schedule(n, k), recursive_schedule(n)):
            backward = [s.layer for s in schedule.steps if s.op == "backward"]
            assert backward == list(range(n, 0, -1))
            assert all(0 not in s.live for s in schedule.steps)
            assert schedule.steps[-1].live == {}
    for p in range(1, 8):
        assert recursive_schedule(2**p).peak == p + 1
        assert recursive_schedule(2**p).forwards == 2**p * (p + 2) // 2


def test_peak_formula_is_the_max_over_segments():
    for n in range(1, 40):
        for k in range(1, n + 1):
            sizes = segment_sizes(n, k)
            assert peak_activations(n, k) == max(j + s for j, s in enumerate(sizes))


def test_segment_sizes():
    assert segment_sizes(10, 3) == [4, 3, 3]
    assert segment_sizes(64, 8) == [8] * 8
    assert sum(segment_sizes(97, 10)) == 97


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_falls_with_checkpointing_on_cuda():
    model = mlp_chain(32, 1024).cuda()
    x = torch.randn(1024, 1024, device="cuda", requires_grad=True)
    plain = peak_memory(model, x)
    k = peak_memory(lambda x: checkpoint_sequential(model, optimal_segments(32), x), x)
    assert k < plain / 2


# ----------------------------------------------------------------------------- bad input

CHAIN = mlp_chain(3, WIDTH)
X = torch.randn(2, WIDTH)


@pytest.mark.parametrize(
    "call, error, words",
    [
        # wrong type
        (lambda: checkpoint(3, X), TypeError, "fn must be callable"),
        (lambda: checkpoint(torch.exp, X, preserve_rng_state="yes"), TypeError,
         "preserve_rng_state must be a bool"),
        (lambda: checkpoint_sequential(CHAIN, 1, X, preserve_rng_state="no"), TypeError,
         "preserve_rng_state must be a bool"),
        (lambda: checkpoint_recursive(CHAIN, X, preserve_rng_state=1), TypeError,
         "preserve_rng_state must be a bool"),
        (lambda: checkpoint_sequential(nn.Linear(WIDTH, WIDTH), 1, X), TypeError,
         "layers must be an nn.Sequential or a list"),
        (lambda: checkpoint_recursive("layers", X), TypeError, "layers must be an nn.Sequential"),
        (lambda: checkpoint_sequential([nn.ReLU(), "relu"], 1, X), TypeError,
         r"layers\[1\] must be callable"),
        (lambda: checkpoint_sequential(CHAIN, 2, [1.0] * WIDTH), TypeError,
         "x must be a torch.Tensor"),
        (lambda: checkpoint_recursive(CHAIN, X.numpy()), TypeError, "x must be a torch.Tensor"),
        # empty
        (lambda: checkpoint_sequential([], 1, X), ValueError, "at least one layer"),
        (lambda: checkpoint_recursive(nn.Sequential(), X), ValueError, "at least one layer"),
        # zero, negative, float and string sizes, named as the caller named them
        (lambda: checkpoint_sequential(CHAIN, 0, X), ValueError, "segments must be at least 1"),
        (lambda: checkpoint_sequential(CHAIN, -2, X), ValueError, "segments must be at least 1"),
        (lambda: checkpoint_sequential(CHAIN, 2.0, X), TypeError, "segments must be an int"),
        (lambda: checkpoint_sequential(CHAIN, "2", X), TypeError, "segments must be an int"),
        (lambda: checkpoint_sequential(CHAIN, 4, X), ValueError,
         r"segments must be at most the number of layers \(3\)"),
        (lambda: segment_sizes(10, 0), ValueError, "k must be at least 1"),
        (lambda: segment_sizes(10, 11), ValueError, "k must be at most the number of layers"),
        (lambda: peak_activations(10, 2.5), TypeError, "k must be an int"),
        (lambda: forward_count(4, -1), ValueError, "k must be at least 1"),
        (lambda: forward_count("4", 1), TypeError, "n must be an int"),
        (lambda: segment_schedule(0, 1), ValueError, "n must be at least 1"),
        (lambda: recursive_schedule(3.0), TypeError, "n must be an int"),
        (lambda: optimal_segments(0), ValueError, "n must be at least 1"),
        (lambda: optimal_segments(math.pi), TypeError, "n must be an int"),
        (lambda: optimal_segments(True), TypeError, "n must be an int"),
        (lambda: mlp_chain(0, 8), ValueError, "n must be at least 1"),
        (lambda: mlp_chain(2, -8), ValueError, "width must be at least 1"),
        (lambda: mlp_chain(2, 8, p_drop="0.1"), TypeError, "p_drop must be a real number"),
        (lambda: mlp_chain(2, 8, p_drop=1.0), ValueError, r"p_drop must be in \[0, 1\)"),
        (lambda: mlp_chain(2, 8, p_drop=-0.1), ValueError, "p_drop must be at least 0"),
        (lambda: mlp_chain(2, 8, seed=1.5), TypeError, "seed must be an int"),
        # NaN and inf
        (lambda: mlp_chain(2, 8, p_drop=math.nan), ValueError, "p_drop must be finite"),
        (lambda: mlp_chain(2, 8, p_drop=math.inf), ValueError, "p_drop must be finite"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()
