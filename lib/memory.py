"""Memory meters: how much memory a computation needs beyond its inputs, measured.

Every measurement of memory in the book lives here (chapters 3 and 7).

Inference (no autograd graph):

* :class:`TensorMemoryTracker` counts tensor storage as PyTorch allocates and frees it
  (a ``TorchDispatchMode`` sees every aten op): the peak, over the block, of the bytes
  of tensors created inside it and still alive. Views and in-place results share their
  base's storage and are not counted twice; tensors that existed before the block (the
  inputs) are not counted at all. Deterministic and device-independent; it does not see
  scratch memory that a kernel allocates internally (e.g. a BLAS workspace).
* :func:`peak_rss_extra` measures the process itself: the operating system's high-water
  mark of resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
  resident memory just before. It sees everything, including allocator caching, but
  needs Linux and is only clean in a fresh process (memory freed earlier and kept by the
  C allocator is reused without showing up); ``python -m lib.bench attention-memory``
  therefore runs each measurement in its own subprocess.

Training (one forward + backward step of ``fn(*args, **kwargs)``):

* :func:`saved_activation_bytes`: the peak bytes of tensors autograd holds for the
  backward pass, counted with saved-tensor hooks; exact and device-independent.
* :func:`forward_calls`: how often each module runs its forward, recomputations included.
* :func:`peak_memory`: the CUDA allocator's peak, which also counts temporaries and
  gradients (CUDA only: PyTorch keeps no allocator statistics on the CPU).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .validate import check_callable


class TensorMemoryTracker(TorchDispatchMode):
    """``with TensorMemoryTracker() as t: ...`` then ``t.peak`` (bytes) and ``t.current``.

    Works under ``torch.no_grad()`` (tensors saved for backward outlive their Python
    objects and would be released too early from the count, so do not track training).
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage address -> live tensors that use it
        self._sizes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.current -= self._sizes.pop(key)
            del self._refs[key]

    def _track(self, t: torch.Tensor, key: int, size: int) -> None:
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
        self._refs[key] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0:
                continue
            if key in inputs:  # a view or an in-place result: the same memory again
                if key in self._refs:
                    self._track(t, key, size)
                continue
            self._track(t, key, size)
        return out


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_measurable() -> bool:
    """True on Linux systems where the high-water mark of resident memory can be reset."""
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def peak_rss_extra(fn: Callable[[], object]) -> int:
    """Bytes by which the process's resident memory peaks above its level before ``fn()``.

    Linux only (see :func:`rss_measurable`); run it in a fresh process for a clean number.
    """
    check_callable(fn, "fn")
    if not rss_measurable():
        raise RuntimeError("peak_rss_extra needs Linux's /proc/self/clear_refs")
    before = _proc_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    fn()
    return (_proc_kib("VmHWM") - before) * 1024


# ------------------------------------------------------------- training: saved activations


