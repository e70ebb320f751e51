"""Small language-model experiments of chapter 6: variants over seeds, loss by position.

Chapter 6 reproduces row (E) of Table 3 of Vaswani et al. (2017) in miniature: the same
:class:`lib.transformer.TinyLM` with sinusoidal or learned positions, several seeds each,
trained on windows shorter than the model's ``max_len`` and evaluated at every position
up to ``max_len``. The same runs then answer two questions: do the variants differ at the
positions they were trained on, and does either carry over to longer inputs (the reason
the paper gives for choosing the sinusoids).

* :func:`position_losses`: the mean next-token loss at each position of consecutive
  windows of held-out text, shape (seq_len,).
* :class:`Run`: one trained model: variant name, seed, per-step training losses, the
  validation loss by position, and the model itself.
* :func:`train_variants`: every config times every seed, through
  :func:`lib.training.train_lm`; seed s fixes both the initialisation and the order of
  the training windows, so runs with the same seed are paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backend import default_device
from .training import _check_model, _model_device, check_tokens, train_lm, train_mode
from .transformer import TinyLM, TinyLMConfig
from .validate import check_bool, check_int, check_positive_int, check_real


@torch.no_grad()
def position_losses(
    model: nn.Module, tokens: torch.Tensor, seq_len: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) at each position of a window, shape (seq_len,).

    ``tokens`` (N,) is cut into W = floor((N - 1) / seq_len) consecutive windows; entry t
    is the loss of predicting token t + 1 of a window from its tokens 0..t, averaged over
    the W windows (the tail that fills no window is left out). ``seq_len`` defaults to
    ``model.max_len``. When N - 1 is a multiple of ``seq_len`` the mean of the result is
    :func:`lib.training.evaluate_lm` on the same tokens (chapter 6, eq. 13).
    """
    _check_model(model)
    seq_len = getattr(model, "max_len", None) if seq_len is None else seq_len
    check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_size, "batch_size")
    check_tokens(tokens, min_len=seq_len + 1, vocab_size=getattr(model, "vocab_size", None))
    device = _model_device(model)
    n_windows = (tokens.numel() - 1) // seq_len
    x = tokens[: n_windows * seq_len].view(n_windows, seq_len)  # (W, seq_len)
    y = tokens[1 : n_windows * seq_len + 1].view(n_windows, seq_len)
    total = torch.zeros(seq_len, dtype=torch.float64)
    with train_mode(model, False):
        for i in range(0, n_windows, batch_size):
            logits = model(x[i : i + batch_size].to(device)).logits  # (b, seq_len, V)
            nll = F.cross_entropy(logits.transpose(1, 2).float(),
                                  y[i : i + batch_size].to(device), reduction="none")
            total += nll.sum(0).double().cpu()  # (seq_len,)
    return (total / n_windows).float()


@dataclass(frozen=True)
class Run:
    """One trained model of :func:`train_variants`."""

    name: str  # the key of its config
    seed: int
    history: list[float]  # training loss of every step
    position_loss: torch.Tensor  # (eval_len,) validation loss by position
    model: TinyLM


def _check_configs(configs) -> dict[str, TinyLMConfig]:
    if not isinstance(configs, Mapping):
        raise TypeError(f"configs must be a mapping from names to TinyLMConfig, "
                        f"got {type(configs).__name__}")
    if not configs:
        raise ValueError("configs must hold at least one variant, got none")
    for name, config in configs.items():
        if not isinstance(name, str):
            raise TypeError(f"configs keys must be str, got {type(name).__name__}")
        if not isinstance(config, TinyLMConfig):
            raise TypeError(f"configs[{name!r}] must be a TinyLMConfig, "
                            f"got {type(config).__name__}")
    return dict(configs)


def _check_seeds(seeds) -> list[int]:
    if not isinstance(seeds, Sequence) or isinstance(seeds, str):
        raise TypeError(f"seeds must be a sequence of ints, got {type(seeds).__name__}")
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    for s in seeds:
        check_int(s, "seeds", minimum=0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    return list(seeds)


def train_variants(
    configs: Mapping[str, TinyLMConfig],
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    *,
    seeds: Sequence[int],
    steps: int,
    batch_size: int,
    lr: float,
    train_len: int | None = None,
    eval_len: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, list[Run]]:
    """Train one :class:`~lib.transformer.TinyLM` per config and seed; return the runs.

    Each model is initialised after ``torch.manual_seed(seed)`` and trained by
    :func:`lib.training.train_lm` for ``steps`` steps of ``batch_size`` windows of
    ``train_len`` tokens (default: the config's ``max_len``) with peak learning rate
    ``lr``, its windows drawn with ``seed``. It is then scored by :func:`position_losses`
    on ``val_tokens`` in windows of ``eval_len`` tokens (default: ``max_len``), which may
    be longer than ``train_len``: positions the model never saw in training.
    Returns {name: [Run for each seed, in order]}. One progress bar counts the runs.
    """
    configs = _check_configs(configs)
    seeds = _check_seeds(seeds)
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    check_bool(progress, "progress")
    device = default_device() if device is None else torch.device(device)
    for config in configs.values():
        for what, length in (("train_len", train_len), ("eval_len", eval_len)):
            if length is not None:
                check_int(length, what, minimum=1, maximum=config.max_len)
        check_tokens(train_tokens, "train_tokens", min_len=(train_len or config.max_len) + 1,
                     vocab_size=config.vocab_size)
        check_tokens(val_tokens, "val_tokens", min_len=(eval_len or config.max_len) + 1,
                     vocab_size=config.vocab_size)
    runs: dict[str, list[Run]] = {name: [] for name in configs}
    bar = tqdm(total=len(configs) * len(seeds), desc="runs", disable=not progress)
    for name, config in configs.items():
        for seed in seeds:
            torch.manual_seed(seed)
            model = TinyLM(config).to(device)
            history = train_lm(model, train_tokens, steps, batch_size=batch_size,
                               seq_len=train_len, lr=lr, seed=seed, progress=False)
            losses = position_losses(model, val_tokens, eval_len)
            runs[name].append(Run(name, seed, history, losses, model))
            bar.update(1)
    bar.close()
    return runs
