"""Ahead-of-time compilation of every Triton kernel in ``lib`` for GPUs that are not here.

Triton can compile for a target GPU on a machine that has none:
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda",
90, 32))`` returns PTX and a cubin. Triton's bundled ``ptxas-blackwell -v`` then reports
registers, spill bytes and barriers, and the PTX tells whether matrix products use
tensor cores (``wgmma`` on sm_90a; ``mma.sync``, the older instruction, on both).

The kernel modules are listed in :data:`KERNEL_MODULES`; each declares what to compile
with a function ``aot_specs()`` returning :class:`lib.kernel_spec.KernelSpec` objects
(its default launch configurations). A spec that gives its launch arguments is compiled
with the specialization Triton's launcher derives from them (:func:`launch_source`),
so the profile describes the kernel that runs. Run ``python -m lib.bench compile`` (or
``python -m lib.aot``) for the table.

Kernels must be plain ``triton.JITFunction`` objects here, so this module is run
with ``TRITON_INTERPRET=0``; :func:`compile_all_subprocess` takes care of it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

from .kernel_spec import KernelSpec

# The lib modules that define aot_specs(): a module with a Triton kernel adds its name.
KERNEL_MODULES = ("softmax", "loss_scaling", "attention_launch", "ssm_kernels")

# Per-block shared memory limits (opt-in maximum): H100 227 KiB, A100 163 KiB.
TARGETS = {"sm_90a": (90, 227 * 1024), "sm_80": (80, 163 * 1024)}

__all__ = ["KERNEL_MODULES", "TARGETS", "CompileReport", "KernelSpec", "collect_specs",
           "compile_all", "compile_all_subprocess", "compile_spec", "format_table",
           "launch_source"]


@dataclass
class CompileReport:
    name: str
    target: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    shared_limit: int
    tensor_cores: bool  # wgmma or mma.sync in the PTX
    matmul: bool
    launch_hints: bool = True  # compiled with the launcher's specialization
    vector_loads: int = 0  # ld.global.v2/v4 instructions in the PTX
    cp_async: int = 0  # cp.async instructions (asynchronous global -> shared copies)
    wgmma: bool = False  # Hopper's warp-group matrix product (else mma.sync, if any)


def collect_specs(modules: tuple[str, ...] | None = None, sweep: bool = False
                  ) -> list[KernelSpec]:
    """The specs of every module in :data:`KERNEL_MODULES` (or of ``modules``, a subset).

    sweep: take ``sweep_specs()`` instead of ``aot_specs()`` where a module defines it: every
    launch variant the module can make, a longer list than the table's.
    """
    names = modules or KERNEL_MODULES
    unknown = [m for m in names if m not in KERNEL_MODULES]
    if unknown:
        raise ValueError(f"modules must be among KERNEL_MODULES {KERNEL_MODULES}, got {unknown}")
    specs = []
    for name in names:
        module = importlib.import_module(f"lib.{name}")
        if not hasattr(module, "aot_specs"):
            raise RuntimeError(f"lib.{name} is listed in KERNEL_MODULES but has no aot_specs()")
        specs.extend(getattr(module, "sweep_specs", module.aot_specs)() if sweep
                     else module.aot_specs())
    return specs


def _ptxas() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise RuntimeError("Triton's bundled ptxas was not found; is this Triton built for NVIDIA?")


def launch_source(spec: KernelSpec, target: str, hints: bool = True):
    """``(ASTSource, options)`` for ``spec`` on ``target``, specialised as a launch would be.

    With ``spec.args`` this runs the kernel's own binder (the function Triton's JIT calls
    at every launch, ``triton.runtime.jit.create_function_from_signature``) and
    ``JITFunction._pack_args`` on those arguments, for the target's backend: the result
    has the signature, the constants (ints equal to 1) and the ``tt.divisibility = 16``
    attributes (16-byte-aligned pointers, ints divisible by 16) that a launch with these
    arguments compiles with. Without ``spec.args``: the bare signature, no hints.
    hints=False drops the ``tt.divisibility`` attributes (to show what they change).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    capability, _ = TARGETS[target]
    backend = make_backend(GPUTarget("cuda", capability, 32))
    launch = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    if spec.args is None:
        src = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs)
        return src, backend.parse_options(launch).__dict__
    kernel = spec.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, kwargs = binder(**spec.args, **spec.constexprs, **launch)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, kwargs)
    return ASTSource(kernel, signature, constexprs, attrs if hints else {}), options.__dict__


