"""Ahead-of-time compilation of every Triton kernel in ``lib`` for GPUs that are not here.

Triton can compile for a target GPU on a machine that has none:
``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))``
returns PTX and a cubin. Triton's bundled ``ptxas-blackwell -v`` then reports
registers, spill bytes and barriers, and the PTX tells whether matrix products
use tensor cores (``wgmma`` on sm_90a, ``mma.sync`` on sm_80).

Each kernel module declares what to compile with a function ``aot_specs()``
returning :class:`KernelSpec` objects (its default launch configurations).
Run ``python -m lib.bench compile`` (or ``python -m lib.aot``) for the table.

Kernels must be plain ``triton.JITFunction`` objects here, so this module is run
with ``TRITON_INTERPRET=0``; :func:`compile_all_subprocess` takes care of it.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

# Per-block shared memory limits (opt-in maximum): H100 227 KiB, A100 163 KiB.
TARGETS = {"sm_90a": (90, 227 * 1024), "sm_80": (80, 163 * 1024)}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel in one launch configuration, as the library launches it by default."""

    name: str
    kernel: object  # triton.JITFunction
    signature: dict[str, str]  # argument -> Triton type ("*fp16", "i32", "fp32", ...)
    constexprs: dict[str, object] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    matmul: bool = False  # True: the kernel multiplies matrices and must use tensor cores


@dataclass
class CompileReport:
    name: str
    target: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    shared_limit: int
    tensor_cores: bool
    matmul: bool


def collect_specs(modules: tuple[str, ...] | None = None) -> list[KernelSpec]:
    """Gather the specs of every ``lib`` module that defines ``aot_specs`` (or of ``modules``)."""
    import lib

    specs = []
    for info in pkgutil.iter_modules(lib.__path__):
        if info.name in {"aot", "bench"} or (modules and info.name not in modules):
            continue
        module = importlib.import_module(f"lib.{info.name}")
        if hasattr(module, "aot_specs"):
            specs.extend(module.aot_specs())
    return specs


def _ptxas() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    raise RuntimeError("Triton's bundled ptxas was not found; is this Triton built for NVIDIA?")


def compile_spec(spec: KernelSpec, target: str) -> CompileReport:
    """Compile ``spec`` for ``target`` (``"sm_90a"`` or ``"sm_80"``) and read its resource use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    capability, shared_limit = TARGETS[target]
    src = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
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
    tensor_cores = ("wgmma" in ptx) if capability >= 90 else ("mma.sync" in ptx)
    return CompileReport(
        spec.name, target, registers, spills, compiled.metadata.shared, shared_limit,
        tensor_cores, spec.matmul,
    )


def compile_all(targets=tuple(TARGETS), modules=None, names=None) -> list[CompileReport]:
    """Compile every spec of every module (or of ``modules``) for every target.

    names: optional substrings; only specs whose name contains one of them are compiled.
    """
    specs = [s for s in collect_specs(modules) if not names or any(n in s.name for n in names)]
    return [compile_spec(spec, t) for spec in specs for t in targets]


def compile_all_subprocess(
    modules: tuple[str, ...] | None = None, names: tuple[str, ...] | None = None
) -> list[CompileReport]:
    """Run :func:`compile_all` in a fresh interpreter with ``TRITON_INTERPRET=0``.

    modules: names such as ``("softmax",)`` to compile only those modules' kernels.
    names: substrings of spec names, e.g. ``("attn_fwd (fp16",)``, to compile only those.
    """
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, "-m", "lib.aot", "--json", *(f"--module={m}" for m in modules or ())]
    cmd += [f"--name={n}" for n in names or ()]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ahead-of-time compilation failed:\n{out.stderr[-4000:]}")
    return [CompileReport(**r) for r in json.loads(out.stdout)]


def format_table(reports: list[CompileReport]) -> str:
    header = f"{'kernel':<34}{'target':<8}{'regs':>6}{'spill B':>9}{'smem B':>9}  tensor cores"
    rows = [header, "-" * len(header)]
    for r in reports:
        tc = ("yes" if r.tensor_cores else "NO") if r.matmul else "n/a (no matmul)"
        rows.append(
            f"{r.name:<34}{r.target:<8}{r.registers:>6}{r.spill_bytes:>9}"
            f"{r.shared_bytes:>9}  {tc}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    from lib.backend import INTERPRET

    modules = tuple(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--module="))
    names = tuple(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--name="))
    reports = (compile_all_subprocess(modules, names) if INTERPRET
               else compile_all(modules=modules, names=names))
    if "--json" in sys.argv:
        print(json.dumps([asdict(r) for r in reports]))
    else:
        print(format_table(reports))
