"""``python -m lib.bench attention`` and ``attention-memory``: chapter 7."""

from __future__ import annotations

import functools
import sys

import torch

from . import gpu_time_ms, needs_cuda


def bench_attention(args) -> None:
    """TFLOP/s of flash_attention (forward, forward + backward) against torch SDPA for
    N = 512..16k, d = 64/128, causal or not, fp16/bf16 (needs CUDA)."""
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    from ..attention import flash_attention

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

    if not needs_cuda("attention", check):
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

    from ..attention import attention_reference
    from ..attention_io import attention_tiled
    from ..memory import TensorMemoryTracker, peak_rss_extra, rss_measurable

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
    """Peak extra CPU memory of attention_tiled vs attention_reference at N = 1k, 4k, 16k
    (d = 64), each measured in a fresh process (CPU; Linux for RSS)."""
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
            code = ("from lib.bench.attention import _attention_memory_one as f; "
                    f"f({method!r}, {n}, {d}, {block})")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        ref, tiled = res["reference"], res["tiled"]
        print(f"{n:>6}{_mib(ref['tensors']):>12}{_mib(ref['rss']):>10}"
              f"{_mib(tiled['tensors']):>12}{_mib(tiled['rss']):>10}"
              f"{_ratio(ref['tensors'], tiled['tensors']):>8}{_ratio(ref['rss'], tiled['rss']):>8}")
    print("FlashAttention's README (training, A100): 10x less memory at N = 2K, 20x at 4K")


COMMANDS = {"attention": bench_attention, "attention-memory": bench_attention_memory}
