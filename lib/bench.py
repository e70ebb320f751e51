"""Benchmarks a GPU user can run: ``python -m lib.bench <command>``.

Commands:
  compile   compile every Triton kernel ahead of time for sm_90a and sm_80 and print
            registers, spill bytes, shared memory and tensor-core use (works with no GPU)
  softmax   GB/s of lib.softmax against torch.softmax (needs CUDA)

Timings are never asserted in tests: speed is measured here and quoted, on the GPU it
was measured on. Without CUDA the timing commands run a tiny correctness check through
Triton's interpreter, say that they need CUDA, and exit 0.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

from .backend import CUDA, HAS_TRITON


def gpu_time_ms(fn) -> float:
    """Median time of ``fn()`` in milliseconds on the current CUDA device."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _needs_cuda(name: str, check) -> bool:
    """Without CUDA: run ``check()`` (a tiny interpreter run), explain, and return False."""
    if CUDA and HAS_TRITON:
        return True
    if HAS_TRITON:
        check()
        print(f"{name}: correctness check through Triton's interpreter passed.")
    print(f"{name}: timing needs a CUDA GPU with Triton; none here, so no timings.")
    return False


def bench_compile(args) -> None:
    from .aot import compile_all_subprocess, format_table

    print(format_table(compile_all_subprocess()))


def bench_softmax(args) -> None:
    from .softmax import softmax

    def check():
        x = torch.randn(3, 300)
        torch.testing.assert_close(softmax(x, backend="triton"), torch.softmax(x, -1))

    if not _needs_cuda("softmax", check):
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


COMMANDS = {"compile": bench_compile, "softmax": bench_softmax}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
