"""``triton`` and ``tl`` for kernel modules, or stand-ins when Triton is not installed.

Kernel modules write ``from ._triton import tl, triton`` and define their kernels
with ``@triton.jit`` as usual. Without Triton (macOS, Windows) the stand-ins let
those modules import: the decorator returns the function unchanged and the
kernels are never launched, because :func:`lib.backend.resolve_backend` only
returns ``"triton"`` when Triton is installed.
"""

from types import SimpleNamespace

from .backend import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - exercised on systems without Triton
    triton = SimpleNamespace(jit=lambda fn=None, **kw: fn if fn else (lambda f: f))
    tl = SimpleNamespace(constexpr=None)

__all__ = ["triton", "tl", "HAS_TRITON"]
