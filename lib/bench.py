"""Benchmarks a GPU user can run: ``python -m lib.bench <command>``.

Commands:
  compile   compile every Triton kernel ahead of time for sm_90a and sm_80 and print
            registers, spill bytes, shared memory and tensor-core use (works with no GPU)
  softmax   GB/s of lib.softmax against torch.softmax (needs CUDA)
  unscale   GB/s of lib.floating_point's one-launch unscale + inf check against PyTorch's
            fused op, on the gradients of a 24-layer transformer (needs CUDA)
  checkpointing  saved-activation bytes and forward calls of a 64-layer MLP for k = 1..64
            segments against the model, and the wall-time overhead of recomputation
            (CPU or CUDA; peak CUDA memory too on a GPU)
  attention TFLOP/s of lib.attention.flash_attention (forward, forward + backward) against
            torch SDPA for N = 512..16k, d = 64/128, causal or not, fp16/bf16 (needs CUDA)
  attention-memory  peak extra CPU memory of attention_tiled vs attention_reference at
            N = 1k, 4k, 16k (d = 64), each measured in a fresh process (CPU, Linux for RSS)

Timings are never asserted in tests: speed is measured here and quoted, on the GPU it
was measured on. Without CUDA the timing commands run a tiny correctness check through
Triton's interpreter, say that they need CUDA, and exit 0.
"""

from __future__ import annotations

import argparse
import functools
import math
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


def bench_unscale(args) -> None:
    from .floating_point import unscale_and_check_

    def check():
        grads = [torch.randn(n) for n in (1, 300, 70000)]
        expected = [g * 0.5 for g in grads]
        found = unscale_and_check_(grads, torch.zeros(()), torch.tensor(0.5), backend="triton")
        assert found.item() == 0
        assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))

    if not _needs_cuda("unscale", check):
        return
    d, layers, vocab = 1024, 24, 50304  # GPT-2 medium's parameter tensors (about 350M values)
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,),
             (d,), (d,), (d,), (d,)]
    shapes = [(vocab, d), (1024, d)] + block * layers + [(d,), (d,)]
    print(f"{len(shapes)} tensors; lib: one launch; torch: one fused call per dtype")
    print(f"{'dtype':<10}{'lib GB/s':>10}{'torch GB/s':>12}{'ratio':>7}")
    for dtype in (torch.float32, torch.bfloat16):
        grads = [torch.randn(s, device="cuda", dtype=dtype) for s in shapes]
        moved = 2 * sum(g.numel() * g.element_size() for g in grads)  # read + write
        found, inv = torch.zeros((), device="cuda"), torch.ones((), device="cuda")
        t_lib = gpu_time_ms(functools.partial(unscale_and_check_, grads, found, inv,
                                              backend="triton"))
        t_ref = gpu_time_ms(functools.partial(torch._amp_foreach_non_finite_check_and_unscale_,
                                              grads, found, inv))
        name = str(dtype).removeprefix("torch.")
        print(f"{name:<10}{moved / t_lib / 1e6:>10.0f}{moved / t_ref / 1e6:>12.0f}"
              f"{t_ref / t_lib:>7.2f}")


def bench_checkpointing(args) -> None:
    import time

    from .backend import default_device
    from .checkpointing import (
        checkpoint_sequential,
        forward_calls,
        forward_count,
        mlp_chain,
        optimal_segments,
        peak_activations,
        peak_memory,
        saved_activation_bytes,
        segment_sizes,
    )

    n, device = 64, default_device()
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

    # Time: a compute-bound size; configurations interleaved, best of several rounds.
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
        with torch.no_grad():
            model(x)

    calls = {name: functools.partial(step, fn) for name, fn in runs.items()}
    calls["forward"] = forward_only
    if CUDA:
        times = {name: gpu_time_ms(f) for name, f in calls.items()}
        cpu, kind = times, "CUDA, median of triton.testing.do_bench"
    else:
        times, cpu = {name: math.inf for name in calls}, {name: math.inf for name in calls}
        for _ in range(10):
            for name, f in calls.items():
                wall, proc = time.perf_counter(), time.process_time()
                f()
                times[name] = min(times[name], (time.perf_counter() - wall) * 1e3)
                cpu[name] = min(cpu[name], (time.process_time() - proc) * 1e3)
        kind = "CPU, 1 thread, best of 10 interleaved rounds"
    share = times["forward"] / times["plain"]
    print(f"one forward + backward, width {width}, batch {batch} ({kind}):")
    print(f"  no checkpointing {times['plain']:.1f} ms; a forward alone {times['forward']:.1f} ms "
          f"= {share:.3f} of the step")
    print(f"{'k':>4}{'lib ms':>9}{'overhead':>10}{'CPU-time':>10}{'torch ms':>10}{'overhead':>10}"
          f"{'model':>8}")
    for k in ks:
        model_ratio = 1 + (forward_count(n, k) - n) / n * share  # eq. 6: the extra forwards
        lib, ref = ("lib", k), ("torch", k)
        extra = f"  peak {peak_memory(runs[lib], x) / 2**20:.0f} MiB" if CUDA else ""
        print(f"{k:>4}{times[lib]:>9.1f}{times[lib] / times['plain']:>10.3f}"
              f"{cpu[lib] / cpu['plain']:>10.3f}{times[ref]:>10.1f}"
              f"{times[ref] / times['plain']:>10.3f}{model_ratio:>8.3f}{extra}")
    print("model = 1 + (extra forwards / n) x (forward share of a step); overhead = time / "
          "no-checkpoint time")
    print("anchors: Chen et al. 2016, +30% running time (1000-layer ResNet, 48 GB -> 7 GB); "
          "OpenAI gradient-checkpointing, +20% computation time")


