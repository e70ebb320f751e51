"""Input checks shared by every public function: errors name the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    x,
    name: str,
    *,
    ndim: int | Iterable[int] | None = None,
    min_ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
) -> torch.Tensor:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a tensor of the given rank and dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(map(str, allowed))
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}"
        )
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if x.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    return x


def check_dim(dim, ndim: int, name: str = "dim") -> int:
    """Normalise a possibly negative dimension index; raise ``ValueError`` when out of range."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for a tensor with {ndim} dimension(s)")
    return dim % ndim


def check_same(attr: str, **tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every tensor has the same ``attr`` (dtype, device...)."""
    values = {name: getattr(t, attr) for name, t in tensors.items()}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"{n}: {v}" for n, v in values.items())
        raise ValueError(f"{', '.join(values)} must have the same {attr}, got {listed}")


def check_callable(fn, name: str):
    """Raise ``TypeError`` unless ``fn`` is callable; return it."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return fn


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """Raise unless ``value`` is an int of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_int(value, name: str, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Raise unless ``value`` is an int (not a bool) in [minimum, maximum]; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}")
    return value


def check_real(value, name: str, *, minimum: float | None = None,
               maximum: float | None = None, strict: bool = False,
               finite: bool = True) -> float:
    """Raise unless ``value`` is a real number (int or float, not a bool or a string).

    finite: also refuse NaN and +-inf. minimum/maximum bound the value, excluded when
    ``strict`` (e.g. ``minimum=0, strict=True`` for "positive"). Returns it as a float.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        word = "greater than" if strict else "at least"
        raise ValueError(f"{name} must be {word} {minimum}, got {value}")
    if maximum is not None and (value >= maximum if strict else value > maximum):
        word = "less than" if strict else "at most"
        raise ValueError(f"{name} must be {word} {maximum}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """Raise ``TypeError`` unless ``value`` is a bool (a string such as "no" is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_long_tensor(x, name: str, *, ndim: int | Iterable[int] | None = None,
                      low: int | None = None, high: int | None = None) -> torch.Tensor:
    """Raise unless ``x`` is an int64 tensor of the given rank with values in [low, high).

    The range check reads the values (a device sync on CUDA): call it once per user
    call, not inside a decoding loop.
    """
    check_tensor(x, name, ndim=ndim)
    if x.dtype != torch.long:
        raise TypeError(f"{name} must be a LongTensor (int64), got {x.dtype}")
    if x.numel() and (low is not None or high is not None):
        lo, hi = int(x.min()), int(x.max())
        if (low is not None and lo < low) or (high is not None and hi >= high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high})"
            raise ValueError(f"{name} must hold values in {bounds}, got values in [{lo}, {hi}]")
    return x


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``; return it."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
