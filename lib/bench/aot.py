"""``python -m lib.bench compile``: every kernel compiled ahead of time (no GPU needed)."""

from __future__ import annotations


def bench_compile(args) -> None:
    """Compile every Triton kernel for sm_90a and sm_80; print registers, spill bytes,
    shared memory and tensor-core use (works with no GPU)."""
    from ..aot import compile_all_subprocess, format_table

    print(format_table(compile_all_subprocess()))


COMMANDS = {"compile": bench_compile}
