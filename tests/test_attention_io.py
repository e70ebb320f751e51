"""lib/attention_io.py: the counting forward and backward passes (standard and tiled)
against the reference and autograd, their counted traffic against the IO formulas,
tile_plan against the kernels' rules and the spec, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.attention import allowed_keys, attention_reference
from lib.attention_io import (
    AttentionTraffic,
    attention_standard,
    attention_standard_backward,
    attention_tiled,
    attention_tiled_backward,
    flash_attention_backward_io,
    flash_attention_io,
    sram_block,
    standard_attention_backward_io,
    standard_attention_io,
    tile_plan,
)
from lib.memory import TensorMemoryTracker


def qkv(b, h, n_q, n_k, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype) for n in (n_q, n_k, n_k)]


def close(a, b, atol):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_k, block_m, block_n", [(1, 1, 4, 4), (50, 50, 16, 8),
                                                        (37, 101, 32, 16), (64, 20, 16, 16)])
def test_tiled_matches_reference(n_q, n_k, block_m, block_n, causal):
    q, k, v = qkv(2, 2, n_q, n_k, 12)
    with torch.no_grad():
        out, _ = attention_tiled(q, k, v, causal, block_m=block_m, block_n=block_n)
        close(out, attention_reference(q, k, v, causal), 1e-5)


@pytest.mark.parametrize("n, d, block", [(100, 8, 16), (256, 64, 64), (257, 32, 1000)])
def test_tiled_traffic_equals_the_model(n, d, block):
    """Counted bytes = Q once + K, V once per query block + O once + fp32 L (eq. 11)."""
    q, k, v = qkv(1, 1, n, n, d, dtype=torch.float16)
    with torch.no_grad():
        _, traffic = attention_tiled(q, k, v, block_m=block, block_n=block)
    assert traffic.total == flash_attention_io(n, d, block, itemsize=2)
    assert traffic.reads["k"] == traffic.reads["v"] == math.ceil(n / block) * n * d * 2
    assert traffic.total < standard_attention_io(n, d, 2)


@pytest.mark.parametrize("n_q, n_k, causal", [(64, 64, True), (37, 101, True), (90, 30, True),
                                              (50, 70, False)])
def test_tile_plan_is_what_the_tiled_forward_visits(n_q, n_k, causal):
    q, k, v = qkv(1, 1, n_q, n_k, 8)
    visited = set()
    with torch.no_grad():
        attention_tiled(q, k, v, causal, block_m=16, block_n=32,
                        on_tile=lambda i, j, *_: visited.add((i, j)))
    plan = tile_plan(n_q, n_k, 16, 32, causal)
    assert visited == {tuple(ij) for ij in (plan > 0).nonzero().tolist()}


def test_tile_plan_counts_for_a_square_causal_grid():
    plan = tile_plan(256, 256, 64, 64, causal=True)
    assert torch.equal(plan, torch.tensor([[2, 0, 0, 0], [1, 2, 0, 0], [1, 1, 2, 0],
                                           [1, 1, 1, 2]], dtype=torch.int8))
    assert torch.equal(tile_plan(100, 100, 64, 64)[:, 1], torch.tensor([2, 2], dtype=torch.int8))
    assert (tile_plan(64, 300, 64, 64, n_mask=70)[0] == torch.tensor([1, 1, 1, 2, 2])).all()


def test_io_model_scales_as_n2_d2_over_m():
    """With the SRAM-filling block the K, V traffic grows as N^2 d^2 / M (eq. 12)."""
    n, m = 3 * 2**14, 192 * 1024  # N a multiple of every block below: no rounding
    traffic = {d: flash_attention_io(n, d, sram_block(m, d)) for d in (32, 64, 128)}
    kv = {d: t - 4 * n * d - 4 * n for d, t in traffic.items()}  # minus Q, O and L
    assert kv[64] / kv[32] == pytest.approx(4, rel=0.02)
    assert kv[128] / kv[64] == pytest.approx(4, rel=0.02)


def test_tiled_needs_far_less_memory_than_the_reference():
    """Tracked tensor bytes at N = 1024: the reference holds N x N score matrices."""
    q, k, v = (t.detach() for t in qkv(1, 1, 1024, 1024, 64))
    with torch.no_grad():
        with TensorMemoryTracker() as ref:
            attention_reference(q, k, v)
        with TensorMemoryTracker() as tiled:
            attention_tiled(q, k, v, block_m=128, block_n=128)
    assert ref.peak >= 3 * 1024 * 1024 * 4  # S, exp(S - m) and P, fp32
    assert ref.peak > 10 * tiled.peak


# fp32 tolerances: both sides compute in fp32 and sum at most ~100 products of magnitude
# <= ~10 (scores, and dS K with |dS| ~ 1): a few hundred ulps of 1, 2^-24 each, < 1e-5
FP32_ATOL = 2e-5


def reference_grads(q, k, v, causal, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, lse = attention_reference(q, k, v, causal, return_lse=True)
    return out.detach(), lse.detach(), torch.autograd.grad(out, (q, k, v), do)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_k, block_m, block_n", [(1, 1, 4, 4), (50, 50, 16, 8),
                                                        (37, 101, 32, 16), (90, 30, 16, 16)])
def test_tiled_backward_matches_autograd(n_q, n_k, block_m, block_n, causal):
    """dQ, dK, dV of the kernels' loops = autograd through the reference; with causal and
    Nq > Nk the first queries see no key (L = -inf): zero gradient, no NaN."""
    q, k, v = qkv(2, 2, n_q, n_k, 12, seed=3)
    do = torch.randn(2, 2, n_q, 12, generator=torch.Generator().manual_seed(4))
    out, lse, ref = reference_grads(q, k, v, causal, do)
    dq, dk, dv, _ = attention_tiled_backward(q, k, v, out, lse, do, causal,
                                             block_m=block_m, block_n=block_n)
    for got, want in zip((dq, dk, dv), ref, strict=True):
        close(got, want, FP32_ATOL)


@pytest.mark.parametrize("n, d, block_m, block_n", [(100, 8, 16, 32), (256, 64, 64, 64),
                                                    (257, 32, 64, 48), (40, 16, 1000, 7)])
def test_tiled_backward_traffic_equals_the_model(n, d, block_m, block_n):
    """Counted bytes = eq. 14: K, V once and Q, dO, L, D once per key block (dK, dV);
    Q, dO, L, D once and K, V once per query block (dQ); D from O and dO."""
    q, k, v = qkv(1, 1, n, n, d, dtype=torch.float16)
    out, lse = attention_tiled(q, k, v, block_m=block_m, block_n=block_n)[0], None
    lse = attention_reference(q, k, v, return_lse=True)[1]
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).half()
    *_, traffic = attention_tiled_backward(q, k, v, out, lse, do, block_m=block_m,
                                           block_n=block_n)
    assert traffic.total == flash_attention_backward_io(n, d, block_m, block_n, itemsize=2)
    assert traffic.reads["k"] == (1 + math.ceil(n / block_m)) * n * d * 2
    assert traffic.reads["q"] == (1 + math.ceil(n / block_n)) * n * d * 2
    assert traffic.total < standard_attention_backward_io(n, d, 2)


def test_causal_tiles_are_skipped_in_the_backward():
    """Causal: about half the tiles, so less traffic than the model without a mask."""
    q, k, v = qkv(1, 1, 256, 256, 16)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    out, lse, _ = reference_grads(q, k, v, True, do)
    *_, causal = attention_tiled_backward(q, k, v, out, lse, do, True, block_m=32,
                                          block_n=32)
    full = flash_attention_backward_io(256, 16, 32, 32, itemsize=4)
    assert causal.total < 0.75 * full


@pytest.mark.parametrize("n_q, n_k, causal", [(64, 64, True), (37, 101, True), (90, 30, True),
                                              (50, 70, False)])
def test_tile_plans_are_what_the_tiled_backward_visits(n_q, n_k, causal):
    q, k, v = qkv(1, 1, n_q, n_k, 8)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    out, lse, _ = reference_grads(q, k, v, causal, do)
    visited = {"dkdv": set(), "dq": set()}
    attention_tiled_backward(q, k, v, out, lse, do, causal, block_m=16, block_n=32,
                             on_tile=lambda kind, i, j: visited[kind].add((i, j)))
    for kind, tiles in visited.items():
        plan = tile_plan(n_q, n_k, 16, 32, causal, kind=kind)
        assert tiles == {tuple(ij) for ij in (plan > 0).nonzero().tolist()}
    assert torch.equal(tile_plan(n_q, n_k, 16, 32, causal, kind="dq"),
                       tile_plan(n_q, n_k, 16, 32, causal))


def test_dkdv_plan_masks_whole_columns_of_padding_and_mask_keys():
    """A key block holding padding keys or explicitly masked keys is masked all the way
    down its column (the dK, dV kernel's rule), not only where the forward masks it."""
    plan = tile_plan(64, 100, 16, 32, kind="dkdv")  # keys 96..99: a partial block
    assert (plan[:, 3] == 2).all() and (plan[:, :3] == 1).all()
    plan = tile_plan(64, 128, 16, 32, n_mask=40, kind="dkdv")  # mask on keys 88..127
    assert (plan[:, 2:] == 2).all() and (plan[:, :2] == 1).all()
    causal = tile_plan(128, 128, 32, 32, causal=True, kind="dkdv")
    assert torch.equal(causal, tile_plan(128, 128, 32, 32, causal=True))  # square: same


@pytest.mark.parametrize("n, d", [(1, 16), (100, 8), (129, 64)])
def test_standard_attention_counts_equal_the_models(n, d):
    """Algorithms 0 and 3 of Dao et al., run and counted: eqs. 2 and 13, and the same
    output and gradients as the reference."""
    q, k, v = qkv(1, 1, n, n, d, seed=5)
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(6))
    out_ref, _, ref = reference_grads(q, k, v, False, do)
    out, p, fwd = attention_standard(q.detach(), k.detach(), v.detach())
    close(out, out_ref, 1e-6)
    assert fwd.total == standard_attention_io(n, d, itemsize=4)
    assert [(kind, name) for kind, name, _ in fwd.by_tensor()] == [
        ("read", "q"), ("read", "k"), ("write", "S"), ("read", "S"), ("write", "P"),
        ("read", "P"), ("read", "v"), ("write", "o")]
    *grads, bwd = attention_standard_backward(q.detach(), k.detach(), v.detach(), p, do)
    for got, want in zip(grads, ref, strict=True):
        close(got, want, FP32_ATOL)
    assert bwd.total == standard_attention_backward_io(n, d, itemsize=4)