def _tensors_in(obj) -> list[torch.Tensor]:
    """Tensors in an output: a tensor, or (nested) tuples, lists and dict values."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


def _forward_backward(fn, args, kwargs) -> None:
    """``fn(*args, **kwargs)``, then backward from the sum of every output that needs grad."""
    outputs = [t for t in _tensors_in(fn(*args, **kwargs)) if t.requires_grad]
    if outputs:
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])


def _storage_key(t: torch.Tensor):
    return t.device, t.untyped_storage().data_ptr()


class _Ledger:
    """Live bytes of saved activations, one entry per storage, and their peak."""

    def __init__(self, exclude: set):
        self.exclude = exclude  # storages of the arguments: they live anyway
        self.refs: dict = {}  # storage key -> [count, nbytes]
        self.live = self.peak = 0

    def is_activation(self, t: torch.Tensor) -> bool:
        base = t._base if t._base is not None else t
        if isinstance(base, nn.Parameter) or (base.is_leaf and base.requires_grad):
            return False  # parameters and inputs that need grad (or views of them)
        return _storage_key(t) not in self.exclude

    def pack(self, t: torch.Tensor):
        if not self.is_activation(t):
            return t
        return _Counted(self, t)

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _Counted) else packed


class _Counted:
    """A saved tensor on the ledger; its storage leaves the ledger when autograd drops it."""

    __slots__ = ("ledger", "tensor", "key")

    def __init__(self, ledger: _Ledger, t: torch.Tensor):
        self.ledger, self.tensor, self.key = ledger, t, _storage_key(t)
        entry = ledger.refs.setdefault(self.key, [0, t.untyped_storage().nbytes()])
        if entry[0] == 0:
            ledger.live += entry[1]
            ledger.peak = max(ledger.peak, ledger.live)
        entry[0] += 1

    def __del__(self):
        entry = self.ledger.refs[self.key]
        entry[0] -= 1
        if entry[0] == 0:
            self.ledger.live -= entry[1]
            del self.ledger.refs[self.key]


def saved_activation_bytes(fn: Callable, *args, **kwargs) -> int:
    """Peak bytes of activations held for backward while ``fn(*args, **kwargs)`` trains.

    Runs ``fn`` and a backward pass from the sum of its outputs with a pair of
    ``torch.autograd.graph.saved_tensors_hooks`` that put every saved tensor on a ledger
    until autograd releases it. Exact and device independent (bytes come from storages,
    not from an allocator). Each storage counts once, however many ops save it or views of
    it. Not counted: parameters, inputs that require grad (and views of them), and the
    storages of the arguments, which live anyway. Our ``checkpoint`` keeps its inputs and
    recomputed tensors as saved tensors, so they are counted; ``torch.utils.checkpoint``
    keeps its recomputed tensors outside the hooks, so they are not.

    The backward pass accumulates into ``.grad`` as any backward does.
    """
    check_callable(fn, "fn")
    given = list(args) + list(kwargs.values())
    ledger = _Ledger({_storage_key(t) for t in given if isinstance(t, torch.Tensor)})
    with saved_tensors_hooks(ledger.pack, ledger.unpack):
        _forward_backward(fn, args, kwargs)
    return ledger.peak


def forward_calls(modules: Sequence[nn.Module], fn: Callable, *args, **kwargs) -> list[int]:
    """How many times each of ``modules`` runs its forward during ``fn``'s forward + backward.

    Counted with ``register_forward_hook``; recomputation in the backward pass counts too,
    so with k segments each layer of a checkpointed segment runs twice (chapter 3, eq. 6).
    """
    check_callable(fn, "fn")
    if not isinstance(modules, (list, tuple, nn.ModuleList, nn.Sequential)):
        raise TypeError(f"modules must be a list of nn.Module, got {type(modules).__name__}")
    for i, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{i}] must be an nn.Module, got {type(module).__name__}")
    counts = [0] * len(modules)
    hooks = []
    for i, module in enumerate(modules):

        def count(*_, i=i):
            counts[i] += 1

        hooks.append(module.register_forward_hook(count))
    try:
        _forward_backward(fn, args, kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def peak_memory(fn: Callable, *args, **kwargs) -> int:
    """Peak CUDA memory in bytes allocated beyond the start while ``fn`` trains one step.

    Runs ``fn(*args, **kwargs)`` and a backward pass from the sum of its outputs, and reads
    ``torch.cuda.max_memory_allocated`` on the device of the first CUDA tensor argument (or
    of ``fn``'s parameters if ``fn`` is a module). This counts everything the step allocates:
    saved activations, temporaries, gradients. On CPU there is no allocator statistic to
    read: it raises ``RuntimeError``; use ``saved_activation_bytes`` there.
    """
    check_callable(fn, "fn")
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    if isinstance(fn, nn.Module):
        tensors += list(fn.parameters())
    device = next((t.device for t in tensors if t.is_cuda), None)
    if device is None:
        raise RuntimeError(
            "peak_memory needs CUDA tensors (torch.cuda.max_memory_allocated); PyTorch keeps no "
            "allocator statistics on the CPU. Use saved_activation_bytes(fn, *args) instead.")
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _forward_backward(fn, args, kwargs)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start
