"""``python -m lib.bench unscale``: chapter 2's one-launch unscale against PyTorch's fused op."""

from __future__ import annotations

import functools

import torch

from ..loss_scaling import unscale_and_check_
from . import gpu_time_ms, needs_cuda


def bench_unscale(args) -> None:
    """GB/s of the one-launch unscale + inf check vs PyTorch's fused op on a 24-layer
    transformer's gradients (needs CUDA)."""
    def check():
        grads = [torch.randn(n) for n in (1, 300, 70000)]
        expected = [g * 0.5 for g in grads]
        found = unscale_and_check_(grads, torch.zeros(()), torch.tensor(0.5), backend="triton")
        assert found.item() == 0
        assert all(torch.equal(g, e) for g, e in zip(grads, expected, strict=True))

    if not needs_cuda("unscale", check):
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


COMMANDS = {"unscale": bench_unscale}