def test_traffic_events_and_by_tensor():
    t = AttentionTraffic()
    x = torch.zeros(3, 4, dtype=torch.float16)
    t.read("q", x)
    t.write("o", x[:1])
    t.read("q", x)
    assert t.events == [("read", "q", 24), ("write", "o", 8), ("read", "q", 24)]
    assert t.by_tensor() == [("read", "q", 48), ("write", "o", 8)]
    assert t.total == 56


def test_backward_io_model_scales_as_n2_d2_over_m():
    """With SRAM-filling blocks the backward's traffic also grows as N^2 d^2 / M
    (Theorem 5 of Dao et al.): x4 per doubling of d, once the N d terms are removed."""
    n, m = 3 * 2**14, 192 * 1024
    quad = {}
    for d in (32, 64, 128):
        b = sram_block(m, d)
        full = flash_attention_backward_io(n, d, b, b)
        quad[d] = full - flash_attention_backward_io(n, d, n, n)  # minus T = 1's traffic
    assert quad[64] / quad[32] == pytest.approx(4, rel=0.03)
    assert quad[128] / quad[64] == pytest.approx(4, rel=0.03)


@settings(max_examples=60, deadline=None)
@given(n_q=st.integers(1, 90), n_k=st.integers(1, 90), block_m=st.sampled_from([1, 16, 32, 64]),
       block_n=st.sampled_from([1, 16, 32, 64]), causal=st.booleans(),
       n_mask=st.integers(0, 90), kind=st.sampled_from(["fwd", "dkdv"]))
