"""lib/memory.py: the tensor-memory tracker and the resident-memory high-water mark."""

import pytest
import torch

from lib.memory import TensorMemoryTracker, peak_rss_extra, rss_measurable

MiB = 2**20


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
    extra = peak_rss_extra(lambda: torch.ones(64 * MiB // 4).sum())
    assert 60 * MiB <= extra < 200 * MiB
