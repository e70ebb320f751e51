"""``python -m lib.bench softmax``: chapter 1's kernels against ``torch.softmax``, and the
online kernel against the three-sweep safe one (the comparison of Milakov & Gimelshein)."""

from __future__ import annotations

import functools

import torch

from ..softmax import _softmax_fwd_triton, _softmax_safe_triton, launch_config, softmax
from . import gpu_time_ms, needs_cuda


def bench_softmax(args) -> None:
    """GB/s of lib.softmax vs torch.softmax (N = 256..16k), then online vs three-sweep
    safe kernel on rows longer than a block (N = 4k..64k), fp16/fp32 (needs CUDA)."""
    def check():
        x = torch.randn(3, 300)
        expect = torch.softmax(x, -1)
        rtol, atol = 2**-20, 2**-24  # fp32 math on both sides; rounding, not the method
        torch.testing.assert_close(softmax(x, backend="triton"), expect, rtol=rtol, atol=atol)
        for fn in (_softmax_fwd_triton, _softmax_safe_triton):  # the looped sweeps
            torch.testing.assert_close(fn(x, block_n=64), expect, rtol=rtol, atol=atol)

    if not needs_cuda("softmax", check):
        return
    print(f"{'dtype':<9}{'N':>7}{'lib GB/s':>10}{'torch GB/s':>12}{'ratio':>7}")
    for dtype in (torch.float16, torch.float32):
        for n in (256, 1024, 2048, 4096, 8192, 16384):
            x = torch.randn(4096, n, device="cuda", dtype=dtype)
            moved = 2 * x.numel() * x.element_size()  # one read, one write: the ideal
            t_lib = gpu_time_ms(functools.partial(softmax, x, backend="triton"))
            t_ref = gpu_time_ms(functools.partial(torch.softmax, x, -1))
            name = str(dtype).removeprefix("torch.")
            print(f"{name:<9}{n:>7}{moved / t_lib / 1e6:>10.0f}{moved / t_ref / 1e6:>12.0f}"
                  f"{t_ref / t_lib:>7.2f}")
    block_n, _ = launch_config(1 << 20)
    print(f"\nonline (2 sweeps) vs safe (3 sweeps), BLOCK_N = {block_n}; median times; "
          "Milakov & Gimelshein (abstract): up to 1.3x")
    print(f"{'dtype':<9}{'N':>7}{'online ms':>11}{'safe ms':>9}{'safe/online':>13}")
    for dtype in (torch.float16, torch.float32):
        for n in (4096, 16384, 65536):
            x = torch.randn(2**26 // n, n, device="cuda", dtype=dtype)  # 2^26 elements
            t_online = gpu_time_ms(functools.partial(_softmax_fwd_triton, x))
            t_safe = gpu_time_ms(functools.partial(_softmax_safe_triton, x))
            name = str(dtype).removeprefix("torch.")
            print(f"{name:<9}{n:>7}{t_online:>11.3f}{t_safe:>9.3f}{t_safe / t_online:>13.2f}")


COMMANDS = {"softmax": bench_softmax}
