"""Mixed-precision training, emulated on any device: chapter 2's experiment harness.

Chapter 2 (equation numbers refer to it). Micikevicius et al. (2018), "Mixed precision
training": FP16 storage and arithmetic with FP32 accumulation, an FP32 master copy of
the weights (eq. 8) and loss scaling (eqs. 9-11).

A CPU has no FP16 matrix unit, so the low-precision formats are *emulated*: a
:class:`MixedLinear` layer rounds its input, weight, bias and output to the format, and
rounds the gradient of each of them again in the backward pass (:class:`Rounded`). The
product of two FP16 (or BF16) numbers is exact in FP32, so an FP32 matrix product of
rounded operands is exactly "low-precision multiplies, FP32 accumulation", the
tensor-core recipe.

A :class:`Recipe` says how a run stores and updates its numbers: the compute format,
whether an FP32 master copy of the weights takes the updates (else the weights are
rounded to the format after every step), and the loss scale (none, a fixed ``S``, or
``"dynamic"``: :class:`lib.loss_scaling.DynamicLossScaler`). :func:`train_mixed` runs
one recipe with Adam. It is its own loop rather than :func:`lib.training.train` because
the scaler's calls sit between the backward pass and the step, and a run without master
weights rounds its weights after the step.

Module layout: :class:`Rounded` -> :class:`MixedLinear` -> :func:`mixed_mlp` ->
:func:`record_activation_grads` -> :class:`Recipe` -> :func:`train_mixed` ->
:class:`MixedRun`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .loss_scaling import DynamicLossScaler, unscale_and_check_
from .validate import (
    check_bool,
    check_callable,
    check_int,
    check_positive_int,
    check_real,
)

LOW_PRECISION = (torch.float16, torch.bfloat16)  # the formats a recipe can compute in


class Rounded(torch.autograd.Function):
    """Store a tensor in ``dtype``: round it forward, round its gradient backward.

    x: fp32, any shape; returns fp32 holding values of ``dtype`` (the cast is bit-exact
    with :func:`lib.floating_point.round_to_format`, chapter 2, eq. 6).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.dtype = dtype
        return x.to(dtype).float()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(ctx.dtype).float(), None


class MixedLinear(nn.Linear):
    """``nn.Linear`` whose input, weight, bias and output are stored in ``dtype``.

    dtype: ``torch.float16``, ``torch.bfloat16``, or None for plain FP32. The weights
    themselves stay FP32 parameters (the master copy); each forward reads them rounded.
    """

    def __init__(self, in_features: int, out_features: int,
                 dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features)
        self.compute_dtype = _check_dtype(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None:
            return super().forward(x)

        def r(t):
            return Rounded.apply(t, self.compute_dtype)

        return r(F.linear(r(x), r(self.weight), r(self.bias)))


def mixed_mlp(widths: Sequence[int], dtype: torch.dtype | None = None, seed: int = 0,
              layer: type[MixedLinear] = MixedLinear) -> nn.Sequential:
    """ReLU MLP of :class:`MixedLinear` layers, widths[0] -> ... -> widths[-1].

    No ReLU after the last layer. ``seed`` fixes the initial weights, so that runs in
    different precisions start from the same FP32 numbers. ``layer``: a subclass of
    :class:`MixedLinear` to build the layers with (e.g. one that sums in another order).
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least two sizes, got {list(widths)}")
    for i, w in enumerate(widths):
        check_positive_int(w, f"widths[{i}]")
    _check_dtype(dtype)
    check_int(seed, "seed", minimum=0)
    if not (isinstance(layer, type) and issubclass(layer, MixedLinear)):
        raise TypeError(f"layer must be MixedLinear or a subclass of it, got {layer!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for k in range(len(widths) - 1):
            layers.append(layer(widths[k], widths[k + 1], dtype))
            if k < len(widths) - 2:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def record_activation_grads(model: nn.Module, recorded: list) -> list:
    """Hooks that append the gradient of every linear layer's output to ``recorded``.

    The gradient is the one autograd hands to the layer's output (fp32 tensors, shape of
    the output), before a :class:`MixedLinear` rounds it. Returns the hook handles:
    call ``.remove()`` on each when done.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(recorded, list):
        raise TypeError(f"recorded must be a list, got {type(recorded).__name__}")

    def keep(module, inputs, out):
        out.register_hook(lambda g: recorded.append(g.detach().float()))

    return [m.register_forward_hook(keep) for m in model.modules()
            if isinstance(m, nn.Linear)]


