"""lib on a system without Triton (macOS, Windows): every module imports, every op with a
kernel runs its PyTorch reference with backend="auto" and says how to install Triton when
asked for backend="triton".

Everything runs in one subprocess in which `import triton` raises ImportError (a
sys.meta_path finder refuses it, as on a system where it is not installed). Modules are
discovered with pkgutil, so a new module is covered without editing this file; an op with a
kernel joins by adding a row to OPS (test_every_op_with_a_backend_is_in_the_table finds the
public functions and classes that take `backend` and asks for one).
"""

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One row per public op that has a Triton kernel. Each row is Python source that defines
# run(backend) -> tensor (the op on small CPU inputs with awkward sizes) and oracle() -> the
# same result computed by plain PyTorch (for a model built from an op, the model on
# backend="torch": its own tests compare it with an external oracle). Both run with a fixed
# seed. Tolerance: auto is the float32 reference, compared with PyTorch's own kernels or a
# loop for the same formula; they differ by a few float32 ulp (1.2e-7) on these inputs, and
# the chunked scan by its reassociated products (rtol 1e-5 covers both).
OPS = {
    "lib.softmax.softmax": """
        from lib.softmax import softmax
        x = torch.randn(3, 37)
        def run(backend):
            return softmax(x, dim=-1, backend=backend)
        def oracle():
            return torch.softmax(x, dim=-1)
    """,
    "lib.attention.flash_attention": """
        from lib.attention import flash_attention
        q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
        def run(backend):
            return flash_attention(q, k, v, backend=backend)
        def oracle():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    """,
    "lib.loss_scaling.unscale_and_check_": """
        from lib.loss_scaling import unscale_and_check_
        g = torch.randn(11)
        def run(backend):
            grads = [g.clone(), g.half()]
            found = unscale_and_check_(grads, torch.zeros(1), torch.full((1,), 0.25),
                                       backend=backend)
            return torch.cat([grads[0], grads[1].float(), found])
        def oracle():
            return torch.cat([g * 0.25, (g.half() * 0.25).float(), torch.zeros(1)])
    """,
    "lib.transformer.MultiHeadAttention": """
        from lib.transformer import MultiHeadAttention
        x = torch.randn(2, 6, 16)
        ours = MultiHeadAttention(16, 2)
        def run(backend):
            ours.backend = backend
            with torch.no_grad():
                return ours(x)[0]
        def oracle():
            # the same weights in torch.nn.MultiheadAttention (see the class docstring)
            mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
            with torch.no_grad():
                mha.in_proj_weight.copy_(ours.qkv.weight)
                mha.in_proj_bias.copy_(ours.qkv.bias)
                mha.out_proj.weight.copy_(ours.proj.weight)
                mha.out_proj.bias.copy_(ours.proj.bias)
                return mha(x, x, x, need_weights=False)[0]
    """,
    "lib.ssm.selective_scan": """
        from lib.ssm import selective_scan
        u, delta, B, C = torch.randn(2, 3, 9), torch.rand(2, 3, 9), torch.randn(2, 4, 9), \\
            torch.randn(2, 4, 9)
        A = -torch.rand(3, 4) - 0.1
        def run(backend):
            return selective_scan(u, delta, A, B, C, backend=backend)
        def oracle():
            # the recurrence x_l = exp(delta_l A) x_(l-1) + delta_l B_l u_l, y_l = C_l x_l
            x, ys = torch.zeros(2, 3, 4), []
            for l in range(9):
                d = delta[:, :, l, None]
                x = torch.exp(d * A) * x + d * B[:, None, :, l] * u[:, :, l, None]
                ys.append((x * C[:, None, :, l]).sum(-1))
            return torch.stack(ys, -1)
    """,
    "lib.mamba.MambaBlock": """
        from lib.mamba import MambaBlock
        x = torch.randn(2, 7, 8)
        block = MambaBlock(8, d_state=4)
        def run(backend):
            block.backend = backend
            with torch.no_grad():
                return block(x)
        def oracle():
            return run("torch")
    """,
}
# Public callables with a `backend` argument that a row above exercises, and how.
COVERED = {
    "lib.backend.check_backend": "the backend switch itself (tests/test_backend.py)",
    "lib.backend.resolve_backend": "the backend switch itself (tests/test_backend.py)",
    "lib.loss_scaling.DynamicLossScaler": "passes backend to unscale_and_check_",
    "lib.transformer.TransformerBlock": "passes backend to MultiHeadAttention",
    "lib.transformer.TinyLM": "passes backend to its TransformerBlocks",
    "lib.mamba.TinyMamba": "passes backend to its MambaBlocks",
}

