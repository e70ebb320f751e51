"""Every Triton kernel in lib compiles for sm_90a and sm_80 (``python -m lib.bench compile``):
no spills, shared memory within the SM limit, tensor cores wherever it multiplies matrices,
and the launcher's specialization (16-byte divisibility) in what is compiled."""

import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import lib
from lib import backend

pytestmark = pytest.mark.skipif(not backend.HAS_TRITON, reason="Triton is not installed")


@pytest.fixture(scope="module")
def reports():
    from lib.aot import compile_all_subprocess

    return compile_all_subprocess()


def test_every_kernel_module_is_listed_and_compiled(reports):
    """KERNEL_MODULES names exactly the lib modules that define aot_specs()."""
    from lib.aot import KERNEL_MODULES

    defining = set()
    for info in pkgutil.iter_modules(lib.__path__):
        if info.name not in {"aot", "bench"}:
            module = importlib.import_module(f"lib.{info.name}")
            if hasattr(module, "aot_specs"):
                defining.add(info.name)
    assert defining == set(KERNEL_MODULES)
    names = {r.name for r in reports}
    assert any(n.startswith("softmax_fwd") for n in names)
    assert any(n.startswith("attn_fwd") for n in names)
    assert {r.target for r in reports} == {"sm_90a", "sm_80"}


def test_no_register_spills(reports):
    spilled = [(r.name, r.target, r.spill_bytes) for r in reports if r.spill_bytes]
    assert not spilled


def test_shared_memory_within_the_sm_limit(reports):
    over = [(r.name, r.target, r.shared_bytes) for r in reports if r.shared_bytes > r.shared_limit]
    assert not over


def test_matmuls_use_tensor_cores(reports):
    missing = [(r.name, r.target) for r in reports if r.matmul and not r.tensor_cores]
    assert not missing


def test_attention_forward_ptx_has_vectorised_loads_and_cp_async(reports):
    """Compiled with the launcher's hints, the fp16 d = 64 forward loads 16-byte vectors
    and copies its K, V tiles to shared memory asynchronously, on both targets."""
    fwd = [r for r in reports if r.name == "attn_fwd fp16 d=64 causal"]
    assert {r.target for r in fwd} == {"sm_90a", "sm_80"}
    for r in fwd:
        assert r.launch_hints and r.vector_loads > 0 and r.cp_async > 0, r


def test_every_attention_launch_is_compiled_with_hints(reports):
    rows = [r for r in reports if r.name.startswith("attn_")]
    assert rows and all(r.launch_hints for r in rows)
    variants = {r.name.split(" ", 1)[1] for r in rows}
    for wanted in ("fp32 d=32 causal", "fp32 d=128 causal", "fp16 d=40 causal",
                   "fp16 d=80 causal", "fp16 d=96 causal", "fp16 d=64 full", "bf16 d=64 causal"):
        assert wanted in variants


def test_softmax_is_compiled_as_launched(reports):
    """The softmax specs carry their launch arguments: the loads are vectorised."""
    rows = [r for r in reports if r.name.startswith("softmax")]
    assert rows and all(r.launch_hints and r.vector_loads > 0 for r in rows)


def test_launch_source_specialises_like_the_launcher():
    """Aligned pointers and ints divisible by 16 get tt.divisibility = 16; an int equal to
    1 becomes a constant; other ints are plain arguments (Triton's own binder decides)."""
    # launch_source needs compiled-mode JITFunctions: run it with the interpreter off
    code = """
import torch, lib
from lib.aot import launch_source
from lib.kernel_spec import KernelSpec
from lib.softmax import _softmax_fwd_kernel as kernel
x = torch.empty(8, 24, dtype=torch.float16, device="meta")
args = dict(x_ptr=x, y_ptr=x, stride_x=24, stride_y=32, n_cols=1)
spec = KernelSpec("t", kernel, constexprs=dict(BLOCK_N=32, SINGLE_BLOCK=True), args=args)
src, _ = launch_source(spec, "sm_90a")
print(sorted(kernel.arg_names[i] for (i,), attr in src.attrs.items() if attr))
print(sorted(kernel.arg_names[i] for (i,) in src.constants))
print(src.signature["stride_x"], src.signature["x_ptr"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    hinted, constants, types = done.stdout.splitlines()
    assert hinted == str(["stride_y", "x_ptr", "y_ptr"])  # 24 is not a multiple of 16
    assert constants == str(["BLOCK_N", "SINGLE_BLOCK", "n_cols"])  # n_cols = 1
    assert types == "i32 *fp16"
