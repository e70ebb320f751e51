"""lib.ssm_kernels: the Triton selective scan (forward and backward) against the sequential
reference and autograd through it, at Mamba's tolerances. Through Triton's interpreter on a
CPU, whose scan is a Python loop over every element: shapes stay small, and ``block_l``
forces several chunks so that the carried state and the checkpoints are exercised."""

import pytest
import torch

from lib import backend
from lib.ssm import selective_scan, selective_scan_reference
from lib.ssm_kernels import (
    _GPU_CONFIGS,
    aot_specs,
    launch_config,
    selective_scan_bwd,
    selective_scan_fwd,
)

pytestmark = pytest.mark.skipif(not backend.HAS_TRITON, reason="Triton is not installed")

# Mamba's tests/ops/test_selective_scan.py: (rtol, atol) per input dtype for the output;
# the weights' gradients use (rtolw, atolw) = max((1e-3, 1e-3), (rtol, atol)) when z is used
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def make_inputs(batch, dim, L, N, dtype, seed=0, D=True, z=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(batch, dim, L).to(dtype),
        delta=(0.5 * torch.rand(batch, dim, L, generator=g)).to(dtype),
        A=-0.5 * torch.rand(dim, N, generator=g), B=r(batch, N, L).to(dtype),
        C=r(batch, N, L).to(dtype), D=r(dim) if D else None,
        z=r(batch, dim, L).to(dtype) if z else None,
        delta_bias=0.5 * torch.rand(dim, generator=g) if bias else None)


CASES = [  # (batch, dim, L, N, block_l, flags)
    ((2, 3, 37, 5), 16, dict()),
    ((1, 2, 1, 16), None, dict(D=False, bias=False)),
    ((1, 1, 70, 3), None, dict(z=False)),
    ((2, 1, 33, 4), 8, dict(D=False, z=False, bias=False)),
    ((1, 37, 3, 2), None, dict()),
]


@pytest.mark.parametrize("shape,block_l,flags", CASES)
@pytest.mark.parametrize("softplus", [True, False])
def test_forward_matches_the_reference(shape, block_l, flags, softplus):
    args = make_inputs(*shape, torch.float32, **flags)
    out, last, ckpt = selective_scan_fwd(**args, delta_softplus=softplus, block_l=block_l)
    ref, ref_last = selective_scan_reference(**args, delta_softplus=softplus,
                                             return_last_state=True)
    rtol, atol = TOL[torch.float32]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=rtol, atol=atol)
    assert ckpt.shape == (*shape[:2], -(-shape[2] // (block_l or shape[2])), shape[3])
    assert torch.all(ckpt[:, :, 0] == 0)  # the first chunk starts from the zero state


def test_a_long_sequence_with_mambas_state_size():
    # L = 1000, N = 16: four chunks of 256 steps under the interpreter
    args = make_inputs(1, 1, 1000, 16, torch.float32, seed=5)
    out, last, _ = selective_scan_fwd(**args, delta_softplus=True)
    ref, ref_last = selective_scan_reference(**args, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_and_backward_in_every_dtype(dtype):
    rtol, atol = TOL[dtype]
    rtolw, atolw = max(rtol, 1e-3), max(atol, 1e-3)
    args = make_inputs(2, 3, 29, 4, dtype, seed=1)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    ref, ref_last = selective_scan_reference(**leaves, delta_softplus=True,
                                             return_last_state=True)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(ref.shape, generator=g).to(dtype)
    dlast = torch.randn(ref_last.shape, generator=g)
    ref_grads = torch.autograd.grad((ref.float() * dout.float()).sum() + (ref_last * dlast).sum(),
                                    list(leaves.values()))
    out, last, ckpt = selective_scan_fwd(**args, delta_softplus=True, block_l=8)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    grads = selective_scan_bwd(*args.values(), True, ckpt, dout, dlast, block_l=8)
    # Mamba's gradient tolerances: du 2x, ddelta 5x/10x, dA 5x atolw, dB/dC as the output
    tols = dict(u=(2 * rtol, 2 * atol), delta=(5 * rtol, 10 * atol), A=(rtolw, 5 * atolw),
                B=(rtol, atol), C=(rtol, atol), D=(rtolw, atolw), z=(rtolw, atolw),
                delta_bias=(rtolw, atolw))
    for (name, ref_grad), grad in zip(zip(leaves, ref_grads, strict=True), grads, strict=True):
        assert grad.dtype == args[name].dtype, name
        # the reference's gradients come back rounded to the input dtype, as ours
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=tols[name][0],
                                   atol=tols[name][1], msg=lambda m, n=name: f"d{n}: {m}")


def test_public_op_on_triton_is_differentiable_and_matches_torch():
    args = make_inputs(1, 2, 20, 3, torch.float32, seed=3)
    results = {}
    for name in ("torch", "triton"):
        leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
        out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True,
                                   backend=name)
        (out.square().sum() + last.sum()).backward()
        results[name] = [out, last] + [leaves[k].grad for k in leaves]
    for a, b in zip(results["triton"], results["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)


def test_only_the_output_or_only_the_last_state_used():
    args = make_inputs(1, 1, 12, 2, torch.float32, seed=4)
    for use_out in (True, False):
        u = args["u"].clone().requires_grad_()
        out, last = selective_scan(**(args | {"u": u}), return_last_state=True, backend="triton")
        (out.sum() if use_out else last.sum()).backward()
        u_ref = args["u"].clone().requires_grad_()
        out, last = selective_scan_reference(**(args | {"u": u_ref}), return_last_state=True)
        (out.sum() if use_out else last.sum()).backward()
        torch.testing.assert_close(u.grad, u_ref.grad, rtol=6e-4, atol=2e-3)


def test_state_size_above_the_kernel_limit_is_refused():
    args = make_inputs(1, 1, 4, 257, torch.float32, D=False, z=False, bias=False)
    with pytest.raises(ValueError, match="N <= 256"):
        selective_scan(**args, backend="triton")


def test_every_gpu_configuration_is_compiled_ahead_of_time():
    names = {s.name for s in aot_specs()}
    for block_n in _GPU_CONFIGS:
        assert f"selective_scan_fwd (bf16, N<={block_n})" in names
        assert f"selective_scan_bwd (bf16, N<={block_n})" in names
    for n in (1, 16, 17, 200, 256):
        assert launch_config(n, 1000)["BLOCK_N"] >= n


def test_bench_ssm_pieces():
    # python -m lib.bench ssm: its correctness check passes, and the CPU measurements return
    # one positive CPU time per repetition (small sizes here; no timing is asserted)
    from lib.bench import commands
    from lib.bench.ssm import _check, kernel_speed, scan_speed, summary

    assert "ssm" in commands()
    _check()
    kernel = kernel_speed(L=64, N=4, repeats=2)
    scan = scan_speed(L=32, dim=2, N=4, repeats=2)
    assert set(kernel) == {"vandermonde", "naive", "impulse"}
    assert set(scan) == {"sequential", "chunked"}
    for times in (*kernel.values(), *scan.values()):
        assert len(times) == 2 and all(t >= 0 for t in times)
    assert "ms (" in summary([0.001, 0.002])
