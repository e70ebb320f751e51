"""lib/attention.py: Triton kernels vs reference vs SDPA, masks, traffic counts, bad input."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.attention import MAX_HEAD_DIM, allowed_keys, attention_reference, flash_attention
from lib.attention_launch import _flash_bwd_triton, _flash_fwd_triton, launch_config

# Tolerances (absolute, on outputs of magnitude ~1). All math is fp32; what is left is the
# rounding of P to the input dtype before P V and of O to the output dtype. Gradients are
# sums over Nk (or Nq) of such rounded products, hence looser.
OUT_ATOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
GRAD_ATOL = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 8e-2}
DTYPES = list(OUT_ATOL)

# (B, H, Nq, Nk, d): length one, not multiples of any block, d not a power of two, Nq != Nk
SHAPES = [(1, 1, 1, 1, 16), (2, 3, 77, 77, 64), (1, 2, 130, 130, 40), (1, 2, 37, 101, 64)]


def qkv(b, h, n_q, n_k, d, dtype=torch.float32, seed=0, magnitude=1.0):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: (torch.randn(b, h, n, d, generator=g) * magnitude).to(dtype)  # noqa: E731
    return [t.requires_grad_() for t in (make(n_q), make(n_k), make(n_k))]


def sdpa(q, k, v, causal=False, allowed=None):
    """The oracle in fp32; causal is bottom-right aligned through causal_lower_right."""
    # imported here: torch.nn.attention.bias imports Triton, which must come after lib sets
    # TRITON_INTERPRET (lib.backend) when this file runs on its own
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = (t.float() for t in (q, k, v))
    mask = allowed
    if causal:
        mask = causal_lower_right(q.shape[-2], k.shape[-2])
        if allowed is not None:
            mask = mask._materialize(q.device) & allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def grads(out, inputs, do):
    return torch.autograd.grad(out, inputs, do)


def close(a, b, atol):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_sdpa_and_reference(shape, dtype, causal):
    """Outputs and gradients of the Triton path against SDPA (fp32) and the reference."""
    q, k, v = qkv(*shape, dtype=dtype)
    out = flash_attention(q, k, v, causal=causal, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    oracle = sdpa(q, k, v, causal)
    ref = attention_reference(q, k, v, causal=causal)
    close(out, oracle, OUT_ATOL[dtype])
    close(out, ref, OUT_ATOL[dtype])
    g_kernel = grads(out, (q, k, v), do)
    g_oracle = grads(oracle, (q, k, v), do.float())
    for g, g_ref in zip(g_kernel, g_oracle, strict=True):
        assert g.dtype == dtype
        close(g, g_ref, GRAD_ATOL[dtype])


def test_reference_matches_sdpa_fp32():
    """The spec against the external oracle, with a mask, causal bottom-right and both."""
    q, k, v = qkv(2, 2, 9, 23, 8, seed=3)
    mask = torch.rand(2, 9, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    full = allowed_keys(9, 23, mask=mask)[:, None]  # (B, 1, Nq, Nk)
    for causal in (False, True):
        close(attention_reference(q, k, v, causal), sdpa(q, k, v, causal), 1e-6)
        both = sdpa(q, k, v, causal, allowed=full)
        rows = both.isfinite().all(-1)  # SDPA gives NaN where a row sees no key
        ref = attention_reference(q, k, v, causal, mask=mask)
        close(ref[rows], both[rows], 1e-6)
        assert torch.equal(ref[~rows], torch.zeros_like(ref[~rows]))


def test_causal_is_bottom_right_not_sdpa_top_left():
    """With Nq < Nk the last query sees every key (a KV cache); SDPA's is_causal differs."""
    q, k, v = qkv(1, 1, 3, 8, 16)
    ours = flash_attention(q, k, v, causal=True, backend="triton")
    close(ours, sdpa(q, k, v, causal=True), 1e-5)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (ours - top_left).abs().max() > 0.1
    close(ours[..., -1, :], sdpa(q[..., -1:, :], k, v)[..., 0, :], 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_rows_that_see_no_key_are_zero_not_nan(backend):
    """Causal with Nq > Nk: the first Nq - Nk queries see no key; a mask row of all False."""
    q, k, v = qkv(1, 2, 6, 4, 16)
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[5] = False
    out, lse = flash_attention(q, k, v, causal=True, mask=mask, backend=backend,
                               return_lse=True)
    empty = torch.tensor([True, True, False, False, False, True])
    assert torch.equal(out[:, :, empty], torch.zeros_like(out[:, :, empty]))
    assert torch.isneginf(lse[:, :, empty]).all() and torch.isfinite(lse[:, :, ~empty]).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_mask_on_the_last_keys_matches_sdpa(causal):
    """A prefix of 40 keys plus a tree of 24 candidates: the mask covers only the last 24."""
    b, h, n_q, n_k, d = 2, 2, 24, 64, 32
    q, k, v = qkv(b, h, n_q, n_k, d, seed=5)
    tree = torch.rand(b, n_q, 24, generator=torch.Generator().manual_seed(2)) > 0.5
    tree |= torch.eye(24, dtype=torch.bool)  # every node sees itself
    allowed = torch.cat([torch.ones(b, n_q, n_k - 24, dtype=torch.bool), tree], -1)[:, None]
    out, lse = flash_attention(q, k, v, causal=causal, mask=tree, backend="triton",
                               return_lse=True)
    oracle = sdpa(q, k, v, causal, allowed=allowed)
    close(out, oracle, 1e-4)
    ref_out, ref_lse = attention_reference(q, k, v, causal, mask=tree, return_lse=True)
    close(lse, ref_lse, 1e-4)
    do = torch.randn_like(out)
    for g, g_ref in zip(grads(out, (q, k, v), do), grads(oracle, (q, k, v), do), strict=True):
        close(g, g_ref, 2e-4)
    # a 2-D mask is the same for every batch element
    out2 = flash_attention(q, k, v, causal=causal, mask=tree[0], backend="triton")
    close(out2[0], out[0], 1e-6)


def test_lse_and_its_gradient():
    """L = logsumexp of the scaled scores; a loss on L back-propagates through the kernel."""
    q, k, v = qkv(1, 2, 20, 33, 24, seed=7)
    out, lse = flash_attention(q, k, v, scale=0.3, backend="triton", return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 20)
    close(lse, torch.logsumexp(0.3 * q @ k.transpose(-2, -1), -1), 1e-5)
    ref_out, ref_lse = attention_reference(q, k, v, scale=0.3, return_lse=True)
    w = torch.randn_like(lse)
    g = grads((out.sum() + (w * lse).sum()), (q, k, v), None)
    g_ref = grads((ref_out.sum() + (w * ref_lse).sum()), (q, k, v), None)
    for a, b in zip(g, g_ref, strict=True):
        close(a, b, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scores_near_1e4_stay_finite(dtype):
    """|s| ~ 1e4: exp would overflow in any dtype without the running max."""
    q, k, v = qkv(1, 1, 40, 50, 16, dtype=torch.float32)
    q = (q.detach() * 50).to(dtype).requires_grad_()  # |scores| up to ~ 1e4
    k = (k.detach() * 50).to(dtype).requires_grad_()
    v = v.detach().to(dtype).requires_grad_()
    s = attention_reference(q, k, v, return_lse=True)[1]
    assert s.abs().max() > 5e3
    out, lse = flash_attention(q, k, v, backend="triton", return_lse=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    close(out, sdpa(q, k, v), OUT_ATOL[dtype])
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# --------------------------------------------- very negative log-sum-exp (issue 7, part 1)

# Rounding of one value to each dtype: one ulp (Triton's interpreter truncates fp32 to
# bf16, triton/runtime/interpreter.py _convert_float), and half the subnormal spacing.
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}
ETA = {torch.float16: 2.0**-25, torch.bfloat16: 2.0**-134, torch.float32: 2.0**-150}


def backward_error_bound(q, k, v, do, causal, mask, scale):
    """First-order elementwise bound on |kernel gradient - exact gradient| (eqs. 8-10).

    The kernels round P and dS to the input dtype before their dots (one ulp each) and
    O before D = rowsum(dO o O) is formed; S and L are recomputed in fp32 (relative error
    d 2^-24 of |Q||K|^T each), and fp32 sums of n terms add n 2^-24 of the sum of
    magnitudes. Both the kernel's and the reference's gradients are rounded to the dtype.
    Returns the bounds for dQ, dK, dV (float64, the shapes of q, k, v).
    """
    qf, kf, vf, dof = (t.detach().double() for t in (q, k, v, do))
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    u, eta, g = ULP[q.dtype], ETA[q.dtype], 2.0**-24
    allowed = allowed_keys(n_q, n_k, causal, mask)
    allowed = allowed[:, None] if allowed.dim() == 3 else allowed
    s = (scale * qf @ kf.transpose(-2, -1)).masked_fill(~allowed, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)  # rows that see no key: P = 0
    dp = dof @ vf.transpose(-2, -1)
    delta = (p * dp).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    err_s = d * g * scale * (qf.abs() @ kf.abs().transpose(-2, -1))
    err_p = p * (2 * err_s + u + n_k * g) + eta  # S and L recomputed, P rounded
    err_delta = (u + d * g) * (dof.abs() * (p @ vf).abs()).sum(-1, keepdim=True)
    err_ds = u * ds.abs() + err_p * (dp - delta).abs() + p * err_delta + eta
    bound_q = scale * (err_ds + n_k * g * ds.abs()) @ kf.abs()
    bound_k = scale * (err_ds + n_q * g * ds.abs()).transpose(-2, -1) @ qf.abs()
    bound_v = (err_p + n_q * g * p).transpose(-2, -1) @ dof.abs()
    return bound_q, bound_k, bound_v


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_very_negative_lse_gives_finite_gradients(dtype, causal, masked):
    """Every score of a row very negative, Nq and Nk not multiples of any block size.

    The padding keys of the last key tile load k = v = 0, so their p = exp(-L) overflows
    the dtype (L < -11 in fp16, < -88 in fp32); if that tile ran unmasked, dS K added
    inf * 0 = NaN to dQ. Gradients must be finite and within the rounding bound of
    :func:`backward_error_bound` of the exact ones (twice it: the bound is first order).
    """
    b, h, n_q, n_k, d = 1, 2, 37, 101, 16
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, d, generator=gen) for n in (n_q, n_k, n_k, n_q))
    shift = 12.0 if dtype == torch.float16 else 25.0  # scores near -shift^2 / sqrt(d)
    q[..., 0] -= shift
    k[..., 0] += shift
    mask = torch.rand(n_q, 20, generator=gen) > 0.3 if masked else None
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    do = do.to(dtype)
    out, lse = flash_attention(q, k, v, causal=causal, mask=mask, backend="triton",
                               return_lse=True)
    ref, ref_lse = attention_reference(q, k, v, causal=causal, mask=mask, return_lse=True)
    seen = ref_lse.isfinite()
    overflow = {torch.float16: -11.1, torch.bfloat16: -88.8, torch.float32: -88.8}[dtype]
    assert ref_lse[seen].max() < overflow  # exp(-L) overflows the dtype: the hard case
    close(lse[seen], ref_lse[seen], 1e-4)
    close(out, ref, OUT_ATOL[dtype])
    got = grads(out, (q, k, v), do)
    bounds = backward_error_bound(q, k, v, do, causal, mask, 1 / math.sqrt(d))
    for name, g, g_ref, bound in zip("qkv", got, grads(ref, (q, k, v), do), bounds,
                                     strict=True):
        assert torch.isfinite(g).all(), f"d{name} is not finite"
        bound = 2 * bound + 2 * ULP[dtype] * g_ref.double().abs() + 2 * ETA[dtype]
        excess = ((g.double() - g_ref.double()).abs() / bound).max()
        assert excess <= 1, f"d{name}: error {excess:.2f} times the rounding bound"


