"""HiPPO: the LegS and LegT matrices, and the online function approximation they define.

Chapter 8 (equation numbers refer to it). Gu, Dao, Ermon, Rudra & Ré (2020), "HiPPO:
recurrent memory with optimal polynomial projections".

The coefficients c(t) of the projection of a history f onto N scaled Legendre polynomials
(eq. 2) obey a linear ODE: c' = (A c + B f) / theta for LegT, a sliding window of length
theta (eq. 3), and c' = (A c + B f) / t for LegS, the whole history [0, t] (eq. 4). Sign
convention: the matrices are returned for x' = A x + B u (eigenvalues with negative real
parts), i.e. the negative of the paper's A, as in the S4 code. :mod:`lib.ssm` discretises
them and turns them into recurrences and convolutions (and re-exports this module's
functions).
"""

from __future__ import annotations

import math

import torch

from .validate import check_choice, check_positive_int, check_real, check_tensor

MEASURES = ("legs", "legt")

# ------------------------------------------------------------------------------ matrices


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS (scaled Legendre, eq. 4): A (N, N), B (N,) in float64.

    The coefficients of the history on [0, t] follow x' = (1/t) (A x + B f(t)), with
    A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k; B_n = sqrt(2n+1).
    """
    check_positive_int(N, "N")
    r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1)
    A -= torch.diag(torch.arange(N, dtype=torch.float64) + 1)
    return A, r.clone()


def hippo_legt(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegT (translated Legendre, window 1, eq. 3): A (N, N), B (N,) in float64.

    The coefficients of the last unit of time follow x' = A x + B f(t), with
    A_nk = -sqrt(2n+1) sqrt(2k+1) times 1 for n >= k and (-1)^(n-k) for n < k;
    B_n = sqrt(2n+1). For a window of length theta, use A / theta and B / theta.
    """
    check_positive_int(N, "N")
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    sign = torch.where(n[:, None] >= n[None, :], 1.0, (-1.0) ** (n[:, None] - n[None, :]))
    return -r[:, None] * sign * r[None, :], r.clone()


# ------------------------------------------------------------ online function approximation


def legendre(N: int, x: torch.Tensor) -> torch.Tensor:
    """Scaled Legendre polynomials sqrt(2n+1) P_n(x) for n < N: ``(N, *x.shape)``.

    Bonnet's recurrence (n+1) P_{n+1} = (2n+1) x P_n - n P_{n-1}; the sqrt(2n+1) makes them
    orthonormal for the uniform probability measure on [-1, 1].
    """
    check_positive_int(N, "N")
    P = [torch.ones_like(x), x]
    for n in range(1, N - 1):
        P.append(((2 * n + 1) * x * P[n] - n * P[n - 1]) / (n + 1))
    scale = torch.sqrt(2 * torch.arange(N, dtype=x.dtype, device=x.device) + 1)
    return torch.stack(P[:N]) * scale.view(-1, *([1] * x.dim()))


def _zoh_steps(A: torch.Tensor, B: torch.Tensor, steps: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (zero-order hold) steps of x' = A x + B f, one per length in ``steps`` (S,):
    (Ā (S, N, N), B̄ (S, N)) from exp(step [[A, B], [0, 0]]), as ``lib.ssm.discretize``'s
    "zoh" for one step (eq. 7)."""
    N = A.shape[0]
    block = torch.zeros(len(steps), N + 1, N + 1, dtype=A.dtype, device=A.device)
    block[:, :N, :N], block[:, :N, N] = A, B
    expm = torch.linalg.matrix_exp(steps.to(A)[:, None, None] * block)
    return expm[:, :N, :N], expm[:, :N, N]


def hippo_coefficients(signal: torch.Tensor, N: int, measure: str = "legs",
                       theta: float | None = None) -> torch.Tensor:
    """Online HiPPO coefficients of a sampled signal: (L, N) float64, row k after sample k.

    The signal is held constant over each unit step (sample j on (j, j+1]) and each step is
    solved exactly (zero-order hold, eq. 7). ``"legt"``: window of ``theta`` samples
    (default L), x' = (A x + B f) / theta (eq. 3). ``"legs"``: the whole history,
    x' = (A x + B f) / t (eq. 4); in log-time tau = log t this is time-invariant, so step k
    is a ZOH step of length log(k / (k - 1)) (the first step, of infinite length, lands on
    B f's equilibrium -A^-1 B f = (f, 0, ..., 0)): row k is exactly the projection of the
    history (eq. 2).
    """
    check_tensor(signal, "signal", ndim=1)
    check_positive_int(N, "N")
    check_choice(measure, "measure", MEASURES)
    L = signal.shape[0]
    if L == 0:
        raise ValueError("signal must have at least one sample")
    f = signal.to(torch.float64)
    if measure == "legt":
        theta = float(L) if theta is None else check_real(theta, "theta", minimum=0, strict=True)
        A, B = (m.to(f.device) for m in hippo_legt(N))
        step = torch.tensor([1.0 / theta], dtype=torch.float64)  # float64: 1/theta exactly
        A_bar, B_bar = (m[0] for m in _zoh_steps(A, B, step))
        x, rows = torch.zeros(N, dtype=torch.float64, device=f.device), []
        for k in range(L):
            x = A_bar @ x + B_bar * f[k]
            rows.append(x)
        return torch.stack(rows)
    A, B = (m.to(f.device) for m in hippo_legs(N))
    steps = torch.log(torch.arange(2, L + 1, dtype=torch.float64) / torch.arange(1, L))
    A_bar, B_bar = _zoh_steps(A, B, steps)  # (L-1, N, N), (L-1, N)
    x = -torch.linalg.solve(A, B) * f[0]
    rows = [x]
    for k in range(1, L):
        x = A_bar[k - 1] @ x + B_bar[k - 1] * f[k]
        rows.append(x)
    return torch.stack(rows)


def hippo_reconstruct(signal: torch.Tensor, N: int, measure: str = "legs",
                      t: int | None = None, theta: float | None = None,
                      coefficients: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the HiPPO state remembers at step t (default L): (positions, reconstruction).

    Evaluates f(s) ~ sum_n c_n sqrt(2n+1) P_n(x(s)) (eq. 2) at the sample midpoints
    s = j + 1/2 of the window the measure covers: the whole history [0, t] for LegS
    (x = 2s/t - 1), the last theta samples for LegT (x = 2(s - t)/theta + 1). Returns the
    sample indices j (long) and the reconstructed values (float64). ``coefficients``: the
    (L, N) output of :func:`hippo_coefficients` for these arguments, to reuse it across t.
    """
    L = check_tensor(signal, "signal", ndim=1).shape[0]
    check_choice(measure, "measure", MEASURES)
    if coefficients is None:
        coefficients = hippo_coefficients(signal, N, measure, theta)
    elif coefficients.shape != (L, N):
        raise ValueError(f"coefficients must have shape ({L}, {N}), got "
                         f"{tuple(coefficients.shape)}")
    t = L if t is None else t
    check_positive_int(t, "t")
    if t > L:
        raise ValueError(f"t must be at most the signal length {L}, got {t}")
    if measure == "legs":
        j = torch.arange(t, device=signal.device)
        x = 2 * (j + 0.5) / t - 1
    else:
        theta = float(L) if theta is None else float(theta)
        j = torch.arange(max(0, math.ceil(t - theta)), t, device=signal.device)
        x = 2 * (j + 0.5 - t) / theta + 1
    values = coefficients[t - 1] @ legendre(N, x.to(torch.float64))
    return j, values
