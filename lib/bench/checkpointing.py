"""``python -m lib.bench checkpointing``: chapter 3's memory and recomputation counts."""

from __future__ import annotations

import functools
import statistics
import time

import torch

from ..backend import CUDA
from . import gpu_time_ms


def bench_checkpointing(args) -> None:
    """Saved-activation bytes and forward calls of a 64-layer MLP for k = 1..64 segments
    against the model, and the wall-time overhead of recomputation (CPU or CUDA)."""
    from ..backend import default_device
    from ..checkpointing import (
        checkpoint_sequential,
        forward_count,
        mlp_chain,
        optimal_segments,
        peak_activations,
        segment_sizes,
    )
    from ..memory import forward_calls, peak_memory, saved_activation_bytes

    n, device, rounds = 64, default_device(), 7
    if not CUDA:  # one thread: idle OpenMP threads spinning on a shared CPU swamp the timings
        torch.set_num_threads(1)
    run = lambda model, k: (lambda x: checkpoint_sequential(model, k, x))  # noqa: E731

    # Memory and forward calls: exact counts, so a small activation is enough.
    width, batch = 256, 64
    model = mlp_chain(n, width).to(device)
    x = torch.randn(batch, width, device=device, requires_grad=True)
    unit = batch * width * 4  # bytes of one fp32 activation
    plain = saved_activation_bytes(model, x)
    print(f"{n}-layer MLP (Linear {width}x{width} + ReLU), batch {batch}, fp32, on {device}: "
          f"one activation = {unit} bytes")
    print(f"{'k':>3}{'saved bytes':>13}{'activations':>13}{'(k-1)+n//k':>12}{'n/k+k':>8}"
          f"{'vs k=1':>8}{'forwards':>10}{'extra':>7}")
    for k in range(1, n + 1):
        saved = saved_activation_bytes(run(model, k), x)
        calls = forward_calls(list(model), run(model, k), x)
        sizes = segment_sizes(n, k)
        assert calls == [2] * (n - sizes[-1]) + [1] * sizes[-1]  # one extra forward per segment
        assert saved == peak_activations(n, k) * unit
        print(f"{k:>3}{saved:>13}{saved / unit:>13.0f}{peak_activations(n, k):>12}"
              f"{n / k + k:>8.1f}{saved / plain:>8.3f}{sum(calls):>10}{sum(calls) - n:>7}")
    print("every layer of the k - 1 checkpointed segments ran exactly twice and every layer of "
          "the last segment once (asserted per layer for every k)")
    k8 = saved_activation_bytes(run(model, 8), x)
    print(f"k = 8: {k8 / plain:.3f} of the no-checkpoint bytes (at most 1/3: {3 * k8 <= plain}); "
          f"optimal_segments({n}) = {optimal_segments(n)}")

    # Time: a compute-bound size; configurations interleaved, median of several rounds.
    import torch.utils.checkpoint as torch_checkpoint

    width, batch = (4096, 4096) if CUDA else (512, 128)
    model = mlp_chain(n, width).to(device)
    x = torch.randn(batch, width, device=device, requires_grad=True)
    ks = (2, 4, 8, 16, 64)
    runs = {"plain": model, **{("lib", k): run(model, k) for k in ks}, **{
        ("torch", k): functools.partial(torch_checkpoint.checkpoint_sequential, model, k,
                                        use_reentrant=False) for k in ks}}

    def step(fn):
        model.zero_grad(set_to_none=True)
        fn(x).sum().backward()

    def forward_only():
        model(x)  # with grad, as the recomputation runs: it records the graph, then drops it

    calls = {name: functools.partial(step, fn) for name, fn in runs.items()}
    calls["forward"] = forward_only
    if CUDA:
        times = {name: gpu_time_ms(f) for name, f in calls.items()}
        cpu, kind = times, "CUDA, median of triton.testing.do_bench"
    else:
        walls = {name: [] for name in calls}
        procs = {name: [] for name in calls}
        for f in calls.values():  # warm up
            f()
        for _ in range(rounds):
            for name, f in calls.items():
                wall, proc = time.perf_counter(), time.process_time()
                f()
                walls[name].append((time.perf_counter() - wall) * 1e3)
                procs[name].append((time.process_time() - proc) * 1e3)
        times = {name: statistics.median(t) for name, t in walls.items()}
        cpu = {name: statistics.median(t) for name, t in procs.items()}
        kind = f"CPU, 1 thread, median of {rounds} interleaved rounds"
    share = times["forward"] / times["plain"]
    print(f"one forward + backward, width {width}, batch {batch} ({kind}):")
    print(f"  no checkpointing {times['plain']:.1f} ms; a forward alone {times['forward']:.1f} ms "
          f"= {share:.3f} of the step")
    print(f"{'k':>4}{'lib ms':>9}{'overhead':>10}{'CPU-time':>10}{'torch ms':>10}{'overhead':>10}"
          f"{'model':>8}{'lib rounds':>16}")
    for k in ks:
        model_ratio = 1 + (forward_count(n, k) - n) / n * share  # eq. 6: the extra forwards
        lib, ref = ("lib", k), ("torch", k)
        if CUDA:
            extra = f"  peak {peak_memory(runs[lib], x) / 2**20:.0f} MiB"
        else:  # the spread: each round's lib / plain ratio
            ratios = [t / p for t, p in zip(walls[lib], walls["plain"], strict=True)]
            extra = f"  {min(ratios):.3f}-{max(ratios):.3f}"
        print(f"{k:>4}{times[lib]:>9.1f}{times[lib] / times['plain']:>10.3f}"
              f"{cpu[lib] / cpu['plain']:>10.3f}{times[ref]:>10.1f}"
              f"{times[ref] / times['plain']:>10.3f}{model_ratio:>8.3f}{extra}")
    print("model = 1 + (extra forwards / n) x (forward share of a step, forward with grad on); "
          "overhead = time / no-checkpoint time; lib rounds = range of the per-round ratios")
    print("anchors: Chen et al. 2016, +30% running time (1000-layer ResNet, 48 GB -> 7 GB); "
          "OpenAI gradient-checkpointing, +20% computation time")


COMMANDS = {"checkpointing": bench_checkpointing}
