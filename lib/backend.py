"""Where the code runs: backend choice, experiment scale, and an environment report.

This module is imported first by ``lib/__init__.py``. Two environment variables
must be settled before any ``@triton.jit`` decorator runs, because Triton reads
them when each kernel is defined:

* ``TRITON_INTERPRET=1`` when CUDA is absent, so that the kernels run on CPU
  tensors through Triton's interpreter. An explicit value set by the user wins
  (``python -m lib.bench compile`` sets ``0`` to compile ahead of time).
* ``TRITON_DEFAULT_FP_FUSION=1``, Triton's current default, set explicitly so
  that Triton 3.9 does not warn about it in every notebook.

One backend switch is used everywhere: public ops take
``backend="auto" | "triton" | "torch"`` and call :func:`resolve_backend`.
One scale switch is used everywhere: notebooks call :func:`scale` or
:func:`by_scale`, driven by ``BOOK_SCALE=quick|full``.
"""

from __future__ import annotations

import os
import platform
import sys

import torch

#: True when PyTorch sees a CUDA device (read once, at import).
#:
#: :meta hide-value:
CUDA = torch.cuda.is_available()
# Triton decorates its own helpers (tl.max, tl.sum, ...) when it is imported: if it was
# imported before lib, they were compiled-mode functions and the interpreter cannot run.
_LATE = "triton" in sys.modules and "TRITON_INTERPRET" not in os.environ
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import triton  # noqa: F401  (imported here so that the flags above apply)

    HAS_TRITON = True
except ImportError:  # macOS, Windows, or a minimal install
    HAS_TRITON = False

#: True when Triton kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``).
#:
#: :meta hide-value:
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1" and not _LATE
#: The values of every ``backend`` argument (see :func:`resolve_backend`).
BACKENDS = ("auto", "triton", "torch")
#: The values of ``BOOK_SCALE`` (see :func:`scale`).
SCALES = ("quick", "full")

_INSTALL_HINT = (
    "Triton is not installed. It is available for Linux only: `pip install triton` "
    "(or `pip install -e .` in the book's repository). On other systems use "
    "backend='torch' or 'auto'."
)


def check_backend(backend) -> str:
    """Raise ``ValueError`` unless ``backend`` is one of :data:`BACKENDS`; return it."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Turn ``backend`` into ``"triton"`` or ``"torch"`` for ops on ``tensors``.

    ``auto`` picks Triton when it is installed and the tensors live on a CUDA
    device, and the PyTorch reference otherwise. ``triton`` on CPU tensors runs
    the kernel through Triton's interpreter.
    """
    check_backend(backend)
    on_cuda = all(t.is_cuda for t in tensors) if tensors else CUDA
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if HAS_TRITON and on_cuda else "torch"
    if not HAS_TRITON:
        raise RuntimeError(_INSTALL_HINT)
    if not on_cuda and not INTERPRET and _LATE:
        raise RuntimeError(
            "backend='triton' on CPU tensors needs Triton's interpreter, but Triton was "
            "imported before lib, too early for lib to switch the interpreter on. Import lib "
            "first, or set TRITON_INTERPRET=1 in the environment before starting Python."
        )
    if not on_cuda and not INTERPRET:
        raise RuntimeError(
            "backend='triton' on CPU tensors needs Triton's interpreter, but "
            "TRITON_INTERPRET is not 1 (CUDA is present, or it was set to 0). Move the "
            "tensors to CUDA, or set TRITON_INTERPRET=1 before importing lib."
        )
    return "triton"


def scale() -> str:
    """The experiment scale: ``BOOK_SCALE`` if set, else ``full`` on CUDA, ``quick`` elsewhere."""
    value = os.environ.get("BOOK_SCALE", "").strip().lower()
    if not value:
        return "full" if CUDA else "quick"
    if value not in SCALES:
        raise ValueError(f"BOOK_SCALE must be one of {SCALES}, got {value!r}")
    return value


def by_scale(quick, full):
    """Return ``quick`` in quick mode and ``full`` in full mode (the one scale switch)."""
    return full if scale() == "full" else quick


def gpu_section(what: str) -> bool:
    """The gate of a notebook cell that only makes sense at full scale on a GPU.

    Returns True when CUDA is present and the scale is ``full``; otherwise prints one
    line saying that ``what`` was skipped and why, and returns False::

        if lib.gpu_section("the timing benchmark"):
            bench_softmax(None)
    """
    if CUDA and scale() == "full":
        return True
    print(f"Skipped: {what} needs CUDA and BOOK_SCALE=full\n"
          f"(here: device={default_device()}, scale={scale()}).")
    return False


def default_device() -> torch.device:
    """CUDA when present, else CPU: where notebooks put their tensors."""
    return torch.device("cuda" if CUDA else "cpu")


def environment_report() -> str:
    """One line per fact: versions, device, default backend and scale. No machine paths."""
    triton_version = "not installed"
    if HAS_TRITON:
        import triton

        triton_version = triton.__version__ + (" (interpreter on CPU)" if INTERPRET else "")
    device = torch.cuda.get_device_name(0) if CUDA else f"CPU ({platform.machine()})"
    lines = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "device": device,
        "backend='auto'": resolve_backend("auto"),
        "BOOK_SCALE": scale(),
    }
    width = max(map(len, lines))
    return "\n".join(f"{k:<{width}} : {v}" for k, v in lines.items())
