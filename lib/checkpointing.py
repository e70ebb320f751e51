"""Gradient checkpointing: trade one extra forward pass for O(sqrt(n)) activation memory.

Chapter 3 (equation numbers refer to it). Chen, Xu, Zhang & Guestrin (2016), "Training
Deep Nets with Sublinear Memory Cost".

Backpropagation through a chain of n layers keeps every layer's saved tensors from the
forward pass until the backward pass reaches that layer: O(n) activations (eq. 3). Cut
the chain into k segments, keep only each segment's input, and recompute a segment's
activations when the backward pass reaches it. The peak is then

    M(k) = (k - 1) + floor(n / k)  activations  ~  n/k + k          (eq. 4)

(the k - 1 segment boundaries, plus one segment recomputed at a time), minimised near
k = sqrt(n) (eq. 5), for one extra forward of every checkpointed layer (eq. 6).

Module layout: the schedule model (the spec: which activations are live at each step,
in plain Python) -> our checkpoint (a non-reentrant implementation on saved-tensor
hooks) -> checkpoint_sequential, checkpoint_recursive -> :func:`mlp_chain`, the uniform
chain the chapter measures. The measurements themselves (saved bytes, forward calls,
CUDA peak) are :mod:`lib.memory`'s. The reference for ``checkpoint(fn, *args)`` is
``fn(*args)`` itself: same outputs, same gradients, bit for bit.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from .validate import (
    check_bool,
    check_callable,
    check_int,
    check_positive_int,
    check_real,
    check_tensor,
)

# ----------------------------------------------------------------------------- schedule model


def segment_sizes(n: int, k: int) -> list[int]:
    """Sizes of k consecutive segments of an n-layer chain, as equal as possible, larger first.

    The first ``n % k`` segments get one layer more. Larger segments go first because only
    the checkpoints to the *left* of a segment are live while it is recomputed (eq. 4).
    """
    n = check_positive_int(n, "n")
    k = _check_segments(k, n, "k")
    q, r = divmod(n, k)
    return [q + 1] * r + [q] * (k - r)


def peak_activations(n: int, k: int) -> int:
    """Peak number of live activations when an n-layer chain runs in k segments (eq. 4).

    ``(k - 1) + n // k``: the outputs of the k - 1 checkpointed segments plus the layers of
    the last segment, which is not checkpointed (recomputing it would gain nothing). k = 1
    is no checkpointing: n activations (eq. 3). The chain's input is not counted.
    """
    n = check_positive_int(n, "n")
    k = _check_segments(k, n, "k")
    # segment j (0-based, size s_j) is live with the j checkpoints left of it; sizes do not
    # grow, so the maximum of j + s_j is at the last segment: (k - 1) + n // k.
    return k - 1 + n // k


def forward_count(n: int, k: int) -> int:
    """Layer forward calls for one forward + backward pass with k segments (eq. 6).

    ``2n - n // k``: every layer once, plus one extra forward of every layer in the k - 1
    checkpointed segments (the last segment is not recomputed).
    """
    return n + sum(segment_sizes(n, k)[:-1])


def optimal_segments(n: int) -> int:
    """The k minimising the memory model n/k + k (eq. 5): floor or ceil of sqrt(n).

    It also minimises the exact peak (k - 1) + n // k of eq. 4 (checked for every n up to
    1000 in the tests); ties go to the smaller k, which recomputes fewer layers.
    """
    n = check_positive_int(n, "n")
    root = math.isqrt(n)
    candidates = [k for k in (root, root + 1) if 1 <= k <= n]
    return min(candidates, key=lambda k: (n / k + k, k))


@dataclass(frozen=True)
class Step:
    """One step of a schedule: ``op`` ("forward", "recompute" or "backward") of layer ``layer``.

    ``live`` maps each activation index held after the step to its role: "saved" (kept by
    the forward pass), "checkpoint" (a segment boundary) or "recomputed". Activation i is
    the output of layer i; activation 0, the input, is never counted.
    """

    op: str
    layer: int
    live: dict


@dataclass
class Schedule:
    """A forward + backward schedule of an n-layer chain: its steps, peak and forward count."""

    n: int
    steps: list[Step]

    @property
    def live_counts(self) -> list[int]:
        return [len(step.live) for step in self.steps]

    @property
    def peak(self) -> int:
        """The most activations live at once (the memory the schedule needs)."""
        return max(self.live_counts)

    @property
    def forwards(self) -> int:
        """Layer forward calls, first pass and recomputations together."""
        return sum(step.op != "backward" for step in self.steps)


class _Tape:
    """Records a schedule step by step; ``live`` is the current {activation: role}."""

    def __init__(self, n: int):
        self.n, self.live, self.steps, self.seen = n, {}, [], set()

    def forward(self, i: int, role: str | None) -> None:
        if role is not None:
            self.live[i] = role
        op = "recompute" if i in self.seen else "forward"
        self.seen.add(i)
        self.steps.append(Step(op, i, dict(self.live)))

    def backward(self, i: int, free_input: bool) -> None:
        self.live.pop(i, None)  # a_i is freed once layer i's backward has used it
        if free_input:
            self.live.pop(i - 1, None)  # a segment's input, freed after its first layer
        self.steps.append(Step("backward", i, dict(self.live)))


def segment_schedule(n: int, k: int) -> Schedule:
    """What autograd keeps for ``checkpoint_sequential(layers, k, x)`` on n layers (eq. 4).

    The first k - 1 segments run without saving anything but their output (the next
    segment's input); the last runs normally. Backward goes segment by segment from the
    end, recomputing each checkpointed segment from its input first. The peak equals
    ``peak_activations(n, k)`` and the measured
    :func:`lib.memory.saved_activation_bytes` (tests).
    """
    sizes = segment_sizes(n, k)
    tape = _Tape(n)
    bounds, start = [], 1
    for s in sizes:
        bounds.append((start, start + s - 1))
        start += s
    for j, (l, r) in enumerate(bounds):
        last = j == k - 1
        for i in range(l, r + 1):
            tape.forward(i, "saved" if last else "checkpoint" if i == r else None)
    for j in reversed(range(k)):
        l, r = bounds[j]
        if j < k - 1:
            for i in range(l, r + 1):
                tape.forward(i, "recomputed")
        for i in range(r, l - 1, -1):
            tape.backward(i, free_input=i == l and l > 1)
    return Schedule(n, tape.steps)


def recursive_schedule(n: int) -> Schedule:
    """The recursive extreme (eq. 7): halve, checkpoint the middle, recurse right then left.

    Peak O(log n) activations, O(n log n) forward calls. Activation i is recomputed at each
    level of the recursion that holds it.
    """
    n = check_positive_int(n, "n")
    tape = _Tape(n)

    def backprop(l: int, r: int) -> None:  # a_{l-1} is available
        if l == r:
            tape.forward(l, "recomputed" if l in tape.seen else "saved")
            tape.backward(l, free_input=False)
            return
        m = (l + r) // 2
        for i in range(l, m + 1):
            tape.forward(i, "checkpoint" if i == m else None)
        backprop(m + 1, r)
        tape.live.pop(m, None)  # the right half is done: its input a_m is freed
        backprop(l, m)

    backprop(1, n)
    return Schedule(n, tape.steps)


# ----------------------------------------------------------------------------- checkpoint


class _KeepTensors(torch.autograd.Function):
    """A no-op autograd node whose only job is to hold tensors as *saved tensors*.

    Whatever the checkpoint keeps for the backward pass (a segment's inputs, the tensors it
    recomputes) is stored on such a node, so every saved-tensor hook sees it: our byte
    counter, ``torch.autograd.graph.save_on_cpu``, or any other.
    """

    @staticmethod
    def forward(ctx, dummy, *tensors):
        ctx.save_for_backward(*tensors)
        return torch.empty(0)

    @staticmethod
    def backward(ctx, grad):  # never called: the output is not used
        raise RuntimeError("_KeepTensors is not differentiable")


def _keep(tensors: Sequence[torch.Tensor]):
    """The node holding ``tensors`` (read them back with ``node.saved_tensors``)."""
    dummy = torch.empty(0, requires_grad=True)  # forces a graph node even if nothing needs grad
    with torch.enable_grad():
        return _KeepTensors.apply(dummy, *tensors).grad_fn


class _Handle:
    """What the forward pass stores in place of a saved tensor: a ticket for its recomputation."""

    __slots__ = ("index", "__weakref__")

    def __init__(self, index: int):
        self.index = index


def _is_leaf_or_leaf_view(t: torch.Tensor) -> bool:
    """Parameters, inputs and views of them: they live anyway, so recomputation keeps them as is."""
    return t.is_leaf or (t._base is not None and t._base.is_leaf)


def _autocast_state(device_types: Sequence[str]) -> list[tuple[str, bool, torch.dtype]]:
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in device_types]


class _Frame:
    """One checkpointed call: its inputs (kept), RNG and autocast state, and the recomputation."""

    def __init__(self, fn, args, kwargs, preserve_rng_state: bool):
        self.fn, self.kwargs = fn, kwargs
        self.args = list(args)
        self.tensor_pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.requires_grad = [args[i].requires_grad for i in self.tensor_pos]
        for i in self.tensor_pos:
            self.args[i] = None  # the tensors live on the _KeepTensors node, nowhere else
        self.inputs = _keep([args[i] for i in self.tensor_pos])
        tensors = [args[i] for i in self.tensor_pos]
        tensors += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        self.cuda_devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        device_types = ["cpu"] + (["cuda"] if self.cuda_devices else [])
        self.autocast = _autocast_state(device_types)
        self.preserve_rng_state = preserve_rng_state
        if preserve_rng_state:
            self.cpu_rng = torch.get_rng_state()
            self.cuda_rng = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        self.handles: list[weakref.ref] = []  # weak: the graph owns the handles
        self.meta: list[tuple] = []
        self.recomputed = weakref.WeakKeyDictionary()  # handle -> node holding the tensor
        self.done = False

    # The pair of hooks active while fn runs the first time: save nothing, hand out tickets.
    def pack(self, t: torch.Tensor) -> _Handle:
        handle = _Handle(len(self.handles))
        self.handles.append(weakref.ref(handle))
        self.meta.append((t.shape, t.dtype, t.device))
        return handle

    def unpack(self, handle: _Handle) -> torch.Tensor:
        if not self.done:
            self.recompute()
        if handle not in self.recomputed:
            raise RuntimeError(
                "checkpoint: a saved tensor was requested after it was freed "
                "(call backward with retain_graph=True to backprop twice)")
        (t,) = self.recomputed[handle].saved_tensors
        return t

    def recompute(self) -> None:
        """Run fn again, with the forward's RNG and autocast state, recording what it saves."""
        args = list(self.args)
        for i, t, rg in zip(self.tensor_pos, self.inputs.saved_tensors, self.requires_grad,
                            strict=True):
            args[i] = t.detach().requires_grad_(rg)  # same flags: autograd saves the same things
        recorded = []

        def record(t):
            recorded.append(t if _is_leaf_or_leaf_view(t) else t.detach())

        with torch.random.fork_rng(devices=self.cuda_devices, enabled=self.preserve_rng_state,
                                   device_type="cuda"):
            if self.preserve_rng_state:
                torch.set_rng_state(self.cpu_rng)
                for d, state in zip(self.cuda_devices, self.cuda_rng, strict=True):
                    torch.cuda.set_rng_state(state, d)
            autocasts = [torch.autocast(d, enabled=on, dtype=dt) for d, on, dt in self.autocast]
            with torch.enable_grad(), saved_tensors_hooks(record, _never_unpacked):
                for ctx in autocasts:
                    ctx.__enter__()
                try:
                    self.fn(*args, **self.kwargs)
                finally:
                    for ctx in reversed(autocasts):
                        ctx.__exit__(None, None, None)
        meta = [(t.shape, t.dtype, t.device) for t in recorded]
        if meta != self.meta:
            raise RuntimeError(
                f"checkpoint: the recomputation saved {len(meta)} tensors but the forward pass "
                f"saved {len(self.meta)} (or their shapes/dtypes differ). The checkpointed "
                "function must do the same computation both times: no data-dependent control "
                "flow on global state, and preserve_rng_state=True if it draws random numbers."
            )
        for ref, t in zip(self.handles, recorded, strict=True):
            handle = ref()
            if handle is not None:  # its consumer's backward has not run yet
                self.recomputed[handle] = _keep([t])  # freed with the handle
        self.done = True


def _never_unpacked(_):
    raise RuntimeError("tensors saved during recomputation are not unpacked")


def checkpoint(fn: Callable, *args, preserve_rng_state: bool = True, **kwargs):
    """``fn(*args, **kwargs)`` without keeping its activations: they are recomputed in backward.

    Non-reentrant: while ``fn`` runs, a pair of ``saved_tensors_hooks`` replaces every tensor
    autograd would save by a handle; the first time the backward pass asks for one, ``fn``
    runs again from the kept inputs (same RNG state and autocast settings) and the recomputed
    tensors are handed out, each freed as soon as its consumer is done (chapter 3, eq. 4).
    Gradients, to every input and parameter, are those of ``fn(*args, **kwargs)`` bit for bit,
    dropout included. Keyword and non-tensor arguments, any outputs (several, non-tensor),
    and inputs that do not require grad are all fine; ``torch.autograd.grad`` works too.

    Memory kept: the tensor arguments (positional; keyword tensors are held by reference as
    given). Recomputation costs one more forward of ``fn``.
    """
    check_callable(fn, "fn")
    check_bool(preserve_rng_state, "preserve_rng_state")
    if not torch.is_grad_enabled():  # nothing will be saved: nothing to checkpoint
        return fn(*args, **kwargs)
    frame = _Frame(fn, args, kwargs, preserve_rng_state)
    with saved_tensors_hooks(frame.pack, frame.unpack):
        return fn(*args, **kwargs)


def _check_segments(segments, n_layers: int, name: str = "segments") -> int:
    segments = check_int(segments, name, minimum=1)
    if segments > n_layers:
        raise ValueError(
            f"{name} must be at most the number of layers ({n_layers}), got {segments}")
    return segments


def _as_layers(layers) -> list:
    if isinstance(layers, nn.Sequential):
        layers = list(layers)
    elif isinstance(layers, (list, tuple, nn.ModuleList)):
        layers = list(layers)
    else:
        raise TypeError(f"layers must be an nn.Sequential or a list of modules, "
                        f"got {type(layers).__name__}")
    if not layers:
        raise ValueError("layers must contain at least one layer, got none")
    for i, layer in enumerate(layers):
        check_callable(layer, f"layers[{i}]")
    return layers


def _run(layers: list, x):
    for layer in layers:
        x = layer(x)
    return x


def checkpoint_sequential(layers: nn.Sequential | Sequence[Callable], segments: int,
                          x: torch.Tensor, *, preserve_rng_state: bool = True) -> torch.Tensor:
    """Run ``layers`` on ``x`` in ``segments`` checkpointed segments (chapter 3, eq. 4).

    layers: an ``nn.Sequential`` or a list of modules (callables), each taking one input;
    x: the first layer's input, e.g. (batch, width); returns the last layer's output.
    The chain is cut by ``segment_sizes``; the first ``segments - 1`` segments are
    checkpointed, the last runs normally (it would be recomputed right away). So
    ``segments=1`` is no checkpointing, and the peak is ``peak_activations(n, segments)``
    activations; ``optimal_segments(n)`` minimises it.
    """
    layers = _as_layers(layers)
    segments = _check_segments(segments, len(layers))
    check_tensor(x, "x")
    check_bool(preserve_rng_state, "preserve_rng_state")
    start = 0
    sizes = segment_sizes(len(layers), segments)
    for s in sizes[:-1]:
        x = checkpoint(_run, layers[start:start + s], x, preserve_rng_state=preserve_rng_state)
        start += s
    return _run(layers[start:], x)


def checkpoint_recursive(layers: nn.Sequential | Sequence[Callable], x: torch.Tensor, *,
                         preserve_rng_state: bool = True) -> torch.Tensor:
    """Run ``layers`` on ``x`` with nested checkpoints: the recursive extreme (chapter 3, eq. 7).

    layers and x as in :func:`checkpoint_sequential`.

    The left half (``ceil(n / 2)`` layers) is checkpointed, and both halves recurse, down to
    single layers. Peak O(log n) activations for O(n log n) forward calls; the schedule is
    ``recursive_schedule(n)``, whose peak and forward count the tests measure.
    """
    layers = _as_layers(layers)
    check_tensor(x, "x")
    check_bool(preserve_rng_state, "preserve_rng_state")
    if len(layers) == 1:
        return layers[0](x)
    m = (len(layers) + 1) // 2
    recurse = functools.partial(checkpoint_recursive, preserve_rng_state=preserve_rng_state)
    h = checkpoint(recurse, layers[:m], x, preserve_rng_state=preserve_rng_state)
    return recurse(layers[m:], h)


# ----------------------------------------------------------------------------- test chain


def mlp_chain(n: int, width: int, *, p_drop: float = 0.0, seed: int = 0) -> nn.Sequential:
    """n layers of ``Linear(width, width) -> ReLU`` (``-> Dropout(p_drop)`` if ``p_drop > 0``).

    Each layer saves one (batch, width) activation for backward (the ReLU output, which is
    also the next Linear's input), the uniform chain of eq. 3. Weights drawn from ``seed``.
    """
    n = check_positive_int(n, "n")
    width = check_positive_int(width, "width")
    p_drop = check_real(p_drop, "p_drop", minimum=0.0)
    if p_drop >= 1.0:
        raise ValueError(f"p_drop must be in [0, 1), got {p_drop}")
    check_int(seed, "seed")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers = [nn.Sequential(nn.Linear(width, width), nn.ReLU(),
                                *([nn.Dropout(p_drop)] if p_drop > 0 else []))
                  for _ in range(n)]
    finally:
        torch.random.set_rng_state(generator_state)
    return nn.Sequential(*layers)
