"""State space models: discretisation, the S4/S4D convolution kernel, and Mamba's selective
scan (its sequential reference, a chunked PyTorch version and the public op).

Chapter 8 (equation numbers refer to it). Gu, Goel & Ré (2022), "S4"; Gu, Gupta, Goel & Ré
(2022), "S4D"; Gu & Dao (2023), "Mamba"; Blelloch (1990), "Prefix sums and their
applications".

The continuous SSM x' = A x + B u, y = C x + D u (eq. 1) is discretised with step dt into
the recurrence x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k (eq. 8), which unrolls into a causal
convolution y = K * u with K_l = C Ā^l B̄ (eq. 9).

Selective scan (Mamba, eqs. 11, 12): Δ, B and C depend on the time step, so there is no
convolution; the recurrence is a scan with the associative combine of eq. 13.

Module layout: discretisation -> kernels, recurrence and convolution -> selective scan
(reference, chunked, validation, public). The HiPPO matrices and the online function
approximation live in :mod:`lib.hippo` (re-exported here: ``lib.ssm.hippo_legs`` is
:func:`lib.hippo.hippo_legs`); the Triton kernels of the selective scan in
:mod:`lib.ssm_kernels`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backend import resolve_backend
from .hippo import (  # noqa: F401  (re-exported: the HiPPO part of the chapter's API)
    MEASURES,
    hippo_coefficients,
    hippo_legs,
    hippo_legt,
    hippo_reconstruct,
    legendre,
)
from .validate import (
    FLOAT_DTYPES,
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
    check_same,
    check_tensor,
)

DISCRETIZATIONS = ("bilinear", "zoh", "euler")

# ------------------------------------------------------------------------- discretisation


def _check_system(A, B, name_a="A", name_b="B"):
    check_tensor(A, name_a, ndim=(1, 2))
    check_tensor(B, name_b, ndim=1)
    n = A.shape[-1]
    if A.dim() == 2 and A.shape[0] != n:
        raise ValueError(f"{name_a} must be square (N, N) or diagonal (N,), got {tuple(A.shape)}")
    if B.shape[0] != n:
        raise ValueError(f"{name_b} must have shape ({n},) to match {name_a}, got "
                         f"{tuple(B.shape)}")
    if n == 0:
        raise ValueError(f"{name_a} must have at least one state, got shape {tuple(A.shape)}")
    check_same("device", **{name_a: A, name_b: B})
    return n


def discretize(A: torch.Tensor, B: torch.Tensor, dt: float, method: str = "bilinear"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ā, B̄) of x' = A x + B u for a step ``dt`` (eqs. 5 to 7).

    A: (N, N), or (N,) for a diagonal A (real or complex); B: (N,). Returns Ā and B̄ of the
    shapes of A and B. ``"euler"``: Ā = I + dt A, B̄ = dt B. ``"bilinear"``:
    Ā = (I - dt/2 A)^-1 (I + dt/2 A), B̄ = (I - dt/2 A)^-1 dt B. ``"zoh"`` (zero-order hold,
    exact for an input constant over each step): Ā = exp(dt A), B̄ = int_0^dt exp(s A) ds B,
    computed as a block of expm([[A, B], [0, 0]] dt), which needs no inverse of A.
    """
    n = _check_system(A, B)
    dt = check_real(dt, "dt", minimum=0.0, strict=True)
    check_choice(method, "method", DISCRETIZATIONS)
    dtype = torch.promote_types(A.dtype, B.dtype)
    A, B = A.to(dtype), B.to(dtype)
    if A.dim() == 1:  # diagonal: every formula holds entry by entry
        if method == "euler":
            return 1 + dt * A, dt * B
        if method == "bilinear":
            return (1 + dt / 2 * A) / (1 - dt / 2 * A), dt * B / (1 - dt / 2 * A)
        zero = A == 0  # (exp(dt a) - 1) / a -> dt as a -> 0
        scale = torch.where(zero, dt, torch.expm1(dt * A) / torch.where(zero, 1, A))
        return torch.exp(dt * A), scale * B
    eye = torch.eye(n, dtype=dtype, device=A.device)
    if method == "euler":
        return eye + dt * A, dt * B
    if method == "bilinear":
        left = eye - dt / 2 * A
        return torch.linalg.solve(left, eye + dt / 2 * A), torch.linalg.solve(left, dt * B)
    block = torch.zeros(n + 1, n + 1, dtype=dtype, device=A.device)
    block[:n, :n], block[:n, n] = A, B
    expm = torch.linalg.matrix_exp(dt * block)
    return expm[:n, :n], expm[:n, n]