def _check_dtype(dtype) -> torch.dtype | None:
    if dtype is not None and dtype not in LOW_PRECISION:
        raise ValueError(f"dtype must be None (fp32), torch.float16 or torch.bfloat16, "
                         f"got {dtype!r}")
    return dtype


@dataclass(frozen=True)
class Recipe:
    """How a run stores and updates its numbers (chapter 2, eqs. 8-11).

    dtype: compute and storage format of activations, weights as read, and gradients
    (None: FP32 throughout). master_weights: Adam updates an FP32 master copy (eq. 8);
    False: the weights are rounded to ``dtype`` at the start and after every step.
    loss_scale: None (no scaling), a fixed positive ``S`` (eqs. 9-10: a step whose scaled
    gradients hold an inf or NaN is skipped), or ``"dynamic"`` (eq. 11, with
    ``init_scale`` and ``growth_interval``).
    """

    dtype: torch.dtype | None = None
    master_weights: bool = True
    loss_scale: float | str | None = None
    init_scale: float = 2.0**16
    growth_interval: int = 2000

    def __post_init__(self):
        _check_dtype(self.dtype)
        check_bool(self.master_weights, "master_weights")
        if self.dtype is None and not self.master_weights:
            raise ValueError("master_weights=False needs a low-precision dtype to round to")
        if isinstance(self.loss_scale, str):
            if self.loss_scale != "dynamic":
                raise ValueError(f"loss_scale must be None, a positive number or 'dynamic', "
                                 f"got {self.loss_scale!r}")
        elif self.loss_scale is not None:
            check_real(self.loss_scale, "loss_scale", minimum=0.0, strict=True)
        check_real(self.init_scale, "init_scale", minimum=0.0, strict=True)
        check_positive_int(self.growth_interval, "growth_interval")