def compile_spec(spec: KernelSpec, target: str, hints: bool = True) -> CompileReport:
    """Compile ``spec`` for ``target`` (``"sm_90a"`` or ``"sm_80"``) and read its resource use
    (hints=False: without the launcher's divisibility hints, see :func:`launch_source`)."""
    import triton
    from triton.backends.compiler import GPUTarget

    capability, shared_limit = TARGETS[target]
    src, options = launch_source(spec, target, hints)
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_file = os.path.join(tmp, "kernel.ptx")
        with open(ptx_file, "w") as f:
            f.write(ptx)
        cmd = [_ptxas(), f"-arch={target}", "-v", ptx_file, "-o", os.path.join(tmp, "k.cubin")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    info = out.stdout + out.stderr
    registers = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    wgmma = capability >= 90 and "wgmma" in ptx
    tensor_cores = wgmma or "mma.sync" in ptx
    return CompileReport(
        spec.name, target, registers, spills, compiled.metadata.shared, shared_limit,
        tensor_cores, spec.matmul, launch_hints=spec.args is not None and hints,
        vector_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]", ptx)),
        cp_async=len(re.findall(r"cp\.async\.c[ag]", ptx)), wgmma=wgmma,
    )


def compile_all(targets=tuple(TARGETS), modules=None, names=None,
                sweep: bool = False, hints: bool = True) -> list[CompileReport]:
    """Compile every spec of every module (or of ``modules``) for every target.

    names: optional substrings; only specs whose name contains one of them are compiled.
    sweep: every launch variant (see :func:`collect_specs`). hints: see :func:`launch_source`.
    """
    specs = [s for s in collect_specs(modules, sweep)
             if not names or any(n in s.name for n in names)]
    return [compile_spec(spec, t, hints) for spec in specs for t in targets]


def compile_all_subprocess(
    modules: tuple[str, ...] | None = None, names: tuple[str, ...] | None = None,
    sweep: bool = False, hints: bool = True,
) -> list[CompileReport]:
    """Run :func:`compile_all` in a fresh interpreter with ``TRITON_INTERPRET=0``.

    modules: names such as ``("softmax",)`` to compile only those modules' kernels.
    names: substrings of spec names, e.g. ``("attn_fwd fp16",)``, to compile only those.
    sweep: every launch variant (see :func:`collect_specs`). hints: False compiles without
    the launcher's divisibility hints (see :func:`launch_source`).
    """
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "lib.aot", "--json", *(f"--module={m}" for m in modules or ())]
    cmd += [f"--name={n}" for n in names or ()] + (["--sweep"] if sweep else [])
    cmd += [] if hints else ["--no-hints"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ahead-of-time compilation failed:\n{out.stderr[-4000:]}")
    return [CompileReport(**r) for r in json.loads(out.stdout)]


def format_table(reports: list[CompileReport]) -> str:
    """One row per kernel and target; ``*`` marks a spec compiled without launch hints."""
    header = (f"{'kernel':<36}{'target':<8}{'regs':>5}{'spill B':>8}{'smem B':>8}"
              f"{'cp.async':>9}  tensor cores")
    rows = [header, "-" * len(header)]
    for r in reports:
        tc = "n/a (no matmul)" if not r.matmul else "NO" if not r.tensor_cores else (
            "yes (wgmma)" if r.wgmma else "yes (mma)")
        name = r.name if r.launch_hints else r.name + " *"
        rows.append(f"{name:<36}{r.target:<8}{r.registers:>5}{r.spill_bytes:>8}"
                    f"{r.shared_bytes:>8}{r.cp_async:>9}  {tc}")
    if not all(r.launch_hints for r in reports):
        rows.append("* compiled without the launcher's divisibility hints")
    return "\n".join(rows)


if __name__ == "__main__":
    from lib.backend import INTERPRET

    modules = tuple(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--module="))
    names = tuple(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--name="))
    sweep, hints = "--sweep" in sys.argv, "--no-hints" not in sys.argv
    reports = (compile_all_subprocess(modules, names, sweep, hints) if INTERPRET
               else compile_all(modules=modules, names=names, sweep=sweep, hints=hints))
    if "--json" in sys.argv:
        print(json.dumps([asdict(r) for r in reports]))
    else:
        print(format_table(reports))
