"""lib/backend.py: backend resolution, scale switch, environment report.

lib without Triton (every module imports, auto falls back) is tested in test_no_triton.py.
"""

import os
import subprocess
import sys

import pytest
import torch

import lib
from lib import backend


def test_interpreter_is_on_without_cuda():
    if not torch.cuda.is_available():
        assert os.environ["TRITON_INTERPRET"] == "1"
        assert backend.INTERPRET
    assert os.environ["TRITON_DEFAULT_FP_FUSION"] == "1"


def test_auto_resolves_to_torch_on_cpu_tensors():
    x = torch.zeros(2)
    assert lib.resolve_backend("auto", x) == "torch"
    assert lib.resolve_backend("torch", x) == "torch"
    if backend.HAS_TRITON and backend.INTERPRET:
        assert lib.resolve_backend("triton", x) == "triton"


@pytest.mark.parametrize("name", ["cuda", "Triton", None, 3])
def test_unknown_backend_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'torch'\)"):
        lib.resolve_backend(name)


def test_triton_without_triton_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backend, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="pip install triton"):
        lib.resolve_backend("triton", torch.zeros(1))
    assert lib.resolve_backend("auto", torch.zeros(1)) == "torch"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "INTERPRET", False)
    if backend.HAS_TRITON:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            lib.resolve_backend("triton", torch.zeros(1))


@pytest.mark.parametrize(
    "value, expected", [("quick", "quick"), ("FULL", "full"), (" full ", "full")]
)
def test_scale_reads_book_scale(monkeypatch, value, expected):
    monkeypatch.setenv("BOOK_SCALE", value)
    assert lib.scale() == expected
    assert lib.by_scale(quick=1, full=2) == (2 if expected == "full" else 1)


def test_scale_default_follows_the_device(monkeypatch):
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    assert lib.scale() == ("full" if torch.cuda.is_available() else "quick")


def test_invalid_scale_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match=r"BOOK_SCALE must be one of \('quick', 'full'\)"):
        lib.scale()


def test_environment_report_has_no_machine_paths():
    report = lib.environment_report()
    for key in ("torch", "triton", "device", "backend='auto'", "BOOK_SCALE"):
        assert key in report
    assert os.sep + "home" not in report and sys.prefix not in report and os.getcwd() not in report


def test_triton_imported_before_lib_is_a_clear_error():
    """Triton's helpers are decorated at its import; the interpreter cannot be switched on later."""
    if torch.cuda.is_available() or not backend.HAS_TRITON:
        pytest.skip("only meaningful without CUDA, with Triton")
    code = (
        "import triton, torch, lib, lib.softmax as s\n"
        "try:\n    s.softmax(torch.randn(2, 3), backend='triton')\n"
        "except RuntimeError as e:\n    print(e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "imported before lib" in out.stdout


def test_gpu_section_runs_only_at_full_scale_on_cuda(monkeypatch, capsys):
    for cuda, scale_name, expected in [(False, "full", False), (True, "quick", False),
                                       (True, "full", True), (False, "quick", False)]:
        monkeypatch.setattr(backend, "CUDA", cuda)
        monkeypatch.setenv("BOOK_SCALE", scale_name)
        assert backend.gpu_section("the benchmark") is expected
        out = capsys.readouterr().out
        assert ("Skipped: the benchmark needs CUDA and BOOK_SCALE=full" in out) is not expected
