"""lib/softmax.py: kernels vs reference vs torch.softmax, the (m, d) algebra, the traffic
model against the kernels' counted loads and stores, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.softmax import (
    MAX_BLOCK_N,
    METHODS,
    Traffic,
    _softmax_bwd_triton,
    _softmax_fwd_triton,
    _softmax_safe_triton,
    kernel_accesses,
    launch_config,
    merge_states,
    online_softmax_states,
    softmax,
    softmax_reference,
    softmax_traffic_model,
)

# Output tolerances per dtype, absolute (probabilities lie in [0, 1]). Both sides compute
# in fp32 and round once to the dtype; below 1 two roundings of nearly equal fp32 values
# are at most one ulp = eps / 2 apart, plus the (tiny) difference of the fp32 values.
# ATOL is about eps: 2^-10 ~ 1e-3 (fp16), 2^-7 ~ 8e-3 (bf16); fp32: 1e-6, where the fp32
# sums' rounding dominates ((N + R) u32 relative at worst, far less measured).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
DTYPES = list(ATOL)


def close(a, b, dtype):
    torch.testing.assert_close(a.float(), b.float(), atol=ATOL[dtype], rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 300),
    block=st.sampled_from([16, 32, 128, 512]),
    dtype=st.sampled_from(DTYPES),
    magnitude=st.sampled_from([1.0, 30.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_reference_any_block(rows, cols, block, dtype, magnitude, seed):
    """Rows shorter, equal and longer than one block, in all three dtypes; the online
    kernel and the three-sweep safe one."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=g) * magnitude).to(dtype)
    for kernel in (_softmax_fwd_triton, _softmax_safe_triton):
        y = kernel(x, block_n=block)
        assert y.dtype == dtype
        close(y, softmax_reference(x), dtype)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
)
def test_reference_matches_torch_oracle(shape, data, dtype):
    """The spec against torch.softmax (fp32 math, rounded to the input dtype) on any dim."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = (torch.randn(shape) * 5).to(dtype)
    oracle = torch.softmax(x.float(), dim=dim).to(dtype)
    close(softmax_reference(x, dim), oracle, dtype)
    close(softmax(x, dim, backend="triton"), oracle, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [_softmax_fwd_triton, _softmax_safe_triton])
def test_outputs_are_rounded_to_nearest_even_when_tiny(kernel, dtype):
    """Relative error, not only absolute: outputs spread over many decades (scores of
    std 20), including values below the dtype's normal range. Both sides compute in fp32
    and round once to the dtype (u = eps / 2 each); the fp32 sums differ by at most
    (N + R + 4) u32 relatively (chapter 1's bound); subnormal outputs to a grid step."""
    x = (torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 20).to(dtype)
    y, ref = kernel(x, block_n=64).double(), softmax_reference(x).double()
    r = (x.float() - x.float().amax(-1, keepdim=True)).abs().max().item()
    info = torch.finfo(dtype)
    rtol = info.eps + (300 + r + 4) * 2.0**-24
    torch.testing.assert_close(y, ref, rtol=rtol, atol=info.eps * info.smallest_normal)


def test_rows_of_length_one_are_one():
    x = torch.randn(5, 1)
    assert torch.equal(softmax(x, backend="triton"), torch.ones(5, 1))
    assert torch.equal(softmax(x, backend="torch"), torch.ones(5, 1))


def test_long_rows_use_the_loop():
    """Rows longer than MAX_BLOCK_N take the two-pass path with the default config."""
    x = torch.randn(2, 2 * MAX_BLOCK_N + 77) * 10
    close(softmax(x, backend="triton"), torch.softmax(x, -1), torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_partial_minus_inf_matches_torch(backend):
    x = torch.randn(4, 50)
    x[:, ::3] = -math.inf
    x[2, :49] = -math.inf  # a single finite entry
    close(softmax(x, backend=backend), torch.softmax(x, -1), torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("block", [None, 8])
def test_all_minus_inf_rows_give_zeros_not_nan(backend, block):
    """Our documented convention; torch.softmax gives NaN for the same rows."""
    x = torch.randn(3, 20)
    x[1] = -math.inf
    y = softmax(x, backend=backend) if block is None else _softmax_fwd_triton(x, block_n=block)
    assert torch.equal(y[1], torch.zeros(20))
    close(y[[0, 2]], torch.softmax(x[[0, 2]], -1), torch.float32)
    assert torch.isnan(torch.softmax(x, -1)[1]).all()


def test_all_minus_inf_rows_have_finite_gradients():
    x = torch.randn(2, 7)
    x[0] = -math.inf
    for backend in ("torch", "triton"):
        xr = x.clone().requires_grad_()
        softmax(xr, backend=backend).pow(2).sum().backward()
        assert torch.isfinite(xr.grad).all()


def test_large_magnitudes_do_not_overflow():
    x32 = torch.tensor([[1e4, 1e4 - 1, -1e4, 0.0], [-1e4, -1e4 + 2, -1e4, -1e4]])
    close(softmax(x32, backend="triton"), torch.softmax(x32.double(), -1).float(), torch.float32)
    x16 = torch.tensor([[65504.0, 65504.0, 65472.0, -65504.0]], dtype=torch.float16)
    y16 = softmax(x16, backend="triton")
    assert torch.isfinite(y16).all()
    close(y16, torch.softmax(x16.double(), -1).half(), torch.float16)
    close(_softmax_safe_triton(x16), torch.softmax(x16.double(), -1).half(), torch.float16)
    # the naive formula overflows on the same input: exp(65504) = inf, inf / inf = NaN
    e = torch.exp(x16.float())
    assert torch.isnan(e / e.sum(-1, keepdim=True)).any()


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim_and_noncontiguous_input(dim):
    x = torch.randn(6, 5, 9).transpose(0, 2)  # (9, 5, 6), not contiguous
    close(softmax(x, dim, backend="triton"), torch.softmax(x, dim), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_torch(dtype):
    x = torch.randn(5, 37).to(dtype).requires_grad_()
    dy = torch.randn(5, 37).to(dtype)
    (gx,) = torch.autograd.grad(softmax(x, 0, backend="triton"), x, dy)
    (gref,) = torch.autograd.grad(torch.softmax(x.float(), 0), x, dy.float())
    torch.testing.assert_close(gx.float(), gref.float(), atol=4 * ATOL[dtype], rtol=0)


@pytest.mark.parametrize("n, block", [(1, None), (37, None), (37, 16), (100, 32), (64, 64)])
def test_backward_kernel_one_block_and_looped(n, block):
    """eq. 7 in the single-block branch (row fits) and in the two-sweep loop."""
    y = torch.softmax(torch.randn(3, n) * 4, -1)
    dy = torch.randn(3, n)
    dx = _softmax_bwd_triton(y, dy, block_n=block)
    expect = y.double() * (dy.double() - (y.double() * dy.double()).sum(-1, keepdim=True))
    torch.testing.assert_close(dx.double(), expect, atol=1e-6, rtol=0)


def test_empty_tensor():
    x = torch.randn(0, 4)
    assert softmax(x, backend="triton").shape == (0, 4)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape, dim", [((3, 0), -1), ((0, 3), 0), ((2, 0, 4), 1)])
def test_empty_reduction_dim_gives_an_empty_result(shape, dim, backend):
    """As torch.softmax: nothing to normalise, an empty result of the same shape."""
    x = torch.empty(shape)
    y = softmax(x, dim, backend=backend)
    assert y.shape == torch.softmax(x, dim).shape and y.dtype == x.dtype
    assert softmax_reference(x, dim).shape == x.shape


SPECIAL_ROWS = [  # (row, what torch.softmax gives for it)
    ([1.0, math.nan, 2.0], "nan"),
    ([math.nan] * 3, "nan"),
    ([1.0, math.inf, 2.0], "nan"),
    ([math.inf, math.inf, -1.0], "nan"),
    ([-math.inf, math.inf, 0.0], "nan"),
    ([math.nan, -math.inf, math.inf], "nan"),
    ([1.0, -math.inf, 2.0], "finite"),
    ([-math.inf] * 3, "all -inf"),  # ours: zeros, our documented convention
]


@pytest.mark.filterwarnings("ignore:.*(invalid value|All-NaN):RuntimeWarning")  # numpy, in
@pytest.mark.parametrize("dtype", DTYPES)  # Triton's interpreter, on inf - inf and max(NaN)
@pytest.mark.parametrize("backend, block", [("torch", None), ("triton", None), ("triton", 2)])
def test_nan_and_inf_rows_behave_as_torch(backend, block, dtype):
    """NaN or +inf anywhere in a row: a row of NaN, as torch.softmax, in one block and in
    the two-pass loop (block 2 < row length 3); -inf entries are weights of 0."""
    x = torch.tensor([row for row, _ in SPECIAL_ROWS], dtype=dtype)
    x = torch.cat([x, torch.randn(2, 3, dtype=dtype)])  # ordinary rows next to them
    if block is None:
        y = softmax(x, backend=backend)
    else:
        y = _softmax_fwd_triton(x, block_n=block)
    oracle = torch.softmax(x.float(), -1)
    for i, (_, kind) in enumerate(SPECIAL_ROWS + [(None, "finite")] * 2):
        if kind == "nan":
            assert y[i].isnan().all(), (i, y[i])
        elif kind == "all -inf":
            assert torch.equal(y[i].float(), torch.zeros(3)) and oracle[i].isnan().all()
        else:
            close(y[i], oracle[i], dtype)


# ----------------------------------------------------------------------------- (m, d) algebra

finite = st.floats(-50, 50, allow_nan=False)
state = st.one_of(
    st.tuples(finite, st.floats(1e-3, 1e3)),
    st.just((-math.inf, 0.0)),  # the empty state, identity of the merge
)


def as_tensors(*states):
    return [torch.tensor(v, dtype=torch.float64) for s in states for v in s]


@settings(max_examples=200, deadline=None)
@given(a=state, b=state, c=state)
def test_merge_is_associative_and_commutative(a, b, c):
    m1, d1, m2, d2, m3, d3 = as_tensors(a, b, c)
    left = merge_states(*merge_states(m1, d1, m2, d2), m3, d3)
    right = merge_states(m1, d1, *merge_states(m2, d2, m3, d3))
    swapped = merge_states(m2, d2, m1, d1)
    ab = merge_states(m1, d1, m2, d2)
    for u, v in ((left, right), (ab, swapped)):
        assert u[0] == v[0]
        torch.testing.assert_close(u[1], v[1], rtol=1e-12, atol=0)
    empty = merge_states(m1, d1, *as_tensors((-math.inf, 0.0)))
    assert empty[0] == m1 and torch.equal(empty[1], d1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), block=st.integers(1, 50), seed=st.integers(0, 999))
def test_online_states_end_in_max_and_normalizer(n, block, seed):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(seed)) * 10
    m, d = online_softmax_states(x, block)
    assert m.shape == d.shape == (3, math.ceil(n / block))
    torch.testing.assert_close(m[:, -1], x.amax(-1))
    torch.testing.assert_close(d[:, -1], torch.exp(x - x.amax(-1, keepdim=True)).sum(-1))
    assert (m.diff(dim=-1) >= 0).all()  # the running max never decreases


def test_merge_of_empty_states_is_empty_not_nan():
    m, d = merge_states(*as_tensors((-math.inf, 0.0), (-math.inf, 0.0)))
    assert m == -math.inf and d == 0


# --------------------------------------------------------------------------- traffic model


def test_model_counts_per_element():
    per = {m: softmax_traffic_model(m, 1, 1) for m in METHODS}
    assert (per["safe"].reads + per["safe"].writes, per["online"].reads + 1) == (4, 3)
    assert softmax_traffic_model("fused", 3, 5).bytes(2) == 2 * 3 * 5 * 2


# (kernel, block_n, the model's method): the row fits in one block or is swept in blocks
KERNEL_CASES = [
    ("forward", None, "fused"), ("forward", 16, "online"), ("safe", 16, "safe"),
    ("safe", None, "safe"), ("backward", None, "backward_fused"), ("backward", 16, "backward"),
]


@pytest.mark.parametrize("kernel, block, method", KERNEL_CASES)
@pytest.mark.parametrize("n", [1, 37, 64])
def test_counted_kernel_traffic_equals_model(kernel, block, method, n):
    """The loads and stores the kernels issue, counted per element, are the model's."""
    if method in ("online", "backward") and n <= block:
        method = "fused" if method == "online" else "backward_fused"  # the row fits
    x = torch.randn(3, n, dtype=torch.float16)
    counts = kernel_accesses(x, kernel, block)
    reads, writes = counts.totals()
    assert Traffic(reads, writes) == softmax_traffic_model(method, 3, n)
    assert counts.stray_loads == counts.stray_stores == 0
    for name, acc in counts.arguments.items():  # every element as often as every other
        assert acc.loads.min() == acc.loads.max(), name
        assert acc.stores.min() == acc.stores.max(), name
    inputs = ("y_ptr", "dy_ptr") if kernel == "backward" else ("x_ptr",)
    output = "dx_ptr" if kernel == "backward" else "y_ptr"
    assert all(counts[name].stores.max() == 0 for name in inputs)
    assert counts[output].loads.max() == 0 and counts[output].stores.min() == 1


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((torch.tensor(1.0),), {}, ValueError, "x must have at least 1"),
        ((torch.arange(6).reshape(2, 3),), {}, TypeError, "x must have dtype"),
        ((torch.randn(2, 3), 2), {}, ValueError, "dim=2 is out of range"),
        ((torch.randn(2, 3), 1.0), {}, TypeError, "dim must be an int"),
        (([[1.0, 2.0]],), {}, TypeError, "x must be a torch.Tensor"),
        ((torch.randn(2, 3),), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_input_is_named(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        softmax(*args, **kwargs)


@pytest.mark.parametrize(
    "fn, args, error, words",
    [
        (softmax_reference, (torch.arange(6).reshape(2, 3),), TypeError, "x must have dtype"),
        (softmax_reference, ([[1.0, 2.0]],), TypeError, "x must be a torch.Tensor"),
        (softmax_reference, (torch.randn(2, 3), 2), ValueError, "dim=2 is out of range"),
        (softmax_reference, (torch.randn(2, 3), "-1"), TypeError, "dim must be an int"),
        (softmax_reference, (torch.tensor(1.0),), ValueError, "x must have at least 1"),
        (softmax_traffic_model, ("fast", 2, 3), ValueError, "method must be one of"),
        (softmax_traffic_model, ("safe", 0, 3), ValueError, "rows must be at least 1"),
        (softmax_traffic_model, ("safe", 2, -3), ValueError, "n must be at least 1"),
        (softmax_traffic_model, ("safe", 2.0, 3), TypeError, "rows must be an int"),
        (softmax_traffic_model, ("safe", 2, "3"), TypeError, "n must be an int"),
        (launch_config, (0,), ValueError, "n_cols must be at least 1"),
        (launch_config, (10.5,), TypeError, "n_cols must be an int"),
        (launch_config, (10, 24), ValueError, "block_n must be a power of two"),
        (launch_config, (10, 0), ValueError, "block_n must be at least 1"),
        (launch_config, (10, 16.0), TypeError, "block_n must be an int"),
        (kernel_accesses, (torch.randn(2, 3), "fast"), ValueError, "kernel must be one of"),
        (kernel_accesses, (torch.randn(3),), ValueError, "x must have 2 dimensions"),
        (kernel_accesses, (torch.randn(2, 0),), ValueError, "at least one row and column"),
        (kernel_accesses, (torch.randn(2, 3, device="meta"),), ValueError,
         "x must be on the CPU"),
        (kernel_accesses, (torch.ones(2, 3, dtype=torch.int32),), TypeError,
         "x must have dtype"),
        (kernel_accesses, (torch.randn(2, 3), "safe", 24), ValueError,
         "block_n must be a power of two"),
        (online_softmax_states, (torch.randn(4), 0), ValueError, "block must be at least 1"),
        (online_softmax_states, (torch.randn(2, 0), 1), ValueError, "at least one entry"),
        (merge_states, (torch.tensor(1), *[torch.tensor(1.0)] * 3), TypeError,
         "m1 must have dtype"),
        (merge_states, ([0.0], *[torch.tensor(1.0)] * 3), TypeError,
         "m1 must be a torch.Tensor"),
        (merge_states, (*[torch.tensor(1.0)] * 3, torch.tensor(-1.0)), ValueError,
         "d2 must be >= 0"),
        (merge_states, (torch.zeros(2), torch.ones(2), torch.zeros(3), torch.ones(3)),
         ValueError, "must broadcast to one shape"),
        (merge_states, (*[torch.tensor(1.0)] * 3, torch.ones((), device="meta")),
         ValueError, "must have the same device"),
    ],
)
def test_bad_input_to_the_helpers_is_named(fn, args, error, words):
    with pytest.raises(error, match=words):
        fn(*args)
