"""``python -m lib.bench softmax``: chapter 1's kernel against ``torch.softmax``."""

from __future__ import annotations

import functools

import torch

from ..softmax import softmax
from . import gpu_time_ms, needs_cuda


def bench_softmax(args) -> None:
    """GB/s of lib.softmax against torch.softmax for N = 256..16k, fp16/fp32 (needs CUDA)."""
    def check():
        x = torch.randn(3, 300)
        torch.testing.assert_close(softmax(x, backend="triton"), torch.softmax(x, -1))

    if not needs_cuda("softmax", check):
        return
    rows = 4096
    print(f"{'dtype':<9}{'N':>7}{'lib GB/s':>10}{'torch GB/s':>12}{'ratio':>7}")
    for dtype in (torch.float16, torch.float32):
        for n in (256, 1024, 2048, 4096, 8192, 16384):
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            moved = 2 * x.numel() * x.element_size()  # one read, one write: the ideal
            t_lib = gpu_time_ms(functools.partial(softmax, x, backend="triton"))
            t_ref = gpu_time_ms(functools.partial(torch.softmax, x, -1))
            name = str(dtype).removeprefix("torch.")
            print(f"{name:<9}{n:>7}{moved / t_lib / 1e6:>10.0f}{moved / t_ref / 1e6:>12.0f}"
                  f"{t_ref / t_lib:>7.2f}")


COMMANDS = {"softmax": bench_softmax}
