"""Batched Levenberg–Marquardt for calibration problems (chapter 10, eqs. cal-lm, cal-schur).

Every calibration problem of chapter 10 has the same shape: a few *shared* parameters (the
nine intrinsics of a camera, or the poses of the cameras of a rig) and many *local* blocks
of six (one board pose per view), and each residual depends on the shared parameters and on
exactly one local block. :func:`levenberg_marquardt` minimises the sum of squared
residuals of ``B`` independent problems at once (a batch of cameras), on any device:

* **Jacobians by forward-mode autograd** (:func:`jacobian_blocks`). Because a residual sees
  only ``G`` shared parameters and the six of its own block, ``G + 6`` Jacobian-vector
  products (one per tangent direction, all blocks at once) give every non-zero entry of the
  Jacobian, exactly, for any residual function: the stereo pair and the rig use them. A
  problem whose derivatives are known in closed form passes ``jacobian=`` instead: the
  single-camera calibration uses the camera model's chain rule
  (:func:`lib.calibration_camera.project_jacobian`, tested against these passes), which
  costs a few dozen tensor operations where the passes cost hundreds.
* **Normal equations by blocks.** ``J^T J`` has a dense ``G x G`` corner, ``6 x 6`` blocks on
  the diagonal and ``G x 6`` couplings; the local blocks are eliminated with the Schur
  complement (eq. cal-schur), leaving one ``G x G`` system per problem.
* **Marquardt's damping** ``J^T J + mu diag(J^T J)``, with ``mu`` per problem: a step that
  lowers the cost is taken and ``mu`` shrinks; one that does not is refused and ``mu`` grows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp, vmap

Residuals = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Jacobian = Callable[[torch.Tensor, torch.Tensor],
                    tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# PyTorch builds its forward-mode rules with torch.jit.script on the first jvp, which warns
# (DeprecationWarning) in recent versions: run that first jvp here, once, with the warning off
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated",
                            category=DeprecationWarning)
    jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))


@dataclass
class LMResult:
    """What :func:`levenberg_marquardt` returns; ``B`` problems, ``L`` blocks of ``P``."""

    shared: torch.Tensor  # (B, G) the shared parameters at the minimum
    local: torch.Tensor  # (B, L, P) the local blocks at the minimum
    cost: torch.Tensor  # (B,) sum of squared (weighted) residuals
    iterations: torch.Tensor  # (B,) iterations each problem ran before it converged
    converged: torch.Tensor  # (B,) bool


def jacobian_blocks(residuals: Residuals, shared: torch.Tensor,
                    local: torch.Tensor, shared_free: torch.Tensor | None = None):
    """Residuals and the non-zero blocks of their Jacobian by forward-mode passes.

    residuals(shared (B, G), local (B, L, P)) -> (B, L, M), where row l depends
    only on shared and local[:, l]. One Jacobian-vector product per free shared
    parameter and per local coordinate (the same tangent for every block at
    once). Returns r (B, L, M), J_shared (B, L, M, G) (zero columns for fixed
    parameters) and J_local (B, L, M, P), J_local[b, l, m, p] = dr[b, l, m] /
    dlocal[b, l, p].
    """
    G, P = shared.shape[-1], local.shape[-1]
    if shared_free is None:
        shared_free = torch.ones(G, dtype=torch.bool, device=shared.device)
    eye = torch.eye(G + P, dtype=shared.dtype, device=shared.device)
    free = torch.cat([shared_free, shared_free.new_ones(P)])
    basis = eye[free]  # one tangent per free direction

    def directional(v):  # the same tangent for every problem and every block
        tangent = (v[:G].expand_as(shared), v[G:].expand_as(local))
        return jvp(residuals, (shared, local), tangent)  # (r, J v)

    r, J_free = vmap(directional)(basis)  # r: one copy per tangent
    J_free = J_free.permute(1, 2, 3, 0)  # (B, L, M, free + P)
    n_free = int(shared_free.sum())
    Jg = J_free.new_zeros(*J_free.shape[:-1], G)
    Jg[..., shared_free] = J_free[..., :n_free]
    return r[0], Jg, J_free[..., n_free:]


def _normal_equations(r, Jg, Jl, weights, shared_free, local_valid):
    """The blocks of J^T J and J^T r (eq. cal-schur), once per Jacobian.

    r (B, L, M), Jg (B, L, M, G), Jl (B, L, M, P), weights (B, L, M) of 0/1,
    shared_free (G,) bool, local_valid (B, L) bool -> A (B, G, G), C (B, L, G, P),
    D (B, L, P, P), g_shared (B, G), g_local (B, L, P).
    """
    keep = weights > 0  # where(), not a product: an absent residual may be inf or NaN
    r = torch.where(keep, r, 0.0)
    Jg, Jl = torch.where(keep[..., None], Jg, 0.0), torch.where(keep[..., None], Jl, 0.0)
    JgT, JlT = Jg.transpose(-1, -2), Jl.transpose(-1, -2)  # (B, L, G, M), (B, L, P, M)
    A = (JgT @ Jg).sum(1)  # (B, G, G) shared corner
    C = JgT @ Jl  # (B, L, G, P) couplings
    D = JlT @ Jl  # (B, L, P, P) block diagonal
    g_shared = (JgT @ r[..., None]).sum(1)[..., 0]  # (B, G) = J^T r, shared rows
    g_local = (JlT @ r[..., None])[..., 0]  # (B, L, P)

    # fixed shared parameters and absent blocks: identity rows, zero gradient, zero step
    G, P = A.shape[-1], D.shape[-1]
    fixed = ~shared_free
    eye_g = torch.eye(G, dtype=A.dtype, device=A.device)
    A = torch.where(fixed[:, None] | fixed[None, :], eye_g * fixed, A)
    C = C * shared_free[:, None]
    g_shared = g_shared * shared_free
    eye_p = torch.eye(P, dtype=D.dtype, device=D.device)
    D = torch.where(local_valid[..., None, None], D, eye_p)
    g_local = g_local * local_valid[..., None]
    return A, C, D, g_shared, g_local


def _solve_step(normal, mu, shared_free, local_valid):
    """The damped Gauss-Newton step (eq. cal-lm) by the Schur complement (eq. cal-schur).

    normal: what :func:`_normal_equations` returns; mu (B,) -> (delta_shared (B, G),
    delta_local (B, L, P)). A refused step only changes mu: the blocks are reused.
    """
    A, C, D, g_shared, g_local = normal
    # Marquardt's scaling: damp each parameter in proportion to its own curvature
    diag_a = A.diagonal(dim1=-2, dim2=-1)
    diag_d = D.diagonal(dim1=-2, dim2=-1)
    floor = 1e-12 * torch.maximum(diag_a.amax(-1), diag_d.amax((-1, -2)))[:, None]
    A = A + torch.diag_embed(mu[:, None] * torch.maximum(diag_a, floor))
    D = D + torch.diag_embed(mu[:, None, None] * torch.maximum(diag_d, floor[..., None]))

    D_inv = torch.linalg.inv(D)  # (B, L, P, P): L small independent 6 x 6 inverses
    C_Dinv = C @ D_inv  # (B, L, G, P)
    S = A - (C_Dinv @ C.transpose(-1, -2)).sum(1)  # Schur complement (B, G, G)
    rhs = -g_shared + (C_Dinv @ g_local[..., None]).sum(1)[..., 0]
    delta_shared = torch.linalg.solve(S, rhs)
    delta_local = -(D_inv @ (g_local + (C.transpose(-1, -2) @ delta_shared[:, None, :, None])
                             [..., 0])[..., None])[..., 0]
    return delta_shared * shared_free, delta_local * local_valid[..., None]


def levenberg_marquardt(
    residuals: Residuals,
    shared: torch.Tensor,
    local: torch.Tensor,
    weights: torch.Tensor,
    *,
    shared_free: torch.Tensor | None = None,
    max_iterations: int = 100,
    ftol: float = 1e-12,
    xtol: float = 1e-12,
    mu: float = 1e-3,
    jacobian: Jacobian | None = None,
) -> LMResult:
    """Minimise the sum of squared residuals where ``weights > 0``, for B problems at once.

    shared (B, G), local (B, L, P) float64; weights (B, L, M) of 0/1 marks the residuals
    that exist (padding of views and points is 0); shared_free (G,) bool marks the shared
    parameters to optimise (default all). A problem stops when a step lowers its cost by a
    relative amount below ``ftol``, when the step is below ``xtol`` relative to the
    parameters, or when ``mu`` exceeds 1e16 (no step helps); all stop at max_iterations.
    (With ``ftol = 1e-15`` a calibration spent about half its iterations on steps at the
    level of rounding; at 1e-12 it stops after them and still agrees with OpenCV and with
    SciPy to the tolerances of tests/test_calibration.py.)
    jacobian(shared, local) -> (r, J_shared, J_local), shaped as :func:`jacobian_blocks`
    returns them, replaces the forward-mode passes when the derivatives are known in closed
    form (the camera model's, :func:`lib.calibration_camera.project_jacobian`).
    """
    B, G = shared.shape
    if shared_free is None:
        shared_free = torch.ones(G, dtype=torch.bool, device=shared.device)
    local_valid = weights.sum(-1) > 0  # (B, L): blocks with at least one residual
    mu_b = torch.full((B,), mu, dtype=shared.dtype, device=shared.device)
    done = torch.zeros(B, dtype=torch.bool, device=shared.device)
    iterations = torch.zeros(B, dtype=torch.long, device=shared.device)

    if jacobian is None:
        def jacobian(shared, local):
            return jacobian_blocks(residuals, shared, local, shared_free)
    keep = weights > 0
    r, Jg, Jl = jacobian(shared, local)
    normal = _normal_equations(r, Jg, Jl, weights, shared_free, local_valid)
    cost = torch.where(keep, r**2, 0.0).sum((-1, -2))
    for _ in range(max_iterations):
        step_g, step_l = _solve_step(normal, mu_b, shared_free, local_valid)
        new_shared, new_local = shared + step_g, local + step_l
        new_r = residuals(new_shared, new_local)
        new_cost = torch.where(keep, new_r**2, 0.0).sum((-1, -2))
        better = (new_cost < cost) & ~done & torch.isfinite(new_cost)

        step_norm = torch.sqrt((step_g**2).sum(-1) + (step_l**2).sum((-1, -2)))
        x_norm = torch.sqrt((shared**2).sum(-1) + (local**2).sum((-1, -2)))
        small_f = better & (cost - new_cost <= ftol * cost)
        small_x = step_norm <= xtol * (x_norm + xtol)
        iterations = iterations + (~done).long()

        shared = torch.where(better[:, None], new_shared, shared)
        local = torch.where(better[:, None, None], new_local, local)
        cost = torch.where(better, new_cost, cost)
        mu_b = torch.where(better, mu_b / 10, torch.where(done, mu_b, mu_b * 10))
        done = done | small_f | small_x | (mu_b > 1e16)
        if bool(done.all()):
            break
        if bool(better.any()):  # new Jacobians only where the point moved (cheap to redo all)
            r, Jg, Jl = jacobian(shared, local)
            normal = _normal_equations(r, Jg, Jl, weights, shared_free, local_valid)
    return LMResult(shared, local, cost, iterations, done)
