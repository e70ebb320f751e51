"""lib/access_count.py: counted loads and stores of small kernels whose answer is known."""

import pytest
import torch

import lib  # noqa: F401  (sets TRITON_INTERPRET before triton is imported)
import lib.access_count
import lib.softmax
from lib._triton import tl, triton
from lib.access_count import count_accesses, interpreted_call

triton_runtime = pytest.importorskip("triton.runtime.interpreter")


@triton.jit
def _copy(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


@triton.jit
def _gather_twice(x_ptr, idx_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """y[i] = x[idx[i]] + x[idx[i]]: two loads of x per lane, through an index."""
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    i = tl.load(idx_ptr + offs, mask=mask, other=0)
    a = tl.load(x_ptr + i, mask=mask)
    b = tl.load(x_ptr + i, mask=mask)
    tl.store(y_ptr + offs, a + b, mask=mask)


@triton.jit
def _strided_copy(x_ptr, y_ptr, n, stride, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs * stride, mask=offs < n), mask=offs < n)


@triton.jit
def _fails(x_ptr, BLOCK: tl.constexpr):
    tl.load(x_ptr + tl.arange(0, BLOCK))
    tl.static_assert(BLOCK < 0, "on purpose")


def builder_is_clean() -> bool:
    b = triton_runtime.interpreter_builder
    return not {"create_masked_load", "create_masked_store"} & set(vars(b))


@pytest.mark.parametrize("n, block", [(1, 16), (37, 16), (64, 16), (5, 8)])
def test_copy_reads_and_writes_each_element_once(n, block):
    """Masked tail lanes are not counted; the kernel really runs."""
    x, y = torch.randn(n), torch.zeros(n)
    counts = count_accesses(_copy, (triton.cdiv(n, block),), x, y, n, BLOCK=block)
    assert torch.equal(y, x)
    assert counts.programs == triton.cdiv(n, block)
    assert torch.equal(counts["x_ptr"].loads, torch.ones(n, dtype=torch.int64))
    assert counts["x_ptr"].stores.sum() == 0 and counts["y_ptr"].loads.sum() == 0
    assert torch.equal(counts["y_ptr"].stores, torch.ones(n, dtype=torch.int64))
    assert counts.totals() == (n, n) and counts.stray_loads == counts.stray_stores == 0
    assert builder_is_clean()


def test_counts_follow_the_addresses_not_the_lanes():
    """Element 2 gathered by three lanes, twice each: 6 loads; elements never named: 0."""
    x = torch.arange(5.0)
    idx = torch.tensor([2, 0, 2, 2], dtype=torch.int32)
    y = torch.zeros(4)
    counts = count_accesses(_gather_twice, 1, x, idx, y, 4, BLOCK=8)
    assert counts["x_ptr"].loads.tolist() == [2, 0, 6, 0, 0]
    assert counts["idx_ptr"].loads.tolist() == [1, 1, 1, 1]
    assert counts["x_ptr"].per_element() == (8 / 5, 0.0)
    assert torch.equal(y, torch.tensor([4.0, 0.0, 4.0, 4.0]))


def test_strided_view_counts_per_element_of_the_view():
    base = torch.randn(6, 4)
    column = base[:, 1]  # stride 4: the kernel reads every 4th float
    y = torch.zeros(6)
    counts = count_accesses(_strided_copy, 1, column, y, 6, 4, BLOCK=8)
    assert counts["x_ptr"].loads.shape == (6,)
    assert torch.equal(counts["x_ptr"].loads, torch.ones(6, dtype=torch.int64))
    assert counts.stray_loads == 0 and torch.equal(y, column)


def test_lanes_outside_every_argument_are_stray():
    """A stride that walks past the view: those loads belong to no argument's elements."""
    base = torch.randn(6, 4)
    column = base[:3, 1]  # 3 elements, 0, 4 and 8 floats after the first
    y = torch.zeros(3)
    counts = count_accesses(_strided_copy, 1, column, y, 3, 2, BLOCK=4)  # reads 0, 2, 4
    assert counts["x_ptr"].loads.tolist() == [1, 1, 0]
    assert counts.stray_loads == 1  # 2 lies in a gap of the view


def test_keyword_and_positional_launches_agree_and_options_are_ignored():
    x, y = torch.randn(10), torch.zeros(10)
    a = count_accesses(_copy, (1,), x, y, 10, BLOCK=16)
    b = count_accesses(_copy, (1,), x_ptr=x, y_ptr=y, n=10, BLOCK=16, num_warps=4)
    assert a.totals() == b.totals() == (10, 10)


def test_the_builder_is_restored_when_the_kernel_fails():
    with pytest.raises(Exception, match="on purpose"):
        count_accesses(_fails, 1, torch.randn(8), BLOCK=8)
    assert builder_is_clean()
    x, y = torch.randn(4), torch.zeros(4)
    _copy[(1,)](x, y, 4, BLOCK=4)  # an ordinary launch afterwards runs as usual
    assert torch.equal(x, y)


def test_table_lists_every_tensor_argument():
    x, y = torch.randn(10), torch.zeros(10)
    text = count_accesses(_copy, (1,), x, y, 10, BLOCK=16).table()
    assert "x_ptr" in text and "y_ptr" in text and "1 programs" in text


def test_without_the_interpreter_count_in_a_fresh_process(monkeypatch):
    """Where Triton runs compiled (CUDA), count_accesses refuses and says what to use;
    kernel_accesses goes through interpreted_call and gets the same counts."""
    x = torch.randn(2, 40).half()
    here = lib.softmax.kernel_accesses(x, "forward", 16)
    monkeypatch.setattr(lib.access_count.backend, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="interpreted_call"):
        count_accesses(_copy, 1, x, torch.empty_like(x), 4, BLOCK=4)
    monkeypatch.setattr(lib.softmax, "INTERPRET", False)
    there = lib.softmax.kernel_accesses(x, "forward", 16)
    assert there.totals() == here.totals() == (2 * 40 * 2, 2 * 40)
    assert torch.equal(there["x_ptr"].loads, here["x_ptr"].loads)


@pytest.mark.parametrize(
    "function, error, words",
    [
        (len, TypeError, "function must be a dotted name"),
        ("os.getcwd", ValueError, "function must name a function of lib"),
        ("lib.softmax.no_such_function", ValueError, "must name a function of lib"),
        ("lib.no_such_module.f", ValueError, "must name a function of lib"),
        ("lib.softmax.METHODS", ValueError, "must name a function of lib"),
    ],
)
def test_interpreted_call_bad_names(function, error, words):
    with pytest.raises(error, match=words):
        interpreted_call(function)


def test_interpreted_call_reports_the_child_error():
    with pytest.raises(RuntimeError, match="failed under Triton's interpreter"):
        interpreted_call("lib.softmax.kernel_accesses", torch.randn(3))


@pytest.mark.parametrize(
    "kernel, grid, args, error, words",
    [
        (lambda x: x, 1, (), TypeError, "kernel must be a @triton.jit function"),
        (_copy, (0,), (), ValueError, "grid sizes must be at least 1"),
        (_copy, (1.5,), (), TypeError, "grid must hold ints"),
        (_copy, "1", (), TypeError, "grid must be an int or a tuple"),
        (_copy, (1, 1, 1, 1), (), TypeError, "grid must be an int or a tuple"),
        (_copy, 1, (torch.randn(4, device="meta"), torch.zeros(4), 4), ValueError,
         "x_ptr must be on the CPU"),
        (_copy, 1, (torch.randn(4),) * 6, TypeError, "takes 4 arguments"),
    ],
)
def test_bad_input_is_named(kernel, grid, args, error, words):
    with pytest.raises(error, match=words):
        count_accesses(kernel, grid, *args)
    assert builder_is_clean()
