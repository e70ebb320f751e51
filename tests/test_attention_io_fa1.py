"""lib/attention_io_fa1.py: Algorithms 1 and 4 of Dao et al. (2022), keys outside,
against the reference and autograd in float64; their counted traffic against the
closed-form models; the loop order; bad input."""

import math

import pytest
import torch

from lib.attention import attention_reference
from lib.attention_io import attention_tiled, flash_attention_io
from lib.attention_io_fa1 import (
    attention_fa1,
    attention_fa1_backward,
    fa1_attention_backward_io,
    fa1_attention_io,
)


def qkv(b, h, n_q, n_k, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64).to(dtype)
            for n in (n_q, n_k, n_k)]


# float64 on both sides: each output or gradient entry sums at most ~100 products of
# magnitude <= ~10, so the two orders of summation differ by a few hundred units of
# 2^-53 (1.1e-16) times 10: < 1e-12. (Measured: at most 4e-15 on these shapes.)
FP64_ATOL = 1e-12
SHAPES = [(1, 1, 4, 4), (50, 50, 16, 8), (37, 101, 32, 16), (90, 30, 16, 16),
          (64, 17, 64, 64)]


def close(a, b, atol=FP64_ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_k, block_m, block_n", SHAPES)
def test_fa1_forward_matches_reference(n_q, n_k, block_m, block_n, causal):
    """Nq != Nk, lengths that are no multiple of the blocks, length 1; with causal and
    Nq > Nk the first queries see no key: O = 0 as in the reference, l = 0, m = -inf."""
    q, k, v = qkv(2, 2, n_q, n_k, 12)
    out, l, m, _ = attention_fa1(q, k, v, causal, block_m=block_m, block_n=block_n,
                                 return_stats=True)
    ref, lse = attention_reference(q, k, v, causal, return_lse=True)
    close(out, ref)
    assert l.dtype == m.dtype == torch.float64
    close(m + torch.log(l), lse)  # L = m + log l (eq. 6), -inf where no key is seen


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q, n_k, block_m, block_n", SHAPES)
def test_fa1_backward_matches_autograd(n_q, n_k, block_m, block_n, causal):
    q, k, v = qkv(2, 2, n_q, n_k, 12, seed=3)
    do = torch.randn(2, 2, n_q, 12, generator=torch.Generator().manual_seed(4),
                     dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad(attention_reference(*leaves, causal), leaves, do)
    out, l, m, _ = attention_fa1(q, k, v, causal, block_m=block_m, block_n=block_n,
                                 return_stats=True)
    *grads, _ = attention_fa1_backward(q, k, v, out, l, m, do, causal,
                                       block_m=block_m, block_n=block_n)
    for got, ref in zip(grads, want, strict=True):
        assert not got.isnan().any()
        close(got, ref)


def fp16_store_bound(q, k, v, block_n):
    """Error bound, per entry, of Algorithm 1's fp16 stores of O (line 12).

    After key block j, O_i holds the attention over the first j key blocks, O^(j), and is
    rounded to fp16: an error of at most half an ulp, 2^-11 |O^(j)|. The later steps
    multiply that error by l^(j) e^{m^(j) - m} / l = e^{L^(j) - L}, the share of the
    softmax weight in the first j blocks, so the final O is off by at most
    sum_j 2^-11 |O^(j)| e^{L^(j) - L} (to first order; the last store has weight 1)."""
    o_all, lse_all = attention_reference(q, k, v, return_lse=True)
    bound = torch.zeros_like(o_all)
    for end in range(block_n, k.shape[-2] + block_n, block_n):
        o_j, lse_j = attention_reference(q, k[..., :end, :], v[..., :end, :],
                                         return_lse=True)
        bound += 2**-11 * o_j.abs() * torch.exp(lse_j - lse_all)[..., None]
    return bound


def test_fp32_and_fp16_outputs_stay_close():
    """Against the fp64 reference on the same (rounded) inputs. fp32: within 2e-5, the
    bound of tests/test_attention_io.py for fp32 arithmetic. fp16: that plus the rounding
    of O to fp16 at each of the T_c = 8 stores, bounded entry by entry
    (:func:`fp16_store_bound`; measured: errors at most 0.65 of it over seeds 7-11)."""
    q, k, v = qkv(1, 2, 70, 130, 16, seed=7)
    for dtype in (torch.float32, torch.float16):
        inputs = [t.to(dtype) for t in (q, k, v)]
        exact = [t.double() for t in inputs]
        ref = attention_reference(*exact)
        out, _ = attention_fa1(*inputs, block_m=16, block_n=17)
        stores = 0 if dtype == torch.float32 else fp16_store_bound(*exact, block_n=17)
        assert ((out.double() - ref).abs() <= 2e-5 + stores).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("n, d, block_m, block_n", [(100, 8, 16, 32), (256, 64, 64, 64),
                                                    (257, 32, 64, 48), (40, 16, 7, 1000),
                                                    (1024, 64, 64, 384)])
def test_fa1_traffic_equals_the_models(n, d, block_m, block_n, dtype):
    """Counted bytes = the closed forms, exactly, for inputs of 2, 4 and 8 bytes (l and
    m in 4, 4 and 8); K and V read once, Q once per key block."""
    q, k, v = qkv(1, 1, n, n, d, dtype=dtype, seed=1)
    out, l, m, fwd = attention_fa1(q, k, v, block_m=block_m, block_n=block_n,
                                   return_stats=True)
    item, t_c = q.element_size(), math.ceil(n / block_n)
    assert fwd.total == fa1_attention_io(n, d, block_n, itemsize=item)
    assert fwd.reads["k"] == fwd.reads["v"] == n * d * item
    assert fwd.reads["q"] == t_c * n * d * item
    assert fwd.writes["o"] == (1 + t_c) * n * d * item  # line 2, then lines 12 per step
    do = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    *_, bwd = attention_fa1_backward(q, k, v, out, l, m, do, block_m=block_m,
                                     block_n=block_n)
    assert bwd.total == fa1_attention_backward_io(n, d, block_n, itemsize=item)
    assert bwd.reads["dq"] == t_c * n * d * item
    assert bwd.writes["dk"] == bwd.writes["dv"] == 2 * n * d * item  # line 5 + line 24


def test_query_block_does_not_change_the_count_and_the_mask_skips_nothing():
    q, k, v = qkv(1, 1, 200, 200, 16, dtype=torch.float16)
    totals = {attention_fa1(q, k, v, causal, block_m=b, block_n=64)[1].total
              for b in (1, 16, 64, 200) for causal in (False, True)}
    assert totals == {fa1_attention_io(200, 16, 64)}


def test_keys_outside_queries_inside():
    """The loop order of Algorithm 1 and 4: j outer, i inner, every tile visited once;
    the statistics of a query block after its last key block are the final ones."""
    q, k, v = qkv(1, 1, 40, 50, 8)
    fwd, bwd, state = [], [], {}

    def record(i, j, m, l, traffic):
        fwd.append((i, j))
        state[i] = (m.clone(), l.clone())

    out, l, m, _ = attention_fa1(q, k, v, block_m=16, block_n=16, on_tile=record,
                                 return_stats=True)
    assert fwd == [(i, j) for j in range(4) for i in range(3)]
    assert torch.equal(torch.cat([state[i][0] for i in range(3)], -1), m)
    do = torch.ones_like(q)
    attention_fa1_backward(q, k, v, out, l, m, do, block_m=16, block_n=16,
                           on_tile=lambda i, j: bwd.append((i, j)))
    assert bwd == fwd


def test_fa1_moves_more_than_our_loop_order_at_the_same_blocks():
    """Keys outside re-reads and re-writes O, l, m: more bytes than queries outside."""
    q, k, v = qkv(1, 1, 512, 512, 64, dtype=torch.float16)
    for b in (64, 128, 256):
        fa1 = attention_fa1(q, k, v, block_m=b, block_n=b)[1].total
        ours = attention_tiled(q, k, v, block_m=b, block_n=b)[1].total
        assert ours == flash_attention_io(512, 64, b) < fa1


# ------------------------------------------------------------------------------- bad input

X = torch.randn(1, 2, 5, 8)
S = torch.randn(1, 2, 5)


@pytest.mark.parametrize(
    "fn, args, kwargs, error, words",
    [
        (attention_fa1, (X, X, X), {"block_m": 0}, ValueError, "block_m must be at least 1"),
        (attention_fa1, (X, X, X), {"block_n": 2.0}, TypeError, "block_n must be an int"),
        (attention_fa1, (X, X, X), {"block_n": "8"}, TypeError, "block_n must be an int"),
        (attention_fa1, (X, X, X), {"on_tile": 3}, TypeError, "on_tile must be callable"),
        (attention_fa1, (X, X, X), {"return_stats": 1}, TypeError,
         "return_stats must be a bool"),
        (attention_fa1, (X.long(), X, X), {}, TypeError, "q must have dtype"),
        (attention_fa1, (X, X, X[0]), {}, ValueError, "v must have 4 dimensions"),
        (attention_fa1, (X, X[..., :4], X), {}, ValueError, "same head dim"),
        (attention_fa1, (X, X, X), {"scale": float("nan")}, ValueError, "scale"),
        (attention_fa1, (X, X, X), {"scale": "1"}, TypeError, "scale"),
        (attention_fa1, (X, X, X), {"causal": "yes"}, TypeError, "causal must be a bool"),
        (attention_fa1, (X[..., :0, :], X, X), {}, ValueError, "at least one query"),
        (attention_fa1_backward, (X, X, X, X, S[..., :3], S, X), {}, ValueError,
         r"l must have shape \(B, H, Nq\)"),
        (attention_fa1_backward, (X, X, X, X, S, S[0], X), {}, ValueError,
         r"m must have shape \(B, H, Nq\)"),
        (attention_fa1_backward, (X, X, X, X, S.double(), S, X), {}, TypeError,
         "l must have dtype"),
        (attention_fa1_backward, (X, X, X, X, S, "m", X), {}, TypeError,
         "m must be a torch.Tensor"),
        (attention_fa1_backward, (X, X, X, X[..., :4], S, S, X), {}, ValueError,
         "out must have the shape of q"),
        (attention_fa1_backward, (X, X, X, X, S, S, X.half()), {}, ValueError, "dtype"),
        (attention_fa1_backward, (X, X, X, X, S, S, "dO"), {}, TypeError,
         "do must be a torch.Tensor"),
        (attention_fa1_backward, (X, X, X, X, S, S, X), {"block_n": -1}, ValueError,
         "block_n must be at least 1"),
        (attention_fa1_backward, (X, X, X, X, S, S, X), {"on_tile": 1}, TypeError,
         "on_tile must be callable"),
        (attention_fa1_backward, (X, X, X, X, S, S, X), {"causal": 1}, TypeError,
         "causal must be a bool"),
        (fa1_attention_io, (0, 64, 16), {}, ValueError, "n must be at least 1"),
        (fa1_attention_io, (64, 64.0, 16), {}, TypeError, "d must be an int"),
        (fa1_attention_io, ("64", 64, 16), {}, TypeError, "n must be an int"),
        (fa1_attention_io, (64, 64, 0), {}, ValueError, "block_n must be at least 1"),
        (fa1_attention_io, (64, 64, 16), {"itemsize": 2.5}, TypeError, "itemsize must be"),
        (fa1_attention_backward_io, (64, -2, 16), {}, ValueError, "d must be at least 1"),
        (fa1_attention_backward_io, (64, 64, None), {}, TypeError, "block_n must be"),
        (fa1_attention_backward_io, (64, 64, 16), {"itemsize": 0}, ValueError,
         "itemsize must be at least 1"),
    ],
)
def test_bad_input_is_named(fn, args, kwargs, error, words):
    with pytest.raises(error, match=words):
        fn(*args, **kwargs)