def bench_attention(args) -> None:
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    from .attention import flash_attention

    def check():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, n, 40, generator=g, requires_grad=True)
                   for n in (37, 101, 101))
        out = flash_attention(q, k, v, causal=True, backend="triton")
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(37, 101))
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
        do = torch.randn(out.shape, generator=g)
        got = torch.autograd.grad(out, (q, k, v), do)
        for a, b in zip(got, torch.autograd.grad(ref, (q, k, v), do), strict=True):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=0)

    if not _needs_cuda("attention", check):
        return
    # 16k tokens per batch, model width 2048: B = 16384 / N, H = 2048 / d (as flash-attn's
    # benchmarks); FLOPs of the two matmuls 4 B H N^2 d (half when causal); backward = 2.5x
    print("TFLOP/s of lib flash_attention (Triton) vs torch SDPA; ratio = lib / SDPA")
    print(f"{'dtype':<6}{'d':>4}{'causal':>7}{'N':>7}{'fwd lib':>9}{'fwd sdpa':>9}{'ratio':>7}"
          f"{'f+b lib':>9}{'f+b sdpa':>9}{'ratio':>7}")
    for dtype in (torch.float16, torch.bfloat16):
        for d in (64, 128):
            for causal in (False, True):
                for n in (512, 1024, 2048, 4096, 8192, 16384):
                    batch, heads = max(1, 16384 // n), 2048 // d
                    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", dtype=dtype,
                                           requires_grad=True) for _ in range(3))
                    flops = 4 * batch * heads * n * n * d * (0.5 if causal else 1.0)
                    lib = functools.partial(flash_attention, q, k, v, causal=causal,
                                            backend="triton")
                    ref = functools.partial(F.scaled_dot_product_attention, q, k, v,
                                            is_causal=causal)  # square: top-left = ours
                    t = [gpu_time_ms(lib), gpu_time_ms(ref),
                         gpu_time_ms(functools.partial(_forward_backward, lib, (q, k, v))),
                         gpu_time_ms(functools.partial(_forward_backward, ref, (q, k, v)))]
                    tf = [flops / t[0] / 1e9, flops / t[1] / 1e9,
                          3.5 * flops / t[2] / 1e9, 3.5 * flops / t[3] / 1e9]
                    name = str(dtype).removeprefix("torch.")
                    print(f"{name:<6}{d:>4}{causal!s:>7}{n:>7}{tf[0]:>9.1f}{tf[1]:>9.1f}"
                          f"{t[1] / t[0]:>7.2f}{tf[2]:>9.1f}{tf[3]:>9.1f}{t[3] / t[2]:>7.2f}")


def _forward_backward(fn, inputs) -> None:
    out = fn()
    torch.autograd.grad(out, inputs, torch.ones_like(out))


def _attention_memory_one(method: str, n: int, d: int = 64, block: int = 128) -> None:
    """Print (json) the peak extra memory of one attention forward on CPU, in this process."""
    import json

    from .attention import attention_reference, attention_tiled
    from .memory import TensorMemoryTracker, peak_rss_extra, rss_measurable

    fn = {"reference": attention_reference,
          "tiled": functools.partial(attention_tiled, block_m=block, block_n=block)}[method]
    torch.set_num_threads(1)  # memory, not speed, is measured; small tiles run best on one
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        small = torch.randn(1, 1, 2 * block, d, generator=g)
        fn(small, small, small)  # warm up: thread pools and library buffers are not "extra"
        q, k, v = (torch.randn(1, 1, n, d, generator=g) for _ in range(3))
        rss = peak_rss_extra(lambda: fn(q, k, v)) if rss_measurable() else None
        with TensorMemoryTracker() as tracked:
            fn(q, k, v)
    print(json.dumps({"rss": rss, "tensors": tracked.peak}))


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def _ratio(a, b) -> str:
    return f"{a / b:.0f}x" if a is not None and b else "n/a"


def bench_attention_memory(args) -> None:
    """Peak extra memory of attention_tiled vs attention_reference, each run in a fresh process."""
    import json
    import subprocess

    d, block = 64, 128
    print(f"peak extra CPU memory of one forward, B = H = 1, d = {d}, fp32, tiled blocks "
          f"{block} x {block}\n'tensors' = live tensor bytes (lib.memory.TensorMemoryTracker);"
          "\n'RSS' = resident-set high-water mark above the level before the call")
    print(f"{'N':>6}{'reference':>22}{'tiled':>22}{'ratio':>16}")
    print(f"{'':>6}{'tensors MiB':>12}{'RSS MiB':>10}{'tensors MiB':>12}{'RSS MiB':>10}"
          f"{'tensors':>8}{'RSS':>8}")
    for n in (1024, 4096, 16384):
        res = {}
        for method in ("reference", "tiled"):
            code = ("from lib.bench import _attention_memory_one as f; "
                    f"f({method!r}, {n}, {d}, {block})")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        ref, tiled = res["reference"], res["tiled"]
        print(f"{n:>6}{_mib(ref['tensors']):>12}{_mib(ref['rss']):>10}"
              f"{_mib(tiled['tensors']):>12}{_mib(tiled['rss']):>10}"
              f"{_ratio(ref['tensors'], tiled['tensors']):>8}{_ratio(ref['rss'], tiled['rss']):>8}")
    print("FlashAttention's README (training, A100): 10x less memory at N = 2K, 20x at 4K")


COMMANDS = {"compile": bench_compile, "softmax": bench_softmax, "unscale": bench_unscale,
            "checkpointing": bench_checkpointing, "attention": bench_attention,
            "attention-memory": bench_attention_memory}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
