"""How much memory a computation needs beyond its inputs: two honest measurements.

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

Chapter 7 uses both to compare standard attention with FlashAttention's tiling.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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


def peak_rss_extra(fn) -> int:
    """Bytes by which the process's resident memory peaks above its level before ``fn()``.

    Linux only (see :func:`rss_measurable`); run it in a fresh process for a clean number.
    """
    if not rss_measurable():
        raise RuntimeError("peak_rss_extra needs Linux's /proc/self/clear_refs")
    before = _proc_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    fn()
    return (_proc_kib("VmHWM") - before) * 1024