# -------------------------------------------------------- kernel, recurrence, convolution


def vandermonde_product(w: torch.Tensor, A_bar: torch.Tensor, L: int) -> torch.Tensor:
    """Re sum_n w_n Ā_n^l for l = 0 .. L-1: w, Ā (..., N) -> (..., L) (eq. 10).

    The product of w with the Vandermonde matrix V_nl = Ā_n^l. A complex Ā is raised in
    polar form, ``|Ā|^l`` (cos lθ + i sin lθ) with θ = arg Ā, in real arithmetic: one exp and
    one cos/sin pair per entry, several times faster on a CPU than complex powers.
    """
    l = torch.arange(L, device=A_bar.device, dtype=A_bar.real.dtype)
    if not A_bar.is_complex():
        V = A_bar[..., None] ** l
        dtype = torch.promote_types(w.dtype, V.dtype)
        K = w.to(dtype)[..., None, :] @ V.to(dtype)
        return (K.real if K.is_complex() else K)[..., 0, :]
    log_a = torch.log(A_bar)[..., None]
    # |Ā|^l, clamped so that l = 0 gives 1 even where Ā = 0 (log = -inf)
    magnitude = torch.exp(log_a.real.clamp(min=-1e30) * l)
    angle = log_a.imag * l
    if torch.is_grad_enabled() and (A_bar.requires_grad or w.requires_grad):
        real_part, imag_part = torch.cos(angle) * magnitude, torch.sin(angle) * magnitude
    else:  # in place: two fewer (..., N, L) buffers to allocate
        real_part = torch.cos(angle).mul_(magnitude)
        imag_part = angle.sin_().mul_(magnitude)
    w = w.to(A_bar.dtype)[..., None, :]
    return (w.real @ real_part - w.imag @ imag_part)[..., 0, :]


def ssm_kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int,
               method: str = "vandermonde") -> torch.Tensor:
    """The convolution kernel K_l = C Ā^l B̄ for l = 0 .. L-1 (eq. 9).

    ``"naive"``: Ā (N, N), or (N,) read as diag(Ā); builds the matrix powers Ā^l one product
    at a time, O(L N^3) and sequential (the definition read literally). ``"vandermonde"``:
    diagonal Ā of shape (..., N) with B̄, C of the same shape; K = (C o B̄) V with the
    Vandermonde matrix V_nl = Ā_n^l (eq. 10), O(L N) and one batched product; returns
    (..., L). A complex system gives the real part (for conjugate pairs, pass one of each
    pair and twice C, as S4D does).
    """
    check_positive_int(L, "L")
    check_choice(method, "method", ("naive", "vandermonde"))
    if method == "vandermonde":
        for name, t in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
            check_tensor(t, name, min_ndim=1)
        if not A_bar.shape == B_bar.shape == C.shape:
            raise ValueError("vandermonde needs diagonal A_bar and B_bar, C of one shape "
                             f"(..., N), got {tuple(A_bar.shape)}, {tuple(B_bar.shape)}, "
                             f"{tuple(C.shape)}")
        return vandermonde_product(C * B_bar, A_bar, L)
    _check_system(A_bar, B_bar, "A_bar", "B_bar")
    check_tensor(C, "C", ndim=1)
    if C.shape != B_bar.shape:
        raise ValueError(f"C must have shape {tuple(B_bar.shape)}, got {tuple(C.shape)}")
    A_mat = torch.diag(A_bar) if A_bar.dim() == 1 else A_bar
    power = torch.eye(A_mat.shape[0], dtype=A_mat.dtype, device=A_mat.device)
    K = []
    for _ in range(L):
        K.append(C @ power @ B_bar)
        power = A_mat @ power  # Ā^(l+1)
    K = torch.stack(K)
    return K.real if K.is_complex() else K


def ssm_recurrent(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor,
                  u: torch.Tensor) -> torch.Tensor:
    """Run x_k = Ā x_{k-1} + B̄ u_k, y_k = C x_k from x_{-1} = 0 (eq. 8), one step at a time.

    Ā: (N, N) or diagonal (N,); B̄, C: (N,); u: (..., L) real. Returns y (..., L) (the real
    part for a complex system).
    """
    _check_system(A_bar, B_bar, "A_bar", "B_bar")
    check_tensor(C, "C", ndim=1)
    check_tensor(u, "u", min_ndim=1)
    if C.shape != B_bar.shape:
        raise ValueError(f"C must have shape {tuple(B_bar.shape)}, got {tuple(C.shape)}")
    dtype = torch.promote_types(torch.promote_types(A_bar.dtype, B_bar.dtype), u.dtype)
    x = torch.zeros(*u.shape[:-1], A_bar.shape[-1], dtype=dtype, device=u.device)
    ys = []
    for k in range(u.shape[-1]):
        x = (x * A_bar if A_bar.dim() == 1 else x @ A_bar.T) + B_bar * u[..., k, None]
        ys.append(x @ C.to(dtype))
    y = torch.stack(ys, dim=-1)
    return y.real if y.is_complex() else y


