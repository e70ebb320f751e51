"""lib/memory.py: the tensor-memory tracker, the resident-memory high-water mark, the
saved-activation ledger, the forward-call counter, the CUDA peak, bad input."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from lib.memory import (
    TensorMemoryTracker,
    forward_calls,
    peak_memory,
    peak_rss_extra,
    rss_measurable,
    saved_activation_bytes,
)

MiB = 2**20
WIDTH, BATCH = 8, 5
UNIT = WIDTH * BATCH * 4  # bytes of one fp32 (BATCH, WIDTH) activation


def test_tracker_counts_new_tensors_once_and_frees_them():
    x = torch.randn(256, 256)  # an input: not counted
    with torch.no_grad(), TensorMemoryTracker() as t:
        y = x * 2  # 256 KiB, new
        view = y[:10].t()  # views share y's storage
        y.add_(1)  # in place: the same storage
        z = torch.empty(1024, 1024)  # 4 MiB, new
        assert t.current == y.numel() * 4 + z.numel() * 4
        del z
        assert t.current == y.numel() * 4
        del y  # the view keeps the storage alive
        assert t.current == 256 * 256 * 4
        del view
        assert t.current == 0
    assert t.peak == 256 * 256 * 4 + 4 * MiB


def test_tracker_sees_temporaries_inside_an_expression():
    x = torch.randn(512, 512)
    with torch.no_grad(), TensorMemoryTracker() as t:
        (x.exp() + 1).sum()  # exp and the sum's operand exist together
    assert t.peak >= 2 * x.numel() * 4 and t.current == 0


@pytest.mark.skipif(not rss_measurable(), reason="needs Linux's /proc/self/clear_refs")
def test_rss_high_water_mark_sees_a_large_allocation():
    # in a fresh process, as peak_rss_extra's docstring asks: in a test worker that ran
    # other tests, the C allocator may hand back pages it kept, and the peak shows 0
    code = ("import torch; from lib.memory import peak_rss_extra; "
            "print(peak_rss_extra(lambda: torch.ones(64 * 2**20 // 4).sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    extra = int(out.stdout.split()[-1])
    assert 60 * MiB <= extra < 200 * MiB


# ------------------------------------------------------------- training: saved activations


def test_each_storage_counts_once_and_bytes_follow_dtype():
    def fn(x):
        h = x.exp()  # exp saves its result h; the product saves h twice more
        return h * h + h[::2].sum()

    for dtype in (torch.float32, torch.float16):
        x = torch.randn(6, 10, dtype=dtype, requires_grad=True)
        assert saved_activation_bytes(fn, x) == 60 * x.element_size()


def test_parameters_and_arguments_are_not_activations():
    lin = nn.Linear(WIDTH, WIDTH)
    x = torch.randn(BATCH, WIDTH)
    assert saved_activation_bytes(lin, x) == 0  # saves x (an argument) and W (a parameter)
    assert saved_activation_bytes(lambda x: torch.relu(lin(x)), x) == UNIT


def test_dropout_masks_are_counted():
    drop = nn.Dropout(0.5)
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    # on CPU dropout is x * mask with a float mask (scaled by 1/(1-p)); CUDA saves a bool mask
    assert saved_activation_bytes(drop, x) == UNIT


def test_saved_bytes_of_a_small_mlp_counted_by_hand():
    """Linear saves its input and weight, tanh its output, GELU its input: the tanh output
    (the second Linear's input too) and the GELU input are the only activations."""
    model = nn.Sequential(nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, WIDTH), nn.GELU())
    x = torch.randn(BATCH, WIDTH, requires_grad=True)
    assert saved_activation_bytes(model, x) == BATCH * 16 * 4 + BATCH * WIDTH * 4


def test_forward_calls_counts_each_module():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)

    def fn(x):
        return b(a(a(x)))  # a twice, b once, no recomputation

    assert forward_calls([a, b], fn, torch.randn(2, 3)) == [2, 1]
    assert forward_calls([], fn, torch.randn(2, 3)) == []
    assert not a._forward_hooks and not b._forward_hooks  # hooks removed


def test_peak_memory_on_cpu_raises():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        peak_memory(nn.Linear(WIDTH, WIDTH), torch.randn(BATCH, WIDTH))


@pytest.mark.parametrize(
    "call, error, words",
    [
        # wrong type: not callable, not a list, not modules
        (lambda: saved_activation_bytes("fn", torch.randn(3)), TypeError, "fn must be callable"),
        (lambda: forward_calls([], None, torch.randn(3)), TypeError, "fn must be callable"),
        (lambda: peak_memory(1.5, torch.randn(3)), TypeError, "fn must be callable"),
        (lambda: peak_rss_extra(None), TypeError, "fn must be callable"),
        (lambda: forward_calls(nn.ReLU(), torch.exp, torch.randn(3)), TypeError,
         "modules must be a list of nn.Module"),
        (lambda: forward_calls("relu", torch.exp, torch.randn(3)), TypeError,
         "modules must be a list of nn.Module"),
        (lambda: forward_calls([torch.exp], torch.exp, torch.randn(3)), TypeError,
         r"modules\[0\] must be an nn.Module"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_a_bad_module_registers_no_hook():
    layer = nn.ReLU()
    with pytest.raises(TypeError, match=r"modules\[1\] must be an nn.Module"):
        forward_calls([layer, "relu"], layer, torch.randn(3))
    assert not layer._forward_hooks
