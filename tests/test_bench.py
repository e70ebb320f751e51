"""lib/bench: without CUDA every timing command checks correctness, explains, and exits 0."""

import subprocess
import sys

import pytest
import torch

from lib.bench import commands


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
@pytest.mark.parametrize("command", ["softmax"])
def test_timing_command_on_cpu_exits_zero(command):
    out = subprocess.run([sys.executable, "-m", "lib.bench", command],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "needs a CUDA GPU" in out.stdout and "check" in out.stdout


def test_unknown_command_is_refused():
    out = subprocess.run([sys.executable, "-m", "lib.bench", "nonsense"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
    assert {"compile", "softmax", "attention"} <= set(commands())
