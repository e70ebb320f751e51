"""What to compile ahead of time: one Triton kernel in one launch configuration.

Kernel modules return a list of :class:`KernelSpec` from a function ``aot_specs()``;
:mod:`lib.aot` (``python -m lib.bench compile``) compiles them for GPUs that are not
here. This module imports nothing but the standard library, so a kernel module can
declare its specs without importing the compile driver, Triton or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelSpec:
    """One kernel in one launch configuration, as the library launches it by default.

    args: every argument of a representative launch, by name, exactly as the library
        passes it: tensors (on the ``meta`` device is enough: a meta tensor reports the
        16-byte-aligned address a fresh CUDA allocation has), ints, floats and
        constexprs. :mod:`lib.aot` runs Triton's own launch-time specialization on them,
        so the compiled kernel has the signature, constants and ``tt.divisibility``
        hints of the launched one (an int equal to 1 becomes a constant; aligned
        pointers and ints divisible by 16 are marked divisible by 16).
    signature, constexprs: used instead when ``args`` is None: argument -> Triton type
        (``"*fp16"``, ``"i32"``, ``"fp32"``...) and compile-time constants. Such a spec
        compiles without the launcher's hints (no vectorised loads, no ``cp.async``),
        so its profile can differ from the launched kernel's; the table marks it.

    matmul: the kernel multiplies matrices and must use tensor cores.
    """

    name: str
    kernel: object  # triton.JITFunction
    signature: dict[str, str] = field(default_factory=dict)
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    matmul: bool = False
    args: dict[str, object] | None = None
