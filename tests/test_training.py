"""lib/training.py: the one training loop (any model, any loss), the LM helpers on top of
it, train_mode, seeding, bad input."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from lib.training import (
    evaluate_lm,
    lm_loss,
    lr_at,
    seed_everything,
    train,
    train_lm,
    train_mode,
)
from lib.transformer import TinyLM


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(vocab_size=11, d_model=16, n_heads=2, n_layers=2, max_len=40) | kw
    return TinyLM(**args, backend="torch").eval()


def regression_batches(w_true):
    def batch_fn(g):
        x = torch.randn(16, 3, generator=g)
        return x, x @ w_true

    return batch_fn


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


# ------------------------------------------------------------------------------ train


def test_train_fits_a_linear_model_and_returns_every_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    w_true = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    history = train(model, regression_batches(w_true), mse, steps=300, lr=5e-2,
                    weight_decay=0.0, progress=False)
    assert len(history) == 300 and all(isinstance(h, float) for h in history)
    assert history[-1] < 1e-3 * history[0]
    torch.testing.assert_close(model.weight.T, w_true, atol=2e-2, rtol=0)


def test_train_is_deterministic_given_the_seed():
    w_true = torch.ones(3, 2)
    runs = []
    for seed in (4, 4, 5):
        torch.manual_seed(0)
        runs.append(train(nn.Linear(3, 2), regression_batches(w_true), mse, steps=5,
                          seed=seed, progress=False))
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_train_leaves_frozen_parameters_and_the_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1), nn.Linear(3, 2)).eval()
    model[0].requires_grad_(False)
    frozen = model[0].weight.clone()
    modes = []

    def loss_fn(m, x, y):
        modes.append(m.training)
        return mse(m, x, y)

    train(model, regression_batches(torch.ones(3, 2)), loss_fn, steps=3, progress=False)
    assert torch.equal(model[0].weight, frozen) and modes == [True] * 3
    assert not model.training


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    rates = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_train_mode_restores_the_mode_even_after_an_error():
    model = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="inside"):
        with train_mode(model, False):
            assert not model.training
            raise RuntimeError("inside")
    assert model.training


def test_seed_everything_seeds_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        g = seed_everything(123)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item(),
                      torch.rand(1, generator=g).item()))
    assert draws[0] == draws[1]


# ------------------------------------------------------------------- language models


def test_train_lm_learns_a_periodic_sequence():
    model = tiny(7, max_len=16)
    tokens = torch.arange(5).repeat(200)  # 0 1 2 3 4 0 1 2 ...: predictable after one token
    history = train_lm(model, tokens, steps=60, batch_size=8, lr=1e-2, progress=False)
    assert len(history) == 60 and all(isinstance(h, float) for h in history)
    assert history[0] > 2.0 and max(history[-5:]) < 0.1
    assert evaluate_lm(model, tokens[:300]) < 0.1
    assert not model.training  # the mode it had (tiny() returns it in eval mode)


def test_train_lm_is_deterministic_and_trains_only_what_requires_grad():
    tokens = torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(0))
    histories = []
    for _ in range(2):
        model = tiny(8)
        model.tok_emb.weight.requires_grad_(False)
        frozen = model.tok_emb.weight.clone()
        histories.append(train_lm(model, tokens, steps=5, batch_size=4, seq_len=12,
                                  progress=False, seed=3))
        assert torch.equal(model.tok_emb.weight, frozen)
    assert histories[0] == histories[1]


def test_train_lm_custom_loss():
    calls = []

    def loss_fn(model, x, y):
        calls.append((x.shape, y.shape, torch.equal(x[:, 1:], y[:, :-1])))
        return lm_loss(model(x).logits, y)

    train_lm(tiny(9), torch.arange(50) % 11, steps=3, batch_size=2, seq_len=6,
             loss_fn=loss_fn, progress=False)
    assert calls == [((2, 6), (2, 6), True)] * 3


def test_evaluate_lm_equals_direct_cross_entropy():
    """Windows of seq_len + 1 tokens overlapping by one; a shorter last window."""
    model = tiny(10, max_len=8)
    tokens = torch.randint(0, 11, (30,), generator=torch.Generator().manual_seed(1))
    nll = []
    for s in range(0, 29, 8):
        w = tokens[s : s + 9]
        logits = model(w[None, :-1]).logits[0]
        nll.append(torch.nn.functional.cross_entropy(logits, w[1:], reduction="none"))
    expected = torch.cat(nll)
    assert expected.numel() == 29
    assert evaluate_lm(model, tokens, batch_size=2) == pytest.approx(expected.mean().item(),
                                                                     rel=1e-5)


# ------------------------------------------------------------------------------ bad input


def test_training_bad_input():
    model = tiny()
    tokens = torch.arange(100) % 11
    batch_fn = regression_batches(torch.ones(3, 2))
    with pytest.raises(ValueError, match="at least 41 tokens"):
        train_lm(model, tokens[:40], steps=1, progress=False)
    with pytest.raises(TypeError, match="tokens must be a LongTensor"):
        train_lm(model, tokens.float(), steps=1, seq_len=8, progress=False)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        train_lm(model, tokens, steps=0, seq_len=8, progress=False)
    with pytest.raises(ValueError, match="lr must be positive"):
        train_lm(model, tokens, steps=1, seq_len=8, lr=0.0, progress=False)
    with pytest.raises(ValueError, match="lr must be positive"):
        train(nn.Linear(3, 2), batch_fn, mse, steps=1, lr=float("nan"), progress=False)
    with pytest.raises(TypeError, match="lr must be a number"):
        train(nn.Linear(3, 2), batch_fn, mse, steps=1, lr="1e-3", progress=False)
    with pytest.raises(ValueError, match="grad_clip must be positive"):
        train(nn.Linear(3, 2), batch_fn, mse, steps=1, grad_clip=-1.0, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        train(lambda x: x, batch_fn, mse, steps=1, progress=False)
    with pytest.raises(TypeError, match="batch_fn must be callable"):
        train(nn.Linear(3, 2), [1, 2], mse, steps=1, progress=False)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        train(nn.Linear(3, 2), batch_fn, "mse", steps=1, progress=False)
    with pytest.raises(TypeError, match="steps must be an int"):
        train(nn.Linear(3, 2), batch_fn, mse, steps=2.5, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with train_mode("model"):
            pass
    with pytest.raises(ValueError, match="seed must be at least 0"):
        seed_everything(-1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        train_lm(model, tokens, steps=1, seq_len=8, progress=False)
    with pytest.raises(ValueError, match="tokens must have 1 dimensions"):
        evaluate_lm(model, tokens[None])
