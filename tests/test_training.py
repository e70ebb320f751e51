"""lib/training.py: the one training loop (any model, any loss), the LM helpers on top of
it, train_mode, seeding, bad input."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from lib.training import (
    check_tokens,
    evaluate_lm,
    lm_loss,
    lr_at,
    seed_everything,
    train,
    train_lm,
    train_mode,
)
from lib.transformer import TinyLM, TinyLMConfig


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    sizes = dict(vocab_size=11, d_model=16, n_heads=2, n_layers=2, max_len=40) | kw
    return TinyLM(TinyLMConfig(**sizes), backend="torch").eval()


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


MODEL = tiny()
TOKENS = torch.arange(100) % 11
BATCH_FN = regression_batches(torch.ones(3, 2))


def linear_train(**kw):
    return train(nn.Linear(3, 2), BATCH_FN, mse, **({"steps": 1, "progress": False} | kw))


@pytest.mark.parametrize(
    "call, error, words",
    [
        # train: wrong types, sizes, strings, NaN/inf
        (lambda: train(lambda x: x, BATCH_FN, mse, steps=1), TypeError,
         "model must be a torch.nn.Module"),
        (lambda: train(nn.Linear(3, 2), [1, 2], mse, steps=1), TypeError,
         "batch_fn must be callable"),
        (lambda: train(nn.Linear(3, 2), BATCH_FN, "mse", steps=1), TypeError,
         "loss_fn must be callable"),
        (lambda: linear_train(steps=0), ValueError, "steps must be at least 1"),
        (lambda: linear_train(steps=2.5), TypeError, "steps must be an int"),
        (lambda: linear_train(lr=0.0), ValueError, "lr must be greater than 0"),
        (lambda: linear_train(lr=-1e-3), ValueError, "lr must be greater than 0"),
        (lambda: linear_train(lr=float("nan")), ValueError, "lr must be finite"),
        (lambda: linear_train(lr=float("inf")), ValueError, "lr must be finite"),
        (lambda: linear_train(lr="1e-3"), TypeError, "lr must be a real number"),
        (lambda: linear_train(weight_decay=-0.1), ValueError, "weight_decay must be at least 0"),
        (lambda: linear_train(weight_decay="0.1"), TypeError, "weight_decay must be a real"),
        (lambda: linear_train(warmup=-1), ValueError, "warmup must be at least 0"),
        (lambda: linear_train(warmup=1.5), TypeError, "warmup must be an int"),
        (lambda: linear_train(grad_clip=-1.0), ValueError, "grad_clip must be greater than 0"),
        (lambda: linear_train(grad_clip=float("nan")), ValueError, "grad_clip must be finite"),
        (lambda: linear_train(betas=0.9), TypeError, "betas must be a pair"),
        (lambda: linear_train(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be less than 1"),
        (lambda: linear_train(betas=(-0.1, 0.99)), ValueError, r"betas\[0\] must be at least"),
        (lambda: linear_train(seed=-1), ValueError, "seed must be at least 0"),
        (lambda: linear_train(seed="0"), TypeError, "seed must be an int"),
        (lambda: linear_train(progress="no"), TypeError, "progress must be a bool"),
        (lambda: linear_train(desc=3), TypeError, "desc must be a str"),
        (lambda: train(nn.Linear(3, 2), lambda g: torch.ones(4, 3), mse, steps=1,
                       progress=False), TypeError, "batch_fn must return a tuple of tensors"),
        (lambda: train(nn.Linear(3, 2), BATCH_FN, lambda m, x, y: m(x) - y, steps=1,
                       progress=False), TypeError,
         r"loss_fn must return a scalar tensor, got \(16, 2\)"),
        (lambda: train(nn.Linear(3, 2), BATCH_FN, lambda m, x, y: 0.5, steps=1,
                       progress=False), TypeError,
         "loss_fn must return a scalar tensor, got float"),
        (lambda: lr_at(None, 10, 1e-3, 1), TypeError, "step must be an int"),
        (lambda: lr_at(10, 10, 1e-3, 1), ValueError, "step must be at most 9"),
        (lambda: lr_at(0, 0, 1e-3, 1), ValueError, "steps must be at least 1"),
        (lambda: lr_at(0, 10, -1.0, 1), ValueError, "lr must be greater than 0"),
        (lambda: lr_at(0, 10, 1e-3, -1), ValueError, "warmup must be at least 0"),
        (lambda: check_tokens(TOKENS, min_len="2"), TypeError, "min_len must be an int"),
        (lambda: seed_everything(-1), ValueError, "seed must be at least 0"),
        (lambda: seed_everything(1.0), TypeError, "seed must be an int"),
        (lambda: train_mode("model").__enter__(), TypeError, "model must be a torch.nn.Module"),
        (lambda: train_mode(MODEL, "no").__enter__(), TypeError, "mode must be a bool"),
        # language models: tokens type, rank, dtype, length, values; sizes; loss_fn
        (lambda: train_lm(MODEL, TOKENS[:40], steps=1), ValueError, "at least 41 tokens"),
        (lambda: train_lm(MODEL, TOKENS.float(), steps=1, seq_len=8), TypeError,
         "tokens must be a LongTensor"),
        (lambda: train_lm(MODEL, TOKENS.tolist(), steps=1, seq_len=8), TypeError,
         "tokens must be a torch.Tensor"),
        (lambda: train_lm(MODEL, TOKENS + 5, steps=1, seq_len=8), ValueError,
         r"tokens must hold values in \[0, 11\)"),
        (lambda: train_lm(MODEL, TOKENS, steps=0, seq_len=8), ValueError,
         "steps must be at least 1"),
        (lambda: train_lm(MODEL, TOKENS, steps=1, seq_len=0), ValueError,
         "seq_len must be at least 1"),
        (lambda: train_lm(MODEL, TOKENS, steps=1, seq_len=8, batch_size=0), ValueError,
         "batch_size must be at least 1"),
        (lambda: train_lm(MODEL, TOKENS, steps=1, seq_len=8, loss_fn="ce"), TypeError,
         "loss_fn must be callable"),
        (lambda: train_lm(MODEL, TOKENS, steps=1, seq_len=8, lr=0.0), ValueError,
         "lr must be greater than 0"),
        (lambda: train_lm("model", TOKENS, steps=1, seq_len=8), TypeError,
         "model must be a torch.nn.Module"),
        (lambda: evaluate_lm(MODEL, TOKENS[None]), ValueError, "tokens must have 1 dim"),
        (lambda: evaluate_lm(MODEL, TOKENS[:1]), ValueError, "at least 2 tokens"),
        (lambda: evaluate_lm(MODEL, TOKENS - 1), ValueError, "tokens must hold values in"),
        (lambda: evaluate_lm(MODEL, TOKENS, batch_size=-2), ValueError,
         "batch_size must be at least 1"),
        (lambda: lm_loss(torch.randn(2, 5), torch.zeros(2, dtype=torch.long)), ValueError,
         "logits must have 3 dimensions"),
        (lambda: lm_loss(torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long)), ValueError,
         r"targets must have shape \(B, T\) = \(2, 5\)"),
        (lambda: lm_loss(torch.randn(2, 5, 7), torch.zeros(2, 5)), TypeError,
         "targets must be a LongTensor"),
        (lambda: lm_loss(torch.zeros(2, 5, 7, dtype=torch.long), torch.zeros(2, 5,
                                                                          dtype=torch.long)),
         TypeError, "logits must have dtype"),
    ],
)
def test_bad_input_is_named(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_a_model_with_nothing_to_train_is_refused():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        train_lm(model, TOKENS, steps=1, seq_len=8, progress=False)
