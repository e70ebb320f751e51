"""lib.hippo: the HiPPO matrices against their closed forms and against the projection they
are derived from (Gauss-Legendre quadrature and numerical differentiation), Legendre
polynomials against NumPy, and the online coefficients against the exact projection."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import legendre as npleg

import lib.ssm
from lib import hippo
from lib.hippo import (
    hippo_coefficients,
    hippo_legs,
    hippo_legt,
    hippo_reconstruct,
    legendre,
)
from lib.ssm import discretize

F64 = torch.float64


@pytest.mark.parametrize("N", [1, 2, 7, 16])
def test_hippo_matrices_equal_their_closed_forms(N):
    A_s, B_s = hippo_legs(N)
    A_t, B_t = hippo_legt(N)
    assert A_s.dtype == A_t.dtype == B_s.dtype == F64
    assert A_s.shape == A_t.shape == (N, N) and B_s.shape == B_t.shape == (N,)
    for n in range(N):
        assert B_s[n] == B_t[n] == math.sqrt(2 * n + 1)
        for k in range(N):
            r = math.sqrt((2 * n + 1) * (2 * k + 1))
            legs = -r if n > k else (-(n + 1) if n == k else 0.0)
            legt = -r * (1 if n >= k else (-1) ** (n - k))
            assert A_s[n, k].item() == pytest.approx(legs, rel=1e-15)
            assert A_t[n, k].item() == pytest.approx(legt, rel=1e-15)


def _projection(f, lo, hi, N, nodes=80):
    """c_n = mean over [lo, hi] of f(s) sqrt(2n+1) P_n(x(s)), by Gauss-Legendre quadrature."""
    x, w = npleg.leggauss(nodes)
    s = lo + (x + 1) / 2 * (hi - lo)
    P = np.stack([npleg.legval(x, np.eye(N)[n]) * math.sqrt(2 * n + 1) for n in range(N)])
    return P @ (w * f(s)) / 2


def test_hippo_odes_are_the_time_derivative_of_the_projection():
    # the oracle: project f by quadrature at t +- h and differentiate numerically; the HiPPO
    # ODE must give the same derivative. Central differences: error O(h^2) ~ 1e-8.
    N, t, h = 8, 1.7, 1e-4
    f = lambda s: np.sin(3 * s) + s**2  # noqa: E731
    A, B = (m.numpy() for m in hippo_legs(N))
    c = _projection(f, 0, t, N)
    dc = (_projection(f, 0, t + h, N) - _projection(f, 0, t - h, N)) / (2 * h)
    np.testing.assert_allclose(dc, (A @ c + B * f(t)) / t, rtol=0, atol=1e-7)
    # LegT (window 1) is exact when f over the window is a polynomial of degree < N: its
    # derivation replaces the forgotten value f(t - 1) by the reconstruction
    p = lambda s: 1 - 2 * s + 0.5 * s**3  # noqa: E731
    A, B = (m.numpy() for m in hippo_legt(N))
    c = _projection(p, t - 1, t, N)
    dc = (_projection(p, t - 1 + h, t + h, N) - _projection(p, t - 1 - h, t - h, N)) / (2 * h)
    np.testing.assert_allclose(dc, A @ c + B * p(t), rtol=0, atol=1e-6)


def test_legendre_matches_numpy():
    x = torch.linspace(-1, 1, 101, dtype=F64)
    ours = legendre(12, x)
    for n in range(12):
        ref = npleg.legval(x.numpy(), np.eye(12)[n]) * math.sqrt(2 * n + 1)
        np.testing.assert_allclose(ours[n].numpy(), ref, rtol=0, atol=1e-12)


def test_legs_coefficients_are_the_exact_projection_of_the_history():
    # the signal is constant on each step (j, j+1]; the projection of such a function onto
    # the scaled Legendre basis of [0, k] integrates P_n exactly (numpy's legint)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, generator=g, dtype=F64)
    N = 10
    coefs = hippo_coefficients(f, N, "legs")
    for k in (1, 2, 17, 40):
        edges = 2 * np.arange(k + 1) / k - 1  # the steps, mapped to [-1, 1]
        exact = []
        for n in range(N):
            Q = npleg.legval(edges, npleg.legint(np.eye(N)[n]))  # antiderivative of P_n
            exact.append(math.sqrt(2 * n + 1) / 2 * (np.diff(Q) @ f[:k].numpy()))
        np.testing.assert_allclose(coefs[k - 1].numpy(), exact, rtol=0, atol=1e-10)


@pytest.mark.parametrize("measure", ["legs", "legt"])
def test_a_constant_is_reconstructed_exactly(measure):
    # (f, 0, ..., 0) is a fixed point of both ODEs; LegT reaches it once its window has
    # passed the start (its error decays as the transient leaves the window)
    j, values = hippo_reconstruct(torch.full((300,), 2.5), 16, measure, theta=50)
    assert len(j) == (300 if measure == "legs" else 50)
    torch.testing.assert_close(values, torch.full_like(values, 2.5), rtol=0, atol=1e-9)


def test_reconstruction_improves_with_N():
    g = torch.Generator().manual_seed(1)
    f = torch.cumsum(torch.randn(256, generator=g, dtype=F64), 0)  # a random walk
    errors = []
    for N in (4, 16, 64):
        j, values = hippo_reconstruct(f, N, "legs")
        errors.append(((values - f[j]) ** 2).mean().item())
    assert errors[0] > errors[1] > errors[2]


def test_legt_steps_equal_the_zoh_of_discretize():
    # hippo_coefficients steps LegT exactly; lib.ssm.discretize's "zoh" (checked against
    # SciPy in test_ssm) gives the same step, so the recurrence it defines is the same
    g = torch.Generator().manual_seed(3)
    f = torch.randn(30, generator=g, dtype=F64)
    A_bar, B_bar = discretize(*hippo_legt(6), 1 / 12, "zoh")
    x, rows = torch.zeros(6, dtype=F64), []
    for f_k in f:
        x = A_bar @ x + B_bar * f_k
        rows.append(x)
    torch.testing.assert_close(hippo_coefficients(f, 6, "legt", theta=12),
                               torch.stack(rows), rtol=1e-12, atol=1e-12)


def test_lib_ssm_re_exports_the_hippo_api():
    for name in ("hippo_legs", "hippo_legt", "hippo_coefficients", "hippo_reconstruct",
                 "legendre", "MEASURES"):
        assert getattr(lib.ssm, name) is getattr(hippo, name)


BAD = [
    ("hippo_legs(0)", lambda: hippo_legs(0), ValueError, "N"),
    ("hippo_legt(2.5)", lambda: hippo_legt(2.5), TypeError, "N"),
    ("hippo_legs('3')", lambda: hippo_legs("3"), TypeError, "N"),
    ("legendre(-1)", lambda: legendre(-1, torch.zeros(3)), ValueError, "N"),
    ("unknown measure", lambda: hippo_coefficients(torch.ones(4), 3, "fourier"), ValueError,
     "measure"),
    ("measure with coefficients", lambda: hippo_reconstruct(
        torch.ones(4), 3, "fourier", coefficients=torch.ones(4, 3)), ValueError, "measure"),
    ("signal rank", lambda: hippo_coefficients(torch.ones(2, 4), 3), ValueError, "signal"),
    ("signal a list", lambda: hippo_coefficients([1.0, 2.0], 3), TypeError, "signal"),
    ("empty signal", lambda: hippo_coefficients(torch.ones(0), 3), ValueError, "signal"),
    ("t past the end", lambda: hippo_reconstruct(torch.ones(4), 3, t=5), ValueError, "t"),
    ("t = 0", lambda: hippo_reconstruct(torch.ones(4), 3, t=0), ValueError, "t"),
    ("coefficients shape", lambda: hippo_reconstruct(torch.ones(4), 3,
                                                     coefficients=torch.ones(4, 2)),
     ValueError, "coefficients"),
    ("theta = 0", lambda: hippo_coefficients(torch.ones(4), 3, "legt", theta=0), ValueError,
     "theta"),
    ("theta NaN", lambda: hippo_coefficients(torch.ones(4), 3, "legt", theta=math.nan),
     ValueError, "theta"),
]


@pytest.mark.parametrize("case,call,error,word", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_the_argument_named(case, call, error, word):
    with pytest.raises(error, match=word):
        call()