def _tf32(x, mode):
    """fp32 x kept to TF32's 10 mantissa bits: rounded to nearest, ties away ("rna", as
    cvt.rna.tf32.f32), or truncated ("rz", the worst a tensor core may do to an input)."""
    bits = x.view(torch.int32) + (0x1000 if mode == "rna" else 0)
    return (bits & ~0x1FFF).view(torch.float32)


def test_fp32_tf32x3_products_are_within_the_stated_bound():
    """fp32 inputs on a GPU multiply as Triton's tf32x3 (F32DotTC): a_big = tf32(a),
    a_small = a - a_big, and a_small b_big + a_big b_small + a_big b_big on TF32 tensor
    cores. The docstring of lib.attention_launch._precision states at most 5 2^-22 of
    |a| |b| per product; an emulation (sums in fp64, so only input rounding counts)
    stays within it, where a single TF32 product does not."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 96, generator=g) * torch.logspace(-4, 4, 96)  # wide magnitudes
    b = torch.randn(96, 48, generator=g)
    a_big, b_big = _tf32(a, "rna"), _tf32(b, "rna")
    t = lambda x: _tf32(x, "rz").double()  # noqa: E731
    tf32x3 = t(a - a_big) @ t(b_big) + t(a_big) @ t(b - b_big) + t(a_big) @ t(b_big)
    exact = a.double() @ b.double()
    bound = 5 * 2.0**-22 * (a.double().abs() @ b.double().abs())
    assert ((tf32x3 - exact).abs() <= bound).all()
    assert ((t(a) @ t(b) - exact).abs() > bound).any()


def test_fp32_beyond_head_dim_128_runs_the_reference(monkeypatch):
    """Documented routing: fp32 with d > 128 never reaches the kernels (their fp32 tiles
    spill registers on a GPU); fp16 with the same d does."""
    import lib.attention

    calls = []
    real = lib.attention._FlashAttention.apply
    monkeypatch.setattr(lib.attention._FlashAttention, "apply",
                        lambda *a: calls.append(a[0].dtype) or real(*a))
    q, k, v = (t.detach() for t in qkv(1, 1, 3, 5, 136))
    out = flash_attention(q, k, v, causal=True, backend="triton")
    assert calls == [] and torch.equal(out, attention_reference(q, k, v, causal=True))
    flash_attention(q.half(), k.half(), v.half(), backend="triton")
    assert calls == [torch.float16]


def test_noncontiguous_inputs():
    """(B, N, H, d) tensors viewed as (B, H, N, d), as a transformer produces them."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 3, 3 * 16, generator=g)
    q, k, v = (t.transpose(1, 2) for t in x.split(16, -1))
    assert not q.is_contiguous()
    close(flash_attention(q, k, v, causal=True, backend="triton"), sdpa(q, k, v, True), 1e-5)


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 2), h=st.integers(1, 2), n_q=st.integers(1, 70), n_k=st.integers(1, 70),
    d=st.sampled_from([8, 16, 24, 40, 64, 100]), causal=st.booleans(),
    mask_keys=st.one_of(st.none(), st.integers(1, 40)),
    blocks=st.sampled_from([(16, 16), (16, 32), (32, 16)]), split=st.booleans(),
    seed=st.integers(0, 999),
)
def test_any_shape_and_block_matches_reference(b, h, n_q, n_k, d, causal, mask_keys, blocks,
                                               split, seed):
    """Forward and backward kernels with small blocks: masked and unmasked tile phases, and
    the backward's split of the output columns into parts of 16 (used for d = 256)."""
    q, k, v = qkv(b, h, n_q, n_k, d, seed=seed)
    mask = None
    if mask_keys is not None:
        n_m = min(mask_keys, n_k)
        mask = torch.rand(b, n_q, n_m, generator=torch.Generator().manual_seed(seed)) > 0.4
    scale = 1 / math.sqrt(d)
    with torch.no_grad():
        out, lse = _flash_fwd_triton(q, k, v, causal, scale, mask, *blocks)
    ref, ref_lse = attention_reference(q, k, v, causal, scale, mask, return_lse=True)
    close(out, ref, 1e-5)
    assert torch.equal(lse.isneginf(), ref_lse.isneginf())
    close(lse.nan_to_num(neginf=0.0), ref_lse.nan_to_num(neginf=0.0), 1e-5)
    do = torch.randn_like(out)
    got = _flash_bwd_triton(q, k, v, out, lse, do, None, causal, scale, mask, *blocks,
                            block_do=16 if split else None)
    for g, g_ref in zip(got, grads(ref, (q, k, v), do), strict=True):
        close(g, g_ref, 1e-4)