DRIVER = """
import importlib.abc, json, sys

class NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError(f"No module named {name!r} (hidden by test_no_triton)")
        return None

sys.meta_path.insert(0, NoTriton())
import importlib, pkgutil, traceback
import torch
import lib

report = {"has_triton": lib.backend.HAS_TRITON, "modules": {}, "ops": {}}
for info in pkgutil.walk_packages(lib.__path__, "lib."):
    if info.name.rsplit(".", 1)[-1] == "__main__":  # runs a command line when imported
        continue
    try:
        importlib.import_module(info.name)
        report["modules"][info.name] = "ok"
    except BaseException:
        report["modules"][info.name] = traceback.format_exc(limit=-3)

for name, source in json.loads(sys.argv[1]).items():
    result = {}
    try:
        torch.manual_seed(0)
        scope = {"torch": torch}
        exec(source, scope)
        got, want = scope["run"]("auto"), scope["oracle"]()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        result["auto"] = "ok"
    except BaseException:
        result["auto"] = traceback.format_exc(limit=-3)
    try:
        scope["run"]("triton")
        result["triton"] = "no error"
    except BaseException as error:
        result["triton"] = f"{type(error).__name__}: {error}"
    report["ops"][name] = result
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    ops = {name: textwrap.dedent(source) for name, source in OPS.items()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(ops)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_triton_is_hidden(report):
    assert report["has_triton"] is False


def test_every_lib_module_imports_without_triton(report):
    modules = report["modules"]
    # the discovery found the package's modules (a broken walk would find none)
    assert {"lib.backend", "lib._triton", "lib.softmax", "lib.attention"} <= set(modules)
    failed = {name: error for name, error in modules.items() if error != "ok"}
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed.items())


@pytest.mark.parametrize("op", sorted(OPS))
def test_auto_runs_the_reference_without_triton(report, op):
    # tolerance: see OPS
    assert report["ops"][op]["auto"] == "ok", report["ops"][op]["auto"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_triton_backend_says_how_to_install(report, op):
    message = report["ops"][op]["triton"]
    assert message.startswith("RuntimeError: Triton is not installed"), message
    assert "pip install triton" in message and "backend='torch'" in message


def test_a_kernel_launch_without_triton_raises_the_install_hint():
    """The second line of defence: a stand-in kernel refuses to launch, naming itself."""
    from lib import _triton

    kernel = _triton._decorator(lambda x_ptr: None)
    with pytest.raises(RuntimeError, match="cannot launch <lambda>: Triton is not installed"):
        kernel[(1,)](None)
    tuned = _triton._decorator_factory(configs=[], key=["n"])(_triton._decorator(lambda: 0))
    assert isinstance(tuned, _triton.MissingKernel)
    tl = _triton._Language("tl")
    assert tl.constexpr(3).value == 3
    assert repr(tl.float16) == "<tl.float16 (Triton is not installed)>"
    with pytest.raises(RuntimeError, match="cannot call tl.extra.libdevice.exp"):
        tl.extra.libdevice.exp(1.0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 1024, 1025])
def test_stand_in_integer_helpers_match_triton(n):
    from lib import _triton

    p = _triton.next_power_of_2(n)
    assert p >= n and p & (p - 1) == 0 and (p == 1 or p // 2 < n)
    for b in (1, 3, 16):
        assert _triton.cdiv(n, b) == (n + b - 1) // b
    if _triton.HAS_TRITON:  # the oracle: Triton's own helpers
        import triton

        assert p == triton.next_power_of_2(n)
        assert [_triton.cdiv(n, b) for b in (1, 3, 16)] == [triton.cdiv(n, b) for b in (1, 3, 16)]


def test_every_op_with_a_backend_is_in_the_table():
    """A public function or class of lib that takes `backend` has a row in OPS (or COVERED)."""
    import lib

    found = set()
    for info in pkgutil.walk_packages(lib.__path__, "lib."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            own = getattr(obj, "__module__", None) == module.__name__
            if name.startswith("_") or not own or not callable(obj):
                continue
            try:
                parameters = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if "backend" in parameters:
                found.add(f"{module.__name__}.{name}")
    assert {"lib.softmax.softmax", "lib.attention.flash_attention"} <= found
    missing = found - set(OPS) - set(COVERED)
    assert not missing, f"add a row to OPS in tests/test_no_triton.py for {sorted(missing)}"
    stale = (set(OPS) | set(COVERED)) - found
    assert not stale, f"rows for names that no longer take backend: {sorted(stale)}"
