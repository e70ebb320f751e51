"""The Mamba block, its time-invariant twin, a tiny sequence model, and the selective-copying
task of chapter 8.

Gu & Dao (2023), "Mamba: linear-time sequence modeling with selective state spaces"
(Section 3.4 for the block, Section 4.1.1 and Table 1 for selective copying). Equation
numbers refer to chapter 8.

:class:`MambaBlock` follows the reference ``mamba_ssm.modules.mamba_simple.Mamba``: an input
projection to two branches of width E = expand x d_model; on one, a causal depthwise
convolution, SiLU and the selective SSM (Δ, B, C projected from the branch, eq. 11); the
other gates the SSM output through SiLU (eq. 12); an output projection back to d_model.
With ``selective=False`` the same block holds a time-invariant diagonal SSM instead
(S4D-Real: learned Δ, B, C per channel, the same A), computed as a convolution with the
Vandermonde kernel (eqs. 9, 10): the "Mamba architecture with an S4 layer" row of the
paper's Table 1, in miniature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backend import check_backend
from .ssm import selective_scan, ssm_convolve, ssm_kernel
from .training import train_mode
from .validate import check_bool, check_positive_int, check_tensor


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class MambaBlock(nn.Module):
    """One Mamba block: (batch, L, d_model) -> (batch, L, d_model).

    d_state: N, the state size per channel; d_conv: width of the causal convolution;
    expand: E / d_model; dt_rank: width of the low-rank projection that produces Δ
    (default ceil(d_model / 16), as Mamba); selective: input-dependent Δ, B, C (Mamba's
    S6) or a time-invariant diagonal SSM (S4D-Real); backend: for :func:`selective_scan`.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, selective: bool = True, backend: str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv),
                            ("expand", expand)):
            check_positive_int(value, name)
        check_bool(selective, "selective")
        self.backend = check_backend(backend)
        self.d_model, self.d_state, self.selective = d_model, d_state, selective
        self.d_inner = E = expand * d_model
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        check_positive_int(self.dt_rank, "dt_rank")
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1)
        # Δ in [dt_min, dt_max], log-uniform, through softplus (Mamba's initialisation)
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        # S4D-Real: A_n = -(n + 1), kept as A = -exp(A_log) so that it stays negative
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        if selective:
            self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(R, E)
            nn.init.uniform_(self.dt_proj.weight, -R**-0.5, R**-0.5)
            with torch.no_grad():
                self.dt_proj.bias.copy_(_inverse_softplus(dt))
        else:
            self.dt_bias = nn.Parameter(_inverse_softplus(dt))
            self.B = nn.Parameter(torch.ones(E, d_state))
            self.C = nn.Parameter(torch.randn(E, d_state) * d_state**-0.5)
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def ssm(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The SSM of the block on x, gated by z: both (batch, E, L) -> (batch, E, L)."""
        fp = torch.float64 if x.dtype == torch.float64 else torch.float32  # the SSM's dtype
        A = -torch.exp(self.A_log.to(fp))  # (E, N)
        if self.selective:
            x_dbl = self.x_proj(x.transpose(1, 2))  # (batch, L, R + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (batch, E, L), bias below
            B = B.transpose(1, 2).contiguous()  # (batch, N, L)
            C = C.transpose(1, 2).contiguous()
            return selective_scan(x, dt.contiguous(), A, B, C, self.D.to(fp), z,
                                  delta_bias=self.dt_proj.bias.to(fp), delta_softplus=True,
                                  backend=self.backend)
        dt = F.softplus(self.dt_bias)[:, None]  # (E, 1): the same Δ at every step
        K = ssm_kernel(torch.exp(dt * A), dt * self.B, self.C, x.shape[-1])  # (E, L)
        y = ssm_convolve(x.to(fp), K) + self.D[:, None] * x.to(fp)
        return (y * F.silu(z.to(fp))).to(x.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        check_tensor(hidden, "hidden", ndim=3)
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"hidden must have d_model = {self.d_model} features, got "
                             f"shape {tuple(hidden.shape)}")
        L = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (batch, 2E, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :L])  # causal: keep the first L outputs
        y = self.ssm(x.contiguous(), z.contiguous())  # (batch, E, L)
        return self.out_proj(y.transpose(1, 2))


class TinyMamba(nn.Module):
    """Token ids (batch, L) -> logits (batch, L, vocab): embedding, pre-norm residual Mamba
    blocks, a final LayerNorm and a linear read-out."""

    def __init__(self, vocab_size: int, d_model: int = 32, n_layers: int = 2,
                 d_state: int = 16, selective: bool = True, backend: str = "auto"):
        super().__init__()
        check_positive_int(vocab_size, "vocab_size")
        check_positive_int(n_layers, "n_layers")
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.blocks = nn.ModuleList(MambaBlock(d_model, d_state, selective=selective,
                                               backend=backend) for _ in range(n_layers))
        self.norm_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tensor(tokens, "tokens", ndim=2)
        if tokens.dtype != torch.long:
            raise TypeError(f"tokens must be a LongTensor of token ids, got {tokens.dtype}")
        h = self.embed(tokens)  # (batch, L, d_model)
        for norm, block in zip(self.norms, self.blocks, strict=True):
            h = h + block(norm(h))
        return self.head(self.norm_f(h))


# ------------------------------------------------------------------- selective copying


def selective_copying_batch(generator: torch.Generator, batch: int, length: int = 32,
                            n_tokens: int = 4, n_colors: int = 8
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the selective-copying task (Mamba, Section 4.1.1 and Figure 2).

    ``n_tokens`` data tokens ("colours" 1..n_colors) sit at random positions among noise
    tokens (0) in the first ``length`` positions; then come ``n_tokens`` marker tokens
    (n_colors + 1), at which the model must output the data tokens in their order.
    Returns inputs (batch, length + n_tokens) and targets (batch, n_tokens), int64; the
    vocabulary has n_colors + 2 tokens.
    """
    for name, value in (("batch", batch), ("length", length), ("n_tokens", n_tokens),
                        ("n_colors", n_colors)):
        check_positive_int(value, name)
    if n_tokens > length:
        raise ValueError(f"n_tokens={n_tokens} data tokens do not fit in length={length}")
    colors = torch.randint(1, n_colors + 1, (batch, n_tokens), generator=generator)
    # random distinct positions, kept in increasing order so that the order is defined
    positions = torch.rand(batch, length, generator=generator).argsort(1)[:, :n_tokens]
    positions = positions.sort(1).values
    inputs = torch.zeros(batch, length + n_tokens, dtype=torch.long)
    inputs.scatter_(1, positions, colors)
    inputs[:, length:] = n_colors + 1
    return inputs, colors


def selective_copying_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
                           ) -> torch.Tensor:
    """Cross-entropy of the model's outputs at the marker positions (the last n_tokens)."""
    logits = model(inputs)[:, -targets.shape[1]:]  # (batch, n_tokens, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def selective_copying_accuracy(model: nn.Module, inputs: torch.Tensor,
                               targets: torch.Tensor) -> float:
    """Fraction of data tokens copied correctly (argmax at each marker position)."""
    with train_mode(model, False):
        predicted = model(inputs)[:, -targets.shape[1]:].argmax(-1)
    return (predicted == targets).float().mean().item()