def test_tile_plan_agrees_with_the_spec(n_q, n_k, block_m, block_n, causal, n_mask, kind):
    """The kernels' rules (run on the host by tile_plan) against allowed_keys, the spec:
    an unmasked tile lies inside Nk and every query of it sees every key of it; a tile
    that is never visited holds no allowed pair; every allowed pair is visited."""
    n_mask = min(n_mask, n_k)
    plan = tile_plan(n_q, n_k, block_m, block_n, causal, n_mask, kind=kind)
    mask = torch.zeros(n_q, n_mask, dtype=torch.bool) if n_mask else None  # worst case
    allowed = allowed_keys(n_q, n_k, causal, mask)
    for i in range(plan.shape[0]):
        for j in range(plan.shape[1]):
            tile = allowed[i * block_m : (i + 1) * block_m, j * block_n : (j + 1) * block_n]
            if plan[i, j] == 1:
                assert (j + 1) * block_n <= n_k and tile.all()
            elif plan[i, j] == 0:
                assert not tile.any()


# ------------------------------------------------------------------------------- bad input

X = torch.randn(1, 2, 5, 8)
P = torch.rand(1, 2, 5, 5)
L = torch.randn(1, 2, 5)


@pytest.mark.parametrize(
    "fn, args, kwargs, error, words",
    [
        (attention_tiled, (X, X, X), {"block_m": 0}, ValueError, "block_m must be at least 1"),
        (attention_tiled, (X, X, X), {"block_n": 2.0}, TypeError, "block_n must be an int"),
        (attention_tiled, (X, X, X), {"block_n": "8"}, TypeError, "block_n must be an int"),
        (attention_tiled, (X, X, X), {"on_tile": 3}, TypeError, "on_tile must be callable"),
        (attention_tiled, (X.long(), X, X), {}, TypeError, "q must have dtype"),
        (attention_tiled, (X, X, X[0]), {}, ValueError, "v must have 4 dimensions"),
        (tile_plan, (0, 10, 16, 16), {}, ValueError, "n_q must be at least 1"),
        (tile_plan, (10, -1, 16, 16), {}, ValueError, "n_k must be at least 1"),
        (tile_plan, (10, 10, 16.0, 16), {}, TypeError, "block_m must be an int"),
        (tile_plan, (10, 10, 16, 0), {}, ValueError, "block_n must be at least 1"),
        (tile_plan, (10, 10, 16, 16), {"causal": "yes"}, TypeError, "causal must be a bool"),
        (tile_plan, (10, 10, 16, 16), {"n_mask": 11}, ValueError, "n_mask must be at most 10"),
        (tile_plan, (10, 10, 16, 16), {"n_mask": -1}, ValueError, "n_mask must be at least 0"),
        (standard_attention_io, (0, 64), {}, ValueError, "n must be at least 1"),
        (standard_attention_io, (64, 64.0), {}, TypeError, "d must be an int"),
        (standard_attention_io, (64, 64), {"itemsize": 0}, ValueError, "itemsize must be at"),
        (flash_attention_io, (64, 64, 0), {}, ValueError, "block_m must be at least 1"),
        (flash_attention_io, (64, -2, 16), {}, ValueError, "d must be at least 1"),
        (flash_attention_io, ("64", 64, 16), {}, TypeError, "n must be an int"),
        (flash_attention_io, (64, 64, 16), {"itemsize": 2.5}, TypeError, "itemsize must be"),
        (sram_block, (0, 64), {}, ValueError, "sram_bytes must be at least 1"),
        (sram_block, (1024, 0), {}, ValueError, "d must be at least 1"),
        (sram_block, (1024.0, 64), {}, TypeError, "sram_bytes must be an int"),
        (sram_block, (1024, 64), {"itemsize": True}, TypeError, "itemsize must be an int"),
        (tile_plan, (10, 10, 16, 16), {"kind": "bwd"}, ValueError, "kind must be one of"),
        (standard_attention_backward_io, (64, 64.0), {}, TypeError, "d must be an int"),
        (standard_attention_backward_io, (-1, 64), {}, ValueError, "n must be at least 1"),
        (flash_attention_backward_io, (64, 64, 16, 0), {}, ValueError, "block_n must be at"),
        (flash_attention_backward_io, (64, 64, "16", 16), {}, TypeError, "block_m must be"),
        (attention_standard, (X, X[..., :4], X), {}, ValueError, "same head dim"),
        (attention_standard, (X, X, X), {"scale": float("nan")}, ValueError, "scale"),
        (attention_standard_backward, (X, X, X, X, X), {}, ValueError, "p must have shape"),
        (attention_standard_backward, (X, X, X, P, X[0]), {}, ValueError, "do must have"),
        (attention_standard_backward, (X, X, X, P.half(), X), {}, ValueError, "dtype"),
        (attention_tiled_backward, (X, X, X, X, L[..., :3], X), {}, ValueError,
         "lse must have shape"),
        (attention_tiled_backward, (X, X, X, X, L.double(), X), {}, TypeError,
         "lse must have dtype"),
        (attention_tiled_backward, (X, X, X, X[..., :4], L, X), {}, ValueError,
         "out must have the shape of q"),
        (attention_tiled_backward, (X, X, X, X, L, "dO"), {}, TypeError,
         "do must be a torch.Tensor"),
        (attention_tiled_backward, (X, X, X, X, L, X), {"block_m": 0}, ValueError,
         "block_m must be at least 1"),
        (attention_tiled_backward, (X, X, X, X, L, X), {"on_tile": 1}, TypeError,
         "on_tile must be callable"),
        (attention_tiled_backward, (X, X, X, X, L, X), {"causal": 1}, TypeError,
         "causal must be a bool"),
    ],
)
def test_bad_input_is_named(fn, args, kwargs, error, words):
    with pytest.raises(error, match=words):
        fn(*args, **kwargs)