@dataclass
class MixedRun:
    """What :func:`train_mixed` measured, one entry per step.

    losses: the batch loss before the 1/accumulation factor; scales: the loss scale the
    step used (1.0 without scaling); skipped: the step found an inf/NaN and did not
    update; recorded: step -> activation gradients (:func:`record_activation_grads`).
    """

    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    recorded: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def late_loss(self) -> float:
        """Mean loss over the last third of the steps (at least one step)."""
        tail = self.losses[-max(1, len(self.losses) // 3):]
        return sum(tail) / len(tail)


def _round_weights_(model: nn.Module, dtype: torch.dtype) -> None:
    """No master copy: the weights are stored in ``dtype`` (held as fp32 values)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


def train_mixed(
    model: nn.Module,
    batch_fn: Callable[[torch.Generator], Sequence[torch.Tensor]],
    loss_fn: Callable[..., torch.Tensor],
    steps: int,
    recipe: Recipe,
    *,
    lr: float = 1e-3,
    accumulation: float = 1.0,
    seed: int = 0,
    record_at: Sequence[int] = (),
    progress: bool = False,
    desc: str = "training",
) -> MixedRun:
    """Train ``model`` with Adam under ``recipe``; return the per-step :class:`MixedRun`.

    batch_fn(generator) -> tuple of tensors, drawn with a CPU generator seeded with
    ``seed`` (the batch order); ``loss_fn(model, *batch)`` -> scalar. Every
    :class:`MixedLinear` of ``model`` is set to ``recipe.dtype``. The loss is divided by
    ``accumulation`` (one micro-batch of that many) and Adam's eps too, which leaves FP32
    training unchanged: Adam is invariant to a constant factor in the loss when its eps
    carries the same factor. At the steps in ``record_at`` the activation gradients are
    kept. No learning-rate schedule, no clipping: the only difference between two
    recipes is how numbers are stored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_callable(batch_fn, "batch_fn")
    check_callable(loss_fn, "loss_fn")
    check_positive_int(steps, "steps")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    accumulation = check_real(accumulation, "accumulation", minimum=0.0, strict=True)
    check_int(seed, "seed", minimum=0)
    record_at = {check_int(s, "record_at[i]", minimum=0) for s in record_at}
    check_bool(progress, "progress")
    layers = [m for m in model.modules() if isinstance(m, MixedLinear)]
    if recipe.dtype is not None and not layers:
        raise ValueError("model has no MixedLinear layer to compute in the recipe's dtype")
    for m in layers:
        m.compute_dtype = recipe.dtype
    if not recipe.master_weights:
        _round_weights_(model, recipe.dtype)
    # foreach: the multi-tensor update, the same numbers as the per-tensor loop, faster
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8 / accumulation,
                           foreach=True)
    scaler = (DynamicLossScaler(recipe.init_scale, growth_interval=recipe.growth_interval)
              if recipe.loss_scale == "dynamic" else None)
    fixed = None if recipe.loss_scale in (None, "dynamic") else float(recipe.loss_scale)
    gen = torch.Generator().manual_seed(seed)
    run = MixedRun()
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=0.5):
        batch = batch_fn(gen)
        hooks = []
        if step in record_at:
            hooks = record_activation_grads(model, run.recorded.setdefault(step, []))
        loss = loss_fn(model, *batch) / accumulation
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            run.scales.append(scaler.get_scale())  # the scale this step uses
            scaler.scale(loss).backward()
            run.skipped.append(bool(scaler.unscale_(opt).item()))
            scaler.step(opt)
            scaler.update()
        elif fixed is not None:
            run.scales.append(fixed)
            (loss * fixed).backward()
            run.skipped.append(_unscale_fixed(model, fixed))
            if not run.skipped[-1]:
                opt.step()
        else:
            run.scales.append(1.0)
            loss.backward()
            run.skipped.append(False)
            opt.step()
        for h in hooks:
            h.remove()
        if not recipe.master_weights:
            _round_weights_(model, recipe.dtype)
        run.losses.append(loss.item() * accumulation)
    return run


def _unscale_fixed(model: nn.Module, scale: float) -> bool:
    """Divide every gradient by the fixed ``scale`` (eq. 10); True if one was inf/NaN."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    found = torch.zeros((), dtype=torch.float32)
    if grads:
        unscale_and_check_(grads, found, torch.tensor(1.0 / scale, dtype=torch.float32))
    return bool(found.item())


def autoencoder_batches(data: torch.Tensor, batch: int
                        ) -> Callable[[torch.Generator], tuple[torch.Tensor]]:
    """``batch_fn`` for :func:`train_mixed`: ``batch`` random rows of ``data`` (N, D)."""
    if not isinstance(data, torch.Tensor) or data.dim() != 2 or not data.is_floating_point():
        raise ValueError("data must be a 2-D floating-point tensor (N, D)")
    check_positive_int(batch, "batch")
    if data.shape[0] == 0:
        raise ValueError("data must hold at least one row")

    def batch_fn(gen: torch.Generator) -> tuple[torch.Tensor]:
        return (data[torch.randint(0, data.shape[0], (batch,), generator=gen)],)

    return batch_fn


def reconstruction_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``loss_fn`` for :func:`train_mixed`: mean squared error of ``model(x)`` against x."""
    return F.mse_loss(model(x).float(), x)