def test_bench_attention_runs_on_cpu():
    done = subprocess.run([sys.executable, "-m", "lib.bench", "attention"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in done.stdout and "check" in done.stdout


# ------------------------------------------------------------------------------- bad input

X = torch.randn(1, 2, 5, 8)


@pytest.mark.parametrize(
    "args, kwargs, error, words",
    [
        ((torch.randn(2, 5, 8), X, X), {}, ValueError, "q must have 4 dimensions"),
        ((X, torch.randn(1, 2, 5, 8, 1), X), {}, ValueError, "k must have 4 dimensions"),
        ((X, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)), {}, ValueError,
         "same batch and head sizes"),
        ((X, torch.randn(1, 3, 5, 8), torch.randn(1, 3, 5, 8)), {}, ValueError,
         "same batch and head sizes"),
        ((X, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), {}, ValueError,
         "same head dim"),
        ((X, X, torch.randn(1, 2, 6, 8)), {}, ValueError, "v must have the shape of k"),
        ((X, X.half(), X), {}, ValueError, "q, k, v must have the same dtype"),
        ((X, X, X.to("meta")), {}, ValueError, "q, k, v must have the same device"),
        ((X.long(), X, X), {}, TypeError, "q must have dtype"),
        ((torch.randn(1, 1, 2, MAX_HEAD_DIM + 1),) * 3, {}, ValueError,
         "head dim d must be at most 256"),
        ((torch.randn(1, 2, 0, 8), X, X), {}, ValueError, "at least one query"),
        ((X, X, X), {"mask": torch.ones(4, 3, dtype=torch.bool)}, ValueError,
         "mask must have shape"),
        ((X, X, X), {"mask": torch.ones(2, 5, 3, dtype=torch.bool)}, ValueError,
         "mask must have shape"),
        ((X, X, X), {"mask": torch.ones(5, 6, dtype=torch.bool)}, ValueError,
         "mask covers the last Nm keys"),
        ((X, X, X), {"mask": torch.ones(5, 3)}, TypeError, "mask must have dtype bool"),
        ((X, X, X), {"mask": [[True]]}, TypeError, "mask must be a torch.Tensor"),
        ((X, X, X), {"mask": torch.ones(5, 3, dtype=torch.bool, device="meta")}, ValueError,
         "mask must be on q's device"),
        ((X, X, X), {"scale": "0.1"}, TypeError, "scale must be a real number"),
        ((X, X, X), {"scale": math.inf}, ValueError, "scale must be finite"),
        ((X, X, X), {"causal": 1}, TypeError, "causal must be a bool"),
        ((X, X, X), {"backend": "cuda"}, ValueError, "backend must be one of"),
        (([[1.0]], X, X), {}, TypeError, "q must be a torch.Tensor"),
    ],
)
def test_bad_input_is_named(args, kwargs, error, words):
    with pytest.raises(error, match=words):
        flash_attention(*args, **kwargs)


@pytest.mark.parametrize(
    "fn, args, kwargs, error, words",
    [
        (attention_reference, (X.long(), X.long(), X.long()), {}, TypeError, "q must have dtype"),
        (attention_reference, ([[1.0]], X, X), {}, TypeError, "q must be a torch.Tensor"),
        (attention_reference, (X, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)), {},
         ValueError, "same head dim"),
        (attention_reference, (X, X, X), {"causal": "no"}, TypeError, "causal must be a bool"),
        (attention_reference, (X, X, X), {"scale": math.nan}, ValueError, "scale must be finite"),
        (attention_reference, (X, X, X), {"return_lse": 1}, TypeError, "return_lse must be"),
        (attention_reference, (X, X, X), {"mask": torch.ones(5, 6, dtype=torch.bool)},
         ValueError, "mask covers the last Nm keys"),
        (attention_reference, (X, X, X[..., :3, :]), {}, ValueError, "v must have the shape"),
        (allowed_keys, (0, 4), {}, ValueError, "n_q must be at least 1"),
        (allowed_keys, (4, -1), {}, ValueError, "n_k must be at least 1"),
        (allowed_keys, (4.0, 4), {}, TypeError, "n_q must be an int"),
        (allowed_keys, ("4", 4), {}, TypeError, "n_q must be an int"),
        (allowed_keys, (4, 4), {"causal": None}, TypeError, "causal must be a bool"),
        (allowed_keys, (4, 4), {"mask": torch.ones(3, 2, dtype=torch.bool)}, ValueError,
         "mask must have shape"),
        (allowed_keys, (4, 4), {"mask": torch.ones(4, 5, dtype=torch.bool)}, ValueError,
         "mask covers the last Nm keys"),
        (allowed_keys, (4, 4), {"mask": torch.ones(4, 2)}, TypeError, "mask must have dtype"),
        (launch_config, (0, 8, 8), {}, ValueError, "d must be at least 1"),
        (launch_config, (MAX_HEAD_DIM + 1, 8, 8), {}, ValueError, "d must be at most 256"),
        (launch_config, (64, 0, 8), {}, ValueError, "n_q must be at least 1"),
        (launch_config, (64, 8, -8), {}, ValueError, "n_k must be at least 1"),
        (launch_config, (64.0, 8, 8), {}, TypeError, "d must be an int"),
        (launch_config, (64, 8, 8), {"kind": "bwd"}, ValueError, "kind must be one of"),
        (launch_config, (64, 8, 8), {"masked": "yes"}, TypeError, "masked must be a bool"),
        (launch_config, (64, 8, 8), {"dtype": "fp16"}, TypeError, "dtype must be a torch"),
        (launch_config, (200, 8, 8), {"dtype": torch.float32, "gpu": True}, ValueError,
         "d must be at most 128 for fp32"),
    ],
)
def test_bad_input_to_the_reference_and_helpers_is_named(fn, args, kwargs, error, words):
    with pytest.raises(error, match=words):
        fn(*args, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_in_a_value_no_query_sees_spreads_as_in_pytorch(backend):
    """Documented: P = 0 for a masked-out key, but 0 * NaN = NaN, as in SDPA."""
    q, k, v = (t.detach() for t in qkv(1, 1, 3, 6, 16))
    v[0, 0, 5] = math.nan  # the last key: causal with Nq < Nk, only the last query sees it
    mask = torch.tensor([[True] * 5 + [False]] * 3)
    out = flash_attention(q, k, v, mask=mask, backend=backend)
    oracle = sdpa(q, k, v, allowed=torch.cat([torch.ones(3, 0, dtype=torch.bool), mask], 1))
    assert torch.equal(out.isnan(), oracle.isnan()) and out.isnan().all()
