"""``python -m lib.bench compile`` (and ``compile-sweep``): every kernel compiled ahead of
time (no GPU needed)."""

from __future__ import annotations


def bench_compile(args) -> None:
    """Compile every Triton kernel for sm_90a and sm_80; print registers, spill bytes,
    shared memory and tensor-core use (works with no GPU)."""
    from ..aot import compile_all_subprocess, format_table

    print(format_table(compile_all_subprocess()))


def bench_compile_sweep(args) -> None:
    """Compile every launch variant of the kernels (sweep_specs(): attention in three
    dtypes, head dims 16..256, causal or not, with or without a mask) for sm_90a and sm_80
    and print the table and any spills; long on a CPU (no GPU needed)."""
    from ..aot import compile_all_subprocess, format_table

    reports = compile_all_subprocess(sweep=True)
    print(format_table(reports))
    bad = [r for r in reports if r.spill_bytes or r.shared_bytes > r.shared_limit]
    print(f"{len(reports)} compiles, {len(bad)} with spills or too much shared memory")


COMMANDS = {"compile": bench_compile, "compile-sweep": bench_compile_sweep}
