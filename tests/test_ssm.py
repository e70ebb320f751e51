"""lib.ssm: discretisation against SciPy, kernels against each other and against the
recurrence, and the selective scan's PyTorch paths against two independent formulas (the
HiPPO part, lib.hippo, is tested in tests/test_hippo.py)."""

import math

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.hippo import hippo_legs, hippo_legt
from lib.ssm import (
    discretize,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
    ssm_convolve,
    ssm_kernel,
    ssm_recurrent,
)

F64 = torch.float64


# ------------------------------------------------------------------------- discretisation


def _random_stable(n, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=F64)
    return M - (torch.linalg.eigvals(M).real.max() + 0.5) * torch.eye(n, dtype=F64)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("system", ["legs", "legt", "random"])
def test_discretize_matches_scipy(method, system):
    A, B = {"legs": hippo_legs(9), "legt": hippo_legt(9),
            "random": (_random_stable(6, 3), torch.linspace(-1, 2, 6, dtype=F64))}[system]
    dt = 0.05
    A_bar, B_bar = discretize(A, B, dt, method)
    n = A.shape[0]
    ad, bd, *_ = scipy.signal.cont2discrete((A.numpy(), B.numpy()[:, None], np.eye(n),
                                             np.zeros((n, 1))), dt, method=method)
    # both are a few float64 operations on O(1) entries: agreement to ~1e-12
    np.testing.assert_allclose(A_bar.numpy(), ad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(B_bar.numpy(), bd[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_diagonal_discretisation_equals_the_dense_one(method):
    A = torch.tensor([-0.5 + 3j, -0.5 - 1j, -2.0 + 0j, 0j], dtype=torch.complex128)
    B = torch.tensor([1.0, 2.0 - 1j, -1.0, 0.5], dtype=torch.complex128)
    A_bar, B_bar = discretize(A, B, 0.1, method)
    A_dense, B_dense = discretize(torch.diag(A), B, 0.1, method)
    torch.testing.assert_close(torch.diag(A_bar), A_dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B_bar, B_dense, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------- kernel, recurrence, convolution


def test_vandermonde_kernel_equals_naive_powers():
    # S4D-Lin: A_n = -1/2 + i pi n, ZOH with dt = 0.01, C random; float64 throughout
    N, L = 16, 300
    A = -0.5 + 1j * math.pi * torch.arange(N, dtype=F64)
    g = torch.Generator().manual_seed(0)
    C = torch.randn(N, generator=g, dtype=F64) + 1j * torch.randn(N, generator=g, dtype=F64)
    A_bar, B_bar = discretize(A, torch.ones(N, dtype=torch.complex128), 0.01, "zoh")
    fast = ssm_kernel(A_bar, B_bar, C, L, "vandermonde")
    slow = ssm_kernel(A_bar, B_bar, C, L, "naive")
    assert fast.shape == (L,) and fast.dtype == F64
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    # a batch of channels: (H, N) -> (H, L)
    batched = ssm_kernel(A_bar.repeat(3, 1), B_bar.repeat(3, 1), C.repeat(3, 1), L)
    assert batched.shape == (3, L) and torch.equal(batched[2], fast)


def test_vandermonde_kernel_gradients_by_gradcheck():
    # the kernel is trained through (the time-invariant Mamba block): complex and real Ā
    g = torch.Generator().manual_seed(8)
    a = (0.3 + 0.5 * torch.rand(3, generator=g, dtype=F64)) * torch.exp(
        1j * torch.rand(3, generator=g, dtype=F64))
    w = torch.randn(3, generator=g, dtype=torch.complex128)
    for A_bar in (a, a.abs()):
        leaves = (A_bar.clone().requires_grad_(), w.clone().requires_grad_())
        assert torch.autograd.gradcheck(lambda x, y: ssm_kernel(x, y, torch.ones_like(y), 9),
                                        leaves)
    with torch.no_grad():  # the in-place path without autograd gives the same numbers
        fast = ssm_kernel(a, w, torch.ones_like(w), 9)
    torch.testing.assert_close(fast, ssm_kernel(a, w, torch.ones_like(w), 9, "naive"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_recurrence_equals_convolution(method):
    # a dense HiPPO system: the recurrence (eq. 8) and y = K * u (eq. 9) in float64; both
    # sum the same L terms, so they agree to a few ulps times L
    A, B = hippo_legt(12)
    A_bar, B_bar = discretize(A, B, 1 / 64, method)
    g = torch.Generator().manual_seed(2)
    C = torch.randn(12, generator=g, dtype=F64)
    u = torch.randn(3, 200, generator=g, dtype=F64)
    y_rec = ssm_recurrent(A_bar, B_bar, C, u)
    y_conv = ssm_convolve(u, ssm_kernel(A_bar, B_bar, C, 200, "naive"))
    torch.testing.assert_close(y_conv, y_rec, rtol=0, atol=1e-10)


def test_convolution_matches_numpy():
    g = torch.Generator().manual_seed(4)
    u, K = torch.randn(2, 57, generator=g, dtype=F64), torch.randn(57, generator=g, dtype=F64)
    ref = np.stack([np.convolve(row, K.numpy())[:57] for row in u.numpy()])
    np.testing.assert_allclose(ssm_convolve(u, K).numpy(), ref, rtol=0, atol=1e-12)


# -------------------------------------------------------------------- selective scan


def scan_inputs(batch, dim, L, N, dtype=torch.float32, seed=0, with_all=True):
    """Inputs drawn as in Mamba's test_selective_scan (A in (-0.5, 0], delta in [0, 0.5))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = dict(u=r(batch, dim, L).to(dtype), delta=(0.5 * torch.rand(batch, dim, L, generator=g))
                .to(dtype), A=-0.5 * torch.rand(dim, N, generator=g), B=r(batch, N, L).to(dtype),
                C=r(batch, N, L).to(dtype))
    if with_all:
        args |= dict(D=r(dim), z=r(batch, dim, L).to(dtype),
                     delta_bias=0.5 * torch.rand(dim, generator=g))
    return args


def quadratic_form(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """An independent oracle: the scan unrolled into a (L, L) matrix per (b, d, n) (the
    'attention' form of Mamba-2): x_l = sum_{j <= l} exp(S_l - S_j) b_j with S the
    cumulative sum of Δ A. Float64, O(L^2)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    dt = torch.nn.functional.softplus(delta) if delta_softplus else delta
    S = torch.cumsum(dt[..., None] * A[:, None, :], dim=2)  # (b, d, L, N)
    decay = torch.exp(S[:, :, :, None, :] - S[:, :, None, :, :])  # (b, d, l, j, N)
    causal = torch.ones(u.shape[-1], u.shape[-1], dtype=torch.bool).tril()
    decay = decay * causal[None, None, :, :, None]
    b = (dt * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, L, N)
    x = torch.einsum("bdljn,bdjn->bdln", decay, b)
    y = torch.einsum("bdln,bnl->bdl", x, C)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y


SHAPES = [(1, 1, 1, 1), (2, 3, 1, 16), (2, 37, 100, 16), (1, 5, 67, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", [dict(), dict(delta_softplus=True),
                                     dict(with_all=True, delta_softplus=True)])
def test_reference_and_chunked_match_the_quadratic_form(shape, options):
    options = dict(options)
    softplus = options.pop("delta_softplus", False)
    args = scan_inputs(*shape, dtype=F64, with_all=options.get("with_all", False))
    oracle = quadratic_form(**args, delta_softplus=softplus)
    ref = selective_scan_reference(**args, delta_softplus=softplus)
    torch.testing.assert_close(ref, oracle, rtol=1e-10, atol=1e-10)
    for chunk in (None, 1, 4, 64):
        got = selective_scan_chunked(**args, delta_softplus=softplus, chunk=chunk)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 2), dim=st.integers(1, 3), L=st.integers(1, 40),
       N=st.integers(1, 5), chunk=st.integers(1, 16), softplus=st.booleans(),
       with_all=st.booleans(), seed=st.integers(0, 2**16))
def test_chunked_forward_and_backward_equal_the_reference(batch, dim, L, N, chunk, softplus,
                                                           with_all, seed):
    # any shape and chunk length, including chunks longer than L and L = 1; float64, so
    # the two differ only by rounding (1e-10); the chunked backward is written by hand
    args = scan_inputs(batch, dim, L, N, dtype=F64, seed=seed, with_all=with_all)
    args = {k: v.double().requires_grad_() for k, v in args.items()}
    got, got_last = selective_scan_chunked(**args, delta_softplus=softplus, chunk=chunk,
                                           return_last_state=True)
    ref, ref_last = selective_scan_reference(**args, delta_softplus=softplus,
                                             return_last_state=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_last, ref_last, rtol=1e-10, atol=1e-10)
    weights = torch.randn(ref.shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    leaves = list(args.values())
    grads = torch.autograd.grad((got * weights).sum() + got_last.sum(), leaves)
    ref_grads = torch.autograd.grad((ref * weights).sum() + ref_last.sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_time_invariant_scan_matches_scipy_lfilter():
    # constant Δ, B, C: each state is the IIR filter x_l = a x_{l-1} + b u_l (scipy's oracle)
    dim, N, L = 2, 4, 90
    g = torch.Generator().manual_seed(5)
    u = torch.randn(1, dim, L, generator=g, dtype=F64)
    A = -torch.rand(dim, N, generator=g, dtype=F64)
    Bc, Cc = torch.randn(N, generator=g, dtype=F64), torch.randn(N, generator=g, dtype=F64)
    dt = 0.3
    got = selective_scan(u, torch.full_like(u, dt), A, Bc[None, :, None].expand(1, N, L),
                         Cc[None, :, None].expand(1, N, L), backend="torch")
    for d in range(dim):
        want = sum(Cc[n].item() * scipy.signal.lfilter([dt * Bc[n].item()],
                                                       [1, -math.exp(dt * A[d, n].item())],
                                                       u[0, d].numpy()) for n in range(N))
        np.testing.assert_allclose(got[0, d].numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, (6e-4, 2e-3)), (torch.float16, (3e-3, 5e-3)),
                                       (torch.bfloat16, (3e-2, 5e-2))])
def test_chunked_in_low_precision_at_mambas_tolerances(dtype, tol):
    # Mamba's test_selective_scan: (rtol, atol) = (6e-4, 2e-3) fp32, (3e-3, 5e-3) fp16,
    # (3e-2, 5e-2) bf16, against its reference on the same inputs
    args = scan_inputs(2, 37, 1000, 16, dtype=dtype)
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True,
                               backend="torch")
    ref, ref_last = selective_scan_reference(**args, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=tol[0], atol=tol[1])
    torch.testing.assert_close(last, ref_last, rtol=tol[0], atol=tol[1])


def test_chunked_gradients_by_gradcheck():
    args = scan_inputs(1, 2, 9, 3, dtype=F64)
    names = list(args)
    leaves = [args[k].double().requires_grad_() for k in names]

    def fn(*tensors):
        kw = dict(zip(names, tensors, strict=True))
        out, last = selective_scan_chunked(**kw, delta_softplus=True, return_last_state=True,
                                           chunk=4)
        return out, last

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- bad input


def _scan_call(**change):
    args = scan_inputs(1, 2, 5, 3) | change
    return lambda: selective_scan(**args, backend="torch")


BAD = [
    ("dt = 0", lambda: discretize(*hippo_legs(3), 0.0), ValueError, "dt"),
    ("dt negative", lambda: discretize(*hippo_legs(3), -1.0), ValueError, "dt"),
    ("dt string", lambda: discretize(*hippo_legs(3), "0.1"), TypeError, "dt"),
    ("dt NaN", lambda: discretize(*hippo_legs(3), math.nan), ValueError, "dt"),
    ("unknown method", lambda: discretize(*hippo_legs(3), 0.1, "rk4"), ValueError, "method"),
    ("A not square", lambda: discretize(torch.ones(3, 4), torch.ones(4), 0.1), ValueError, "A"),
    ("B wrong length", lambda: discretize(torch.ones(3, 3), torch.ones(4), 0.1), ValueError,
     "B"),
    ("A a list", lambda: discretize([[1.0]], torch.ones(1), 0.1), TypeError, "A"),
    ("kernel L = 0", lambda: ssm_kernel(torch.ones(2), torch.ones(2), torch.ones(2), 0),
     ValueError, "L"),
    ("vandermonde shapes", lambda: ssm_kernel(torch.ones(2), torch.ones(3), torch.ones(2), 4),
     ValueError, "vandermonde"),
    ("convolve lengths", lambda: ssm_convolve(torch.ones(5), torch.ones(4)), ValueError, "K"),
    ("u rank", _scan_call(u=torch.ones(2, 5)), ValueError, "u"),
    ("u int", _scan_call(u=torch.ones(1, 2, 5, dtype=torch.long)), TypeError, "u"),
    ("u empty", _scan_call(u=torch.ones(1, 2, 0)), ValueError, "u"),
    ("delta shape", _scan_call(delta=torch.ones(1, 2, 4)), ValueError, "delta"),
    ("delta dtype", _scan_call(delta=torch.ones(1, 2, 5, dtype=torch.float16)), ValueError,
     "dtype"),
    ("A shape", _scan_call(A=-torch.ones(3, 3)), ValueError, "A"),
    ("A positive", _scan_call(A=torch.ones(2, 3)), ValueError, "A"),
    ("A NaN", _scan_call(A=torch.full((2, 3), math.nan)), ValueError, "A"),
    ("B shape", _scan_call(B=torch.ones(1, 4, 5)), ValueError, "B"),
    ("C length", _scan_call(C=torch.ones(1, 3, 6)), ValueError, "C"),
    ("D shape", _scan_call(D=torch.ones(3)), ValueError, "D"),
    ("z shape", _scan_call(z=torch.ones(1, 2, 4)), ValueError, "z"),
    ("delta_bias list", _scan_call(delta_bias=[0.0, 0.0]), TypeError, "delta_bias"),
    ("softplus string", lambda: selective_scan(**scan_inputs(1, 2, 5, 3),
                                               delta_softplus="yes"), TypeError,
     "delta_softplus"),
    ("unknown backend", lambda: selective_scan(**scan_inputs(1, 2, 5, 3), backend="cuda"),
     ValueError, "backend"),
    ("float64 on triton", lambda: selective_scan(**scan_inputs(1, 2, 5, 3, dtype=F64),
                                                 backend="triton"), TypeError, "float64"),
]


@pytest.mark.parametrize("case,call,error,word", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_the_argument_named(case, call, error, word):
    with pytest.raises(error, match=word):
        call()
