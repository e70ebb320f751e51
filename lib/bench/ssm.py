"""``python -m lib.bench ssm``: chapter 8's kernels and algorithms, timed.

On CUDA: the Triton selective scan against the sequential reference and the chunked PyTorch
version (forward, and forward + backward). Without CUDA: a small correctness check of the
kernels through Triton's interpreter, and the two CPU measurements of the chapter, which do
not need a GPU: the S4D kernel by Vandermonde product against matrix powers, and the
chunked scan against the sequential one. Every CPU time is the median of ``repeats`` runs,
given with its range, in CPU seconds of the process (one thread).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from . import gpu_time_ms, needs_cuda


def cpu_times(fn, repeats: int = 7) -> list[float]:
    """CPU seconds of this process for each of ``repeats`` calls of ``fn()`` (after one
    warm-up call). CPU time rather than wall-clock time: other jobs sharing the machine's
    cores do not inflate it. Run with one thread (``torch.set_num_threads(1)``)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return times


def summary(times: list[float]) -> str:
    """'median ms (min-max)' of a list of seconds."""
    ms = [t * 1e3 for t in times]
    return f"{statistics.median(ms):8.2f} ms ({min(ms):.2f}-{max(ms):.2f})"


def kernel_speed(L: int = 4096, N: int = 64, repeats: int = 7) -> dict[str, list[float]]:
    """Seconds to compute the S4D convolution kernel (eq. 9) of one channel, three ways.

    S4D-Lin (A_n = -1/2 + i pi n, ZOH with dt = 0.01) in complex64: ``vandermonde`` (eq. 10),
    ``naive`` (the matrix powers Ā^l, one product per step) and ``impulse`` (the recurrence
    run on a unit impulse, one matrix-vector product per step).
    """
    from ..ssm import discretize, ssm_kernel, ssm_recurrent

    A = (-0.5 + 1j * math.pi * torch.arange(N)).to(torch.complex64)
    A_bar, B_bar = discretize(A, torch.ones(N, dtype=torch.complex64), 0.01, "zoh")
    C = torch.randn(N, generator=torch.Generator().manual_seed(0), dtype=torch.complex64)
    impulse = torch.zeros(L)
    impulse[0] = 1
    return {
        "vandermonde": cpu_times(lambda: ssm_kernel(A_bar, B_bar, C, L), repeats),
        "naive": cpu_times(lambda: ssm_kernel(A_bar, B_bar, C, L, "naive"), repeats),
        "impulse": cpu_times(lambda: ssm_recurrent(torch.diag(A_bar), B_bar, C, impulse),
                             repeats),
    }


def scan_inputs(batch: int, dim: int, L: int, N: int, device="cpu", seed: int = 0) -> dict:
    """Random selective-scan inputs drawn as in Mamba's tests (fp32, softplus on)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    return dict(u=r(batch, dim, L), delta=0.5 * torch.rand(batch, dim, L, generator=g).to(device),
                A=-0.5 * torch.rand(dim, N, generator=g).to(device), B=r(batch, N, L),
                C=r(batch, N, L), D=r(dim), z=r(batch, dim, L),
                delta_bias=0.5 * torch.rand(dim, generator=g).to(device), delta_softplus=True)


def scan_speed(L: int = 2048, batch: int = 1, dim: int = 16, N: int = 16,
               repeats: int = 7) -> dict[str, list[float]]:
    """Seconds of one forward selective scan on the CPU: ``sequential`` (the reference,
    one step at a time) and ``chunked`` (:func:`lib.ssm.selective_scan_chunked`)."""
    from ..ssm import selective_scan_chunked, selective_scan_reference

    args = scan_inputs(batch, dim, L, N)
    with torch.no_grad():
        return {"sequential": cpu_times(lambda: selective_scan_reference(**args), repeats),
                "chunked": cpu_times(lambda: selective_scan_chunked(**args), repeats)}


def _check() -> None:
    """The Triton scan (forward and backward) against the reference, through the interpreter."""
    from ..ssm import selective_scan, selective_scan_reference

    args = scan_inputs(2, 3, 40, 4)
    leaves = {k: v.requires_grad_() if torch.is_tensor(v) else v for k, v in args.items()}
    out = selective_scan(**leaves, backend="triton")
    ref = selective_scan_reference(**leaves)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    tensors = [v for v in leaves.values() if torch.is_tensor(v)]
    for a, b in zip(torch.autograd.grad(out.sum(), tensors),
                    torch.autograd.grad(ref.sum(), tensors), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-2)


def bench_ssm(args) -> None:
    """Selective scan: Triton vs the sequential reference and the chunked PyTorch version
    (CUDA); without CUDA, a correctness check and the chapter's two CPU speed-ups."""
    torch.set_num_threads(1)
    if not needs_cuda("ssm", _check):
        print("\nCPU time of this process, one thread; median of 7 runs (range):")
        kernel = kernel_speed()
        print("S4D kernel, L = 4096, N = 64 (complex64):")
        for name, times in kernel.items():
            ratio = statistics.median(times) / statistics.median(kernel["vandermonde"])
            print(f"  {name:<12}{summary(times)}   {ratio:6.1f}x the Vandermonde time")
        for dim in (16, 64):
            scan = scan_speed(dim=dim)
            ratio = statistics.median(scan["sequential"]) / statistics.median(scan["chunked"])
            print(f"selective scan, L = 2048, batch 1, dim {dim}, N = 16 (forward, fp32):")
            for name, times in scan.items():
                print(f"  {name:<12}{summary(times)}")
            print(f"  chunked is {ratio:.1f}x faster than sequential")
        return
    from ..ssm import selective_scan, selective_scan_chunked, selective_scan_reference

    print("Selective scan, batch 8, dim 1536, N = 16, fp32; ms per call (median)")
    print(f"{'L':>6}{'triton':>9}{'chunked':>9}{'sequent.':>10}{'f+b triton':>12}"
          f"{'f+b chunked':>12}")
    for L in (512, 1024, 2048, 4096):
        inputs = scan_inputs(8, 1536, L, 16, device="cuda")
        leaves = {k: v.requires_grad_() if torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        with torch.no_grad():
            t_tri = gpu_time_ms(lambda: selective_scan(**inputs, backend="triton"))  # noqa: B023
            t_chk = gpu_time_ms(lambda: selective_scan_chunked(**inputs))  # noqa: B023
            t_seq = gpu_time_ms(lambda: selective_scan_reference(**inputs))  # noqa: B023

        def fwd_bwd(fn):
            return lambda: fn(**leaves).sum().backward()  # noqa: B023

        tb_tri = gpu_time_ms(fwd_bwd(lambda **kw: selective_scan(**kw, backend="triton")))
        tb_chk = gpu_time_ms(fwd_bwd(selective_scan_chunked))
        print(f"{L:>6}{t_tri:>9.2f}{t_chk:>9.2f}{t_seq:>10.2f}{tb_tri:>12.2f}{tb_chk:>12.2f}")


COMMANDS = {"ssm": bench_ssm}
