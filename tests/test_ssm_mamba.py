"""lib.mamba: the block on both backends, its time-invariant twin against the recurrence,
the selective-copying data, and bad input."""

import pytest
import torch

from lib import backend
from lib.mamba import (
    MambaBlock,
    TinyMamba,
    selective_copying_accuracy,
    selective_copying_batch,
    selective_copying_loss,
)
from lib.ssm import selective_scan_reference, ssm_recurrent


def test_block_keeps_the_shape_and_is_causal():
    torch.manual_seed(0)
    block = MambaBlock(8, d_state=4, backend="torch")
    x = torch.randn(2, 11, 8)
    y = block(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 5, 8)  # changing the future leaves the past unchanged
    torch.testing.assert_close(block(x2)[:, :6], y[:, :6], rtol=0, atol=1e-6)


def test_selective_block_uses_the_reference_scan():
    # the block's SSM equals the sequential reference on the same Δ, B, C (the chunked
    # version is what runs): the plumbing of projections and shapes is right
    torch.manual_seed(1)
    block = MambaBlock(8, d_state=4, backend="torch")
    x, z = torch.randn(2, 16, 9), torch.randn(2, 16, 9)
    x_dbl = block.x_proj(x.transpose(1, 2))
    dt, B, C = torch.split(x_dbl, [block.dt_rank, 4, 4], dim=-1)
    ref = selective_scan_reference(x, (dt @ block.dt_proj.weight.T).transpose(1, 2),
                                   -torch.exp(block.A_log), B.transpose(1, 2),
                                   C.transpose(1, 2), block.D, z, block.dt_proj.bias, True)
    torch.testing.assert_close(block.ssm(x, z), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not backend.HAS_TRITON, reason="Triton is not installed")
def test_block_on_triton_matches_torch_with_gradients():
    torch.manual_seed(2)
    block = MambaBlock(4, d_state=4, backend="torch")
    x = torch.randn(1, 10, 4)
    out = {}
    for name in ("torch", "triton"):
        block.backend = name
        block.zero_grad()
        y = block(x)
        y.square().sum().backward()
        out[name] = [y] + [p.grad.clone() for p in block.parameters()]
    for a, b in zip(out["triton"], out["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)


def test_time_invariant_block_is_a_diagonal_ssm_per_channel():
    torch.manual_seed(3)
    block = MambaBlock(4, d_state=3, selective=False).double()
    x = torch.randn(2, 8, 20, dtype=torch.float64)
    z = torch.zeros_like(x) + 10.0  # silu(10) ~ 10: compare before the gate instead
    y = block.ssm(x, z) / torch.nn.functional.silu(z)
    dt = torch.nn.functional.softplus(block.dt_bias)
    A = -torch.exp(block.A_log)
    for e in range(8):
        A_bar, B_bar = torch.exp(dt[e] * A[e]), dt[e] * block.B[e]
        want = ssm_recurrent(A_bar, B_bar, block.C[e], x[:, e]) + block.D[e] * x[:, e]
        torch.testing.assert_close(y[:, e], want, rtol=1e-10, atol=1e-10)


def test_selective_copying_batch():
    g = torch.Generator().manual_seed(0)
    inputs, targets = selective_copying_batch(g, 50, length=20, n_tokens=5, n_colors=6)
    assert inputs.shape == (50, 25) and targets.shape == (50, 5)
    assert torch.all(inputs[:, 20:] == 7)  # the markers
    for row, target in zip(inputs, targets, strict=True):
        data = row[:20][row[:20] != 0]  # the data tokens, in order, are the targets
        assert torch.equal(data, target)
    assert targets.min() >= 1 and targets.max() <= 6


def test_loss_and_accuracy_of_a_tiny_model():
    torch.manual_seed(4)
    model = TinyMamba(10, d_model=8, n_layers=1, d_state=4, backend="torch")
    inputs, targets = selective_copying_batch(torch.Generator().manual_seed(1), 8)
    loss = selective_copying_loss(model, inputs, targets)
    assert loss.ndim == 0 and loss.item() > 0
    model.train()
    acc = selective_copying_accuracy(model, inputs, targets)
    assert 0 <= acc <= 1 and model.training  # the mode is restored


BAD = [
    ("d_model 0", lambda: MambaBlock(0), ValueError, "d_model"),
    ("d_state float", lambda: MambaBlock(8, d_state=2.5), TypeError, "d_state"),
    ("selective string", lambda: MambaBlock(8, selective="no"), TypeError, "selective"),
    ("unknown backend", lambda: MambaBlock(8, backend="gpu"), ValueError, "backend"),
    ("wrong width", lambda: MambaBlock(8)(torch.randn(1, 3, 7)), ValueError, "d_model"),
    ("rank 2", lambda: MambaBlock(8)(torch.randn(3, 8)), ValueError, "hidden"),
    ("float tokens", lambda: TinyMamba(5)(torch.zeros(1, 3)), TypeError, "tokens"),
    ("too many tokens", lambda: selective_copying_batch(torch.Generator(), 2, 3, 4),
     ValueError, "n_tokens"),
    ("batch 0", lambda: selective_copying_batch(torch.Generator(), 0), ValueError, "batch"),
]


@pytest.mark.parametrize("case,call,error,word", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_the_argument_named(case, call, error, word):
    with pytest.raises(error, match=word):
        call()
