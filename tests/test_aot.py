"""Every Triton kernel in lib compiles for sm_90a and sm_80 (``python -m lib.bench compile``):
no spills, shared memory within the SM limit, tensor cores wherever it multiplies matrices."""

import pytest

from lib import backend

pytestmark = pytest.mark.skipif(not backend.HAS_TRITON, reason="Triton is not installed")


@pytest.fixture(scope="module")
def reports():
    from lib.aot import compile_all_subprocess

    return compile_all_subprocess()


def test_every_kernel_module_is_compiled(reports):
    names = {r.name for r in reports}
    assert any(n.startswith("softmax_fwd") for n in names)
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
