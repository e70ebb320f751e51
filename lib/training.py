"""The book's one training loop, and the small pieces every chapter that trains shares.

* :func:`train`: any model, any loss. Each step draws a batch from ``batch_fn(generator)``
  (a seeded ``torch.Generator``, so a run is repeatable), computes
  ``loss_fn(model, *batch)``, and takes an AdamW step (weight decay on matrices only)
  with linear warmup, cosine decay to a tenth of ``lr`` (:func:`lr_at`) and gradient
  clipping. A ``tqdm.auto`` bar shows progress; the per-step losses are returned.
* :func:`train_mode`: ``with train_mode(model, False): ...`` sets the mode and restores
  the one the model had, instead of saving and restoring ``model.training`` by hand.
* :func:`seed_everything`: Python's, NumPy's and PyTorch's generators in one call.
* Language models (chapters 6 and 9): :func:`lm_loss` (eq. 13 of chapter 6),
  :func:`train_lm` (random windows of a token stream, through :func:`train`) and
  :func:`evaluate_lm` (every token predicted once; exp of it is the perplexity).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .validate import (
    FLOAT_DTYPES,
    check_bool,
    check_callable,
    check_int,
    check_long_tensor,
    check_positive_int,
    check_real,
    check_tensor,
)

Batch = Sequence[torch.Tensor]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy and PyTorch; return a CPU generator seeded alike."""
    check_int(seed, "seed", minimum=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def train_mode(model: nn.Module, mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in training (``mode=True``) or eval mode; restore its mode on exit."""
    _check_model(model)
    check_bool(mode, "mode")
    was_training = model.training
    model.train(mode)
    try:
        yield model
    finally:
        model.train(was_training)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Learning rate at ``step``: linear warmup over ``warmup`` steps, then cosine to lr/10.

    step in [0, steps), steps >= 1, lr > 0, warmup >= 0.
    """
    check_int(steps, "steps", minimum=1)
    check_int(step, "step", minimum=0, maximum=steps - 1)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    check_int(warmup, "warmup", minimum=0)
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_betas(betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of floats, got {betas!r}")
    checked = []
    for i, b in enumerate(betas):
        b = check_real(b, f"betas[{i}]", minimum=0.0)
        if b >= 1.0:  # Adam's moving averages must forget
            raise ValueError(f"betas[{i}] must be less than 1, got {b}")
        checked.append(b)
    return tuple(checked)


def train(
    model: nn.Module,
    batch_fn: Callable[[torch.Generator], Batch],
    loss_fn: Callable[..., torch.Tensor],
    steps: int,
    *,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    grad_clip: float | None = 1.0,
    betas: tuple[float, float] = (0.9, 0.99),
    seed: int = 0,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps; return the loss of every step (floats).

    batch_fn(generator) -> a tuple of tensors (already on the model's device), drawn with
    the CPU ``generator`` seeded with ``seed``; ``loss_fn(model, *batch)`` -> a scalar tensor.
    Only parameters that require grad are trained, so a frozen base (``requires_grad_
    (False)``) stays as it is. Weight decay applies to parameters with two or more
    dimensions. ``warmup`` defaults to min(100, steps // 10). The model trains in
    training mode and is left in the mode it had.
    """
    _check_model(model)
    check_callable(batch_fn, "batch_fn")
    check_callable(loss_fn, "loss_fn")
    check_positive_int(steps, "steps")
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    weight_decay = check_real(weight_decay, "weight_decay", minimum=0.0)
    warmup = min(100, steps // 10) if warmup is None else warmup
    check_int(warmup, "warmup", minimum=0)
    if grad_clip is not None:
        grad_clip = check_real(grad_clip, "grad_clip", minimum=0.0, strict=True)
    betas = _check_betas(betas)
    check_int(seed, "seed", minimum=0)
    check_bool(progress, "progress")
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str, got {type(desc).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters that require grad")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas)
    g = torch.Generator().manual_seed(seed)
    history = []
    with train_mode(model, True):
        bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            batch = batch_fn(g)
            if not isinstance(batch, (tuple, list)):  # a tensor would be unpacked row by row
                raise TypeError(f"batch_fn must return a tuple of tensors, "
                                f"got {type(batch).__name__}")
            loss = loss_fn(model, *batch)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                what = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise TypeError(f"loss_fn must return a scalar tensor, got {what}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            history.append(loss.item())
            if step % 25 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
    return history


# ------------------------------------------------------------------ language models


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats (chapter 6, eq. 13).

    logits (B, T, V) floating point, targets (B, T) token ids.
    """
    check_tensor(logits, "logits", ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    check_long_tensor(targets, "targets", ndim=2)
    if targets.shape != logits.shape[:2]:
        raise ValueError(f"targets must have shape (B, T) = {tuple(logits.shape[:2])} to match "
                         f"logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def check_tokens(tokens, name: str = "tokens", *, min_len: int = 1,
                 vocab_size: int | None = None) -> torch.Tensor:
    """Raise unless ``tokens`` is a 1-D LongTensor of at least ``min_len`` token ids, each
    in [0, vocab_size) when ``vocab_size`` is given (which reads the values once)."""
    check_long_tensor(tokens, name, ndim=1)
    check_int(min_len, "min_len", minimum=0)
    if tokens.numel() < min_len:
        raise ValueError(f"{name} must hold at least {min_len} tokens, got {tokens.numel()}")
    if vocab_size is not None:
        check_long_tensor(tokens, name, low=0, high=vocab_size)
    return tokens


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_lm(
    model: nn.Module,
    tokens: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    seq_len: int | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **kwargs,
) -> list[float]:
    """Train a language model on random windows of the 1-D LongTensor ``tokens``.

    Each step draws ``batch_size`` windows of ``seq_len + 1`` tokens (``seq_len``
    defaults to ``model.max_len``); inputs are the first ``seq_len`` tokens, targets the
    last ``seq_len``. The loss is ``loss_fn(model, x, y)``, by default :func:`lm_loss`
    of ``model(x).logits``. Other keyword arguments (``lr``, ``warmup``, ``seed``,
    ``progress``, ...) go to :func:`train`. Returns the loss of every step.
    """
    _check_model(model)
    seq_len = getattr(model, "max_len", None) if seq_len is None else seq_len
    check_positive_int(seq_len, "seq_len")
    check_tokens(tokens, min_len=seq_len + 1, vocab_size=getattr(model, "vocab_size", None))
    check_positive_int(batch_size, "batch_size")
    if loss_fn is not None:
        check_callable(loss_fn, "loss_fn")
    device = _model_device(model)
    offsets = torch.arange(seq_len + 1)

    def windows(g: torch.Generator):
        starts = torch.randint(0, tokens.numel() - seq_len, (batch_size, 1), generator=g)
        window = tokens[starts + offsets].to(device)  # (B, seq_len + 1)
        return window[:, :-1], window[:, 1:]

    loss_fn = loss_fn or (lambda m, x, y: lm_loss(m(x).logits, y))
    return train(model, windows, loss_fn, steps, **kwargs)


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, tokens: torch.Tensor, seq_len: int | None = None, batch_size: int = 64
) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` over ``tokens`` (1-D).

    ``tokens`` is cut into consecutive windows of ``seq_len + 1`` tokens that overlap by
    one, so every token after the first is predicted exactly once, from the context of
    its own window. exp of the result is the perplexity (chapter 6, eq. 14).
    """
    _check_model(model)
    seq_len = getattr(model, "max_len", None) if seq_len is None else seq_len
    check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_size, "batch_size")
    check_tokens(tokens, min_len=2, vocab_size=getattr(model, "vocab_size", None))
    device = _model_device(model)
    n = tokens.numel()
    n_full = (n - 1) // seq_len  # full windows; a shorter tail window takes the rest
    x = tokens[: n_full * seq_len].view(n_full, seq_len)  # (n_full, seq_len)
    y = tokens[1 : n_full * seq_len + 1].view(n_full, seq_len)
    batches = [(x[i : i + batch_size], y[i : i + batch_size])
               for i in range(0, n_full, batch_size)]
    rest = n_full * seq_len
    if rest < n - 1:
        batches.append((tokens[rest : n - 1][None], tokens[rest + 1 :][None]))
    total = 0.0
    with train_mode(model, False):
        for xb, yb in batches:
            logits = model(xb.to(device)).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), yb.to(device).flatten(),
                                     reduction="sum").item()
    return total / (n - 1)