def ssm_convolve(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_k = sum_{l <= k} K_l u_{k-l} (eq. 9) by FFT, O(L log L).

    u: (..., L), K: (..., L) broadcastable against u (real). Both are zero-padded to 2L so
    that the FFT's circular convolution does not wrap the end of u onto its start.
    """
    check_tensor(u, "u", min_ndim=1)
    check_tensor(K, "K", min_ndim=1)
    L = u.shape[-1]
    if K.shape[-1] != L:
        raise ValueError(f"K must have length L = {L} in its last dim, got {K.shape[-1]}")
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)
    return y[..., :L]


# ------------------------------------------------------------ selective scan: reference


def _scan_dtype(*tensors) -> torch.dtype:
    """fp32 state (as Mamba), or float64 when any input is float64 (for exact checks)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64
                                for t in tensors) else torch.float32


def _step_sizes(delta, delta_bias, delta_softplus, dtype):
    """Δ = softplus(delta + delta_bias) (eq. 11), in ``dtype``."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def _gate(y, u, D, z, dtype):
    """y + D u, times silu(z) (eq. 12)."""
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False, return_last_state=False):
    """The selective scan, one time step after the other: the spec (eqs. 11, 12).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L); D, delta_bias: (dim,).
    Semantics of Mamba's ``selective_scan_ref``: the state is fp32 (float64 if an input
    is), the output has u's dtype; with ``return_last_state`` also the state after the last
    step, (batch, dim, N). Of its cases, the one Mamba's block uses: real A, and B, C that
    vary with the input (no complex A, no (dim, N) or grouped B, C). Differentiable
    through autograd. Inputs are not validated here (see :func:`selective_scan`).
    """
    dtype = _scan_dtype(u, delta, A, B, C, D, z, delta_bias)
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)  # (batch, dim, L)
    A, B, C, u32 = A.to(dtype), B.to(dtype), C.to(dtype), u.to(dtype)
    a = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))  # Ā_l = exp(Δ_l A)
    b = torch.einsum("bdl,bnl,bdl->bdln", dt, B, u32)  # B̄_l u_l = Δ_l B_l u_l
    batch, dim, L = u.shape
    x = torch.zeros(batch, dim, A.shape[1], dtype=dtype, device=u.device)
    ys = []
    for l in range(L):
        x = a[:, :, l] * x + b[:, :, l]  # eq. 12
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, l]))  # y_l = C_l x_l
    out = _gate(torch.stack(ys, dim=2), u, D, z, dtype).to(u.dtype)
    return (out, x) if return_last_state else out


# ------------------------------------------------------------- selective scan: chunked


class _ChunkedScan(torch.autograd.Function):
    """x_l = exp(Δ_l A) x_{l-1} + Δ_l B_l u_l, y_l = C_l x_l (eq. 12) on chunks of T steps,
    with the backward of eq. 15 written out (autograd would record every step's ops).

    dt, u: (batch, dim, L); A: (dim, N); B, C: (batch, N, L); all of one float dtype.
    Tensors are laid out (T, batch, dim, n_chunks, N): position in the chunk first, so that
    a step of the loops below is one slice and every chunk advances at once.
    """

    @staticmethod
    def forward(ctx, dt, A, B, C, u, T):
        batch, dim, L = u.shape
        n_chunks = -(-L // T)
        pad = n_chunks * T - L  # past L: Δ = 0, so a = 1 and b = 0 carry the state unchanged

        def by_position(t):  # (batch, X, L) -> (T, batch, X, n_chunks)
            t = F.pad(t, (0, pad)) if pad else t
            return t.reshape(t.shape[0], t.shape[1], n_chunks, T).permute(3, 0, 1, 2)

        dt_p, u_p = by_position(dt).contiguous(), by_position(u).contiguous()
        # (T, batch, 1, n_chunks, N), contiguous: broadcast products run several times faster
        B_p = by_position(B).permute(0, 1, 3, 2).contiguous()[:, :, None]
        C_p = by_position(C).permute(0, 1, 3, 2).contiguous()[:, :, None]
        a = torch.exp(dt_p[..., None] * A[:, None, :])  # Ā_l = exp(Δ_l A)
        b = (dt_p * u_p)[..., None] * B_p  # B̄_l u_l = Δ_l B_l u_l
        # (1) every chunk from a zero state, keeping only its total B_c (A_c = prod of a)
        b_tot = b[0]
        for t in range(1, T):
            b_tot = torch.addcmul(b[t], a[t], b_tot)
        a_tot = a.prod(0)
        # (2) the state entering each chunk, one chunk after the other (eq. 13)
        x_in = [torch.zeros_like(b_tot[:, :, 0])]
        for c in range(n_chunks - 1):
            x_in.append(torch.addcmul(b_tot[:, :, c], a_tot[:, :, c], x_in[-1]))
        # (3) every chunk again from its true initial state (eq. 14), then y = C x at once
        xs, x = torch.empty_like(b), torch.stack(x_in, dim=2)
        for t in range(T):
            x = torch.addcmul(b[t], a[t], x, out=xs[t])
        y = (xs * C_p).sum(-1).permute(1, 2, 3, 0).reshape(batch, dim, -1)[:, :, :L]
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(a, b, xs, dt_p, u_p, B_p, C_p, A)
        ctx.L = L
        return y, x[:, :, -1]

    @staticmethod
    def backward(ctx, dy, dlast):
        a, b, x, dt_p, u_p, B_p, C_p, A = ctx.saved_tensors
        T, batch, dim, n_chunks, N = x.shape
        pad = n_chunks * T - ctx.L
        dy = F.pad(dy, (0, pad)) if pad else dy
        dy = dy.reshape(batch, dim, n_chunks, T).permute(3, 0, 1, 2).contiguous()
        # the adjoint g_l = c_l + a_{l+1} g_{l+1} (eq. 15) with c_l = C_l dy_l, dLoss/dx_l
        # through y_l; as the forward but reversed: (1) inside each chunk from a zero carry
        h = C_p * dy[..., None]  # c, turned into h in place
        for t in range(T - 2, -1, -1):
            h[t].addcmul_(a[t + 1], h[t + 1])
        # suffix products P_t = a_{t+1} ... a_{T-1}: how a carry at the chunk's end reaches t
        P = torch.empty_like(a)
        P[-1] = 1
        for t in range(T - 2, -1, -1):
            torch.mul(P[t + 1], a[t + 1], out=P[t])
        # (2) the gradient reaching each chunk's last state from later chunks
        carry = [torch.zeros_like(h[0, :, :, 0]) if dlast is None else dlast.to(h.dtype)]
        for k in range(n_chunks - 1, 0, -1):
            carry.append(a[0, :, :, k] * torch.addcmul(h[0, :, :, k], P[0, :, :, k], carry[-1]))
        g = h.addcmul_(P, torch.stack(carry[::-1], dim=2))  # (3) dLoss/dx_l
        # chain rule through a = exp(Δ A) and b = Δ B u; a_l x_{l-1} = x_l - b_l
        g_log_a = torch.sub(x, b).mul_(g)
        gB = (g * B_p).sum(-1)  # (T, batch, dim, n_chunks)
        d_dt = (g_log_a * A[:, None, :]).sum(-1) + gB * u_p
        d_A = (g_log_a * dt_p[..., None]).sum((0, 1, 3))
        d_B = (g * (dt_p * u_p)[..., None]).sum(2)  # (T, batch, n_chunks, N)
        d_C = (x * dy[..., None]).sum(2)
        d_u = gB * dt_p

        def by_sequence(t):  # (T, batch, X, n_chunks) -> (batch, X, L)
            return t.permute(1, 2, 3, 0).reshape(t.shape[1], t.shape[2], -1)[:, :, :ctx.L]

        return (by_sequence(d_dt), d_A, by_sequence(d_B.transpose(2, 3)),
                by_sequence(d_C.transpose(2, 3)), by_sequence(d_u), None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False, chunk=None):
    """The selective scan by Blelloch's two-level scheme, vectorised in PyTorch.

    The same arguments and results as :func:`selective_scan_reference`. The L steps are
    cut into chunks of ``chunk`` steps (default: the power of two nearest sqrt(L/2)), and
    (1) every chunk is scanned at once, one position after the other, from a zero state,
    keeping only its total (the pair of eq. 13 for the whole chunk); (2) the totals are
    combined one chunk after the other, giving the state entering each chunk; (3) every
    chunk is scanned at once again from that state. That is about 2 chunk + L/chunk Python
    steps instead of L, each on a larger tensor. The backward runs the same scheme in
    reverse (eq. 15). Unlike the Triton kernel it keeps the (batch, dim, L, N) states.
    """
    dtype = _scan_dtype(u, delta, A, B, C, D, z, delta_bias)
    L = u.shape[2]
    T = chunk or 2 ** max(0, round(math.log2(math.sqrt(L / 2))))
    dt = _step_sizes(delta, delta_bias, delta_softplus, dtype)
    y, last = _ChunkedScan.apply(dt, A.to(dtype), B.to(dtype), C.to(dtype), u.to(dtype), T)
    out = _gate(y, u, D, z, dtype).to(u.dtype)
    return (out, last) if return_last_state else out


# ---------------------------------------------------------- selective scan: public op


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                       return_last_state):
    """Validate the selective-scan arguments (shapes, dtypes, devices, A <= 0)."""
    dtypes = FLOAT_DTYPES + (torch.float64,)
    check_tensor(u, "u", ndim=3, dtypes=dtypes)
    batch, dim, L = u.shape
    if u.numel() == 0:
        raise ValueError(f"u must not be empty, got shape {tuple(u.shape)}")
    check_tensor(A, "A", ndim=2, dtypes=dtypes)
    if A.shape[0] != dim or A.shape[1] == 0:
        raise ValueError(f"A must have shape (dim, N) = ({dim}, N >= 1), got {tuple(A.shape)}")
    N = A.shape[1]
    shapes = {"delta": (batch, dim, L), "B": (batch, N, L), "C": (batch, N, L)}
    optional = {"D": (D, (dim,)), "z": (z, (batch, dim, L)), "delta_bias": (delta_bias, (dim,))}
    named = {"u": u, "A": A}
    for name, (t, shape) in [*((n, (t, shapes[n])) for n, t in
                               (("delta", delta), ("B", B), ("C", C))), *optional.items()]:
        if t is None and name in optional:
            continue
        check_tensor(t, name, dtypes=dtypes)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match u {tuple(u.shape)} and "
                             f"A {tuple(A.shape)}, got {tuple(t.shape)}")
        named[name] = t
    check_same("device", **named)
    check_same("dtype", **{k: named[k] for k in ("u", "delta", "z") if k in named})
    check_bool(delta_softplus, "delta_softplus")
    check_bool(return_last_state, "return_last_state")
    # exp(Δ A) > 1 would grow the state exponentially: Mamba keeps A = -exp(A_log) < 0
    if not bool(torch.isfinite(A).all()) or bool((A > 0).any()):
        raise ValueError("A must be finite and <= 0: exp(Δ A) > 1 grows the state every step")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Mamba's selective scan (eqs. 11, 12), differentiable on every backend.

    u, delta, z: (batch, dim, L), one float dtype; A: (dim, N) with no positive entry;
    B, C: (batch, N, L); D, delta_bias: (dim,); any of fp32, fp16, bf16 (float64 on the
    "torch" backend). Δ = softplus(delta + delta_bias) if ``delta_softplus`` (eq. 11),
    x_l = exp(Δ_l A) x_{l-1} + Δ_l B_l u_l (eq. 12), out = (C_l x_l + D u_l) silu(z_l)
    (eq. 12), with an fp32 state; out has u's dtype. With ``return_last_state`` also the
    last state (batch, dim, N) fp32 (its gradient is used, unlike Mamba's).

    backend: ``"auto"`` (Triton on CUDA, else PyTorch), ``"triton"`` (the kernels of
    :mod:`lib.ssm_kernels`; Triton's interpreter on CPU; N <= 256) or ``"torch"``
    (:func:`selective_scan_chunked`). A with a positive (or non-finite) entry is refused:
    exp(Δ A) > 1 would grow the state exponentially. That check reads A's values, a
    small device sync per call on CUDA; other inputs are checked by shape, dtype and
    device only (a NaN in u propagates to the output, as in any op).
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    args = (u, delta, A, B, C, D, z, delta_bias)
    if resolve_backend(backend, u) == "torch":
        return selective_scan_chunked(*args, delta_softplus, return_last_state)
    from .ssm_kernels import MAX_STATE, SelectiveScanFn

    if A.shape[1] > MAX_STATE:
        raise ValueError(f"backend='triton' supports N <= {MAX_STATE}, got A with N = "
                         f"{A.shape[1]}; use backend='torch'")
    if any(t is not None and t.dtype == torch.float64 for t in args):
        raise TypeError("backend='triton' takes fp32, fp16 or bf16 inputs, not float64")
    args = tuple(t.contiguous() if t is not None else None for t in args)
    out, last = SelectiveScanFn.apply(*args, delta_softplus)
    return (out, last) if return_last_state else out
