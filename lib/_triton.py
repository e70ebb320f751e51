"""``triton`` and ``tl`` for kernel modules, or stand-ins when Triton is not installed.

Kernel modules write ``from ._triton import tl, triton`` and define their kernels
with ``@triton.jit`` as usual. Without Triton (macOS, Windows) the stand-ins let
those modules import, and nothing more:

* ``triton.jit``, ``triton.autotune`` and ``triton.heuristics`` wrap the function
  in a :class:`MissingKernel`, which raises the install hint if it is launched
  (``kernel[grid](...)``). Kernels are never launched in practice, because
  :func:`lib.backend.resolve_backend` only returns ``"triton"`` when Triton is
  installed; the error is a second line of defence.
* ``triton.cdiv`` and ``triton.next_power_of_2`` are the real integer helpers:
  host code such as launch-configuration tables calls them on every backend.
* ``triton.Config`` records its arguments, as module-level autotuning tables need.
* ``tl.constexpr`` wraps a value (it is used both as an annotation and as a
  call at module level); every other ``tl`` name (``tl.float16``,
  ``tl.extra.libdevice.exp``, ...) is a named placeholder that can be stored in
  tables at import time but raises the install hint if it is called.

``tests/test_no_triton.py`` imports every ``lib`` module with Triton hidden, so a
kernel module that needs more of the stand-in fails there first.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from .backend import _INSTALL_HINT, HAS_TRITON


def cdiv(a: int, b: int) -> int:
    """Ceiling division, as ``triton.cdiv``."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


class MissingKernel:
    """A ``@triton.jit`` function on a system without Triton: importable, never runnable."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid):
        raise RuntimeError(f"cannot launch {self.fn.__name__}: {_INSTALL_HINT}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"cannot call {self.fn.__name__}: {_INSTALL_HINT}")

    def __repr__(self) -> str:
        return f"<MissingKernel {self.fn.__name__} (Triton is not installed)>"


def _decorator(fn=None, **_options):
    """``@triton.jit`` and ``@triton.jit(...)``: wrap ``fn`` in a :class:`MissingKernel`."""
    if fn is None:
        return _decorator
    return fn if isinstance(fn, MissingKernel) else MissingKernel(fn)


def _decorator_factory(*_args, **_options):
    """``@triton.autotune(configs=..., key=...)`` and ``@triton.heuristics(...)``."""
    return _decorator


class Constexpr:
    """Stand-in for ``tl.constexpr``: an annotation, and a box around a value."""

    def __init__(self, value=None):
        self.value = value

    def __repr__(self) -> str:
        return f"constexpr[{self.value!r}]"


class Placeholder:
    """Any other ``tl`` name: can be stored and looked into at import time, not called."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Placeholder:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"cannot call {self._name}: {_INSTALL_HINT}")

    def __repr__(self) -> str:
        return f"<{self._name} (Triton is not installed)>"


class _Language(Placeholder):
    """``tl`` without Triton: ``constexpr`` is real, the rest are placeholders."""

    constexpr = Constexpr


if HAS_TRITON:
    import triton
    import triton.language as tl
else:
    triton = SimpleNamespace(
        jit=_decorator,
        autotune=_decorator_factory,
        heuristics=_decorator_factory,
        Config=lambda *args, **kwargs: SimpleNamespace(args=args, kwargs=kwargs),
        cdiv=cdiv,
        next_power_of_2=next_power_of_2,
        language=None,
        __version__="not installed",
    )
    tl = _Language("tl")
    triton.language = tl

__all__ = ["triton", "tl", "HAS_TRITON"]
