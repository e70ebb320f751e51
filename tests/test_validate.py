"""lib/validate.py: every check refuses what it should, with the argument's name, and
passes what it should."""

import math

import pytest
import torch

from lib.validate import (
    check_bool,
    check_choice,
    check_dim,
    check_int,
    check_long_tensor,
    check_positive_int,
    check_real,
    check_same,
    check_tensor,
)


@pytest.mark.parametrize("call, error, message", [
    (lambda: check_int(2.0, "n"), TypeError, "n must be an int, got float"),
    (lambda: check_int(True, "n"), TypeError, "n must be an int, got bool"),
    (lambda: check_int("3", "n"), TypeError, "n must be an int, got str"),
    (lambda: check_int(-1, "n", minimum=0), ValueError, "n must be at least 0, got -1"),
    (lambda: check_int(9, "n", maximum=8), ValueError, "n must be at most 8, got 9"),
    (lambda: check_positive_int(0, "steps"), ValueError, "steps must be at least 1"),
    (lambda: check_real("1e-3", "lr"), TypeError, "lr must be a real number, got str"),
    (lambda: check_real(True, "lr"), TypeError, "lr must be a real number, got bool"),
    (lambda: check_real(math.nan, "lr"), ValueError, "lr must be finite"),
    (lambda: check_real(math.inf, "lr"), ValueError, "lr must be finite"),
    (lambda: check_real(math.nan, "x", finite=False), ValueError, "x must be finite"),
    (lambda: check_real(0.0, "lr", minimum=0, strict=True), ValueError,
     "lr must be greater than 0"),
    (lambda: check_real(-0.5, "p", minimum=0), ValueError, "p must be at least 0"),
    (lambda: check_real(1.0, "p", maximum=1, strict=True), ValueError, "p must be less than 1"),
    (lambda: check_real(2.0, "p", maximum=1), ValueError, "p must be at most 1"),
    (lambda: check_bool("no", "saturate"), TypeError, "saturate must be a bool, got str"),
    (lambda: check_bool(0, "saturate"), TypeError, "saturate must be a bool, got int"),
    (lambda: check_long_tensor([1, 2], "idx"), TypeError, "idx must be a torch.Tensor"),
    (lambda: check_long_tensor(torch.zeros(2), "idx"), TypeError,
     r"idx must be a LongTensor \(int64\), got torch.float32"),
    (lambda: check_long_tensor(torch.zeros(2, dtype=torch.long), "idx", ndim=2), ValueError,
     "idx must have 2 dimensions"),
    (lambda: check_long_tensor(torch.tensor([0, 5]), "idx", low=0, high=5), ValueError,
     r"idx must hold values in \[0, 5\), got values in \[0, 5\]"),
    (lambda: check_long_tensor(torch.tensor([-1]), "idx", low=0), ValueError,
     r"idx must hold values in \[0, inf\)"),
    (lambda: check_choice("gpu", "backend", ("torch", "triton")), ValueError,
     r"backend must be one of \('torch', 'triton'\), got 'gpu'"),
    (lambda: check_choice(None, "method", ("a",)), ValueError, "method must be one of"),
    (lambda: check_tensor(torch.zeros(2, dtype=torch.long), "x", dtypes=[torch.float32]),
     TypeError, r"x must have dtype in \(float32\)"),
    (lambda: check_dim(2, 2), ValueError, "dim=2 is out of range"),
    (lambda: check_same("dtype", q=torch.zeros(1), k=torch.zeros(1, dtype=torch.half)),
     ValueError, "q, k must have the same dtype"),
])
def test_bad_values_are_refused_by_name(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_good_values_pass_through():
    assert check_int(3, "n", minimum=0, maximum=3) == 3
    assert check_real(2, "lr", minimum=0, strict=True) == 2.0 and isinstance(
        check_real(2, "lr"), float)
    assert check_real(math.inf, "x", finite=False) == math.inf
    assert check_bool(False, "flag") is False
    idx = torch.tensor([[0, 4]])
    assert check_long_tensor(idx, "idx", ndim=2, low=0, high=5) is idx
    assert check_long_tensor(torch.empty(0, dtype=torch.long), "idx", low=0, high=1).numel() == 0
    assert check_choice("torch", "backend", ("torch",)) == "torch"
