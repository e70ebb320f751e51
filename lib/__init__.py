"""Tested implementations behind the book: Triton kernels and device-agnostic PyTorch.

``lib.backend`` is imported first: it sets ``TRITON_INTERPRET=1`` when CUDA is
absent, before any kernel module defines a ``@triton.jit`` kernel. Topic modules
(``lib.softmax``, ``lib.attention``, ...) are imported by name.
"""

from .backend import (
    by_scale,
    default_device,
    environment_report,
    gpu_section,
    resolve_backend,
    scale,
)

__all__ = [
    "by_scale", "default_device", "environment_report", "gpu_section", "resolve_backend", "scale",
]
