"""Count the loads and stores of a Triton kernel, element by element.

A memory-bound kernel is as fast as the bytes it moves, so the first question about one
is how often it reads and writes each element. :func:`count_accesses` answers it by
running the kernel once through Triton's CPU interpreter
(``triton.runtime.interpreter.InterpretedFunction``, available wherever Triton is
installed, with or without a GPU) while counting every active lane of the interpreter's
two memory primitives, the masked load and the masked store. Every ``tl.load`` and
``tl.store`` goes through them (so do atomics and tensor-descriptor accesses). Each lane
is attributed to the tensor argument whose memory it addresses, so the result says,
for every element of every tensor argument, how many times the kernel loaded and stored
it. Chapter 1 counts the sweeps of its softmax kernels with it.

What is counted is what the kernel *issues*: one count per active (mask-true) lane, the
lanes a mask switches off not at all. A GPU's memory system may move less (a repeated
load can hit the L1 or L2 cache) or more (a partly masked access still moves whole
32-byte sectors).

The counting is switched on for the duration of one :func:`count_accesses` call and
switched off again, also when the kernel raises; other launches are not affected.

It needs the interpreter in this process (``TRITON_INTERPRET=1`` when Triton was
imported, which ``lib`` arranges when there is no CUDA). Where Triton runs compiled (a
CUDA machine), :func:`interpreted_call` runs a counting function in a fresh Python
process with the interpreter on and returns its result.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import backend
from .backend import _INSTALL_HINT, HAS_TRITON

__all__ = ["Accesses", "KernelAccesses", "count_accesses", "interpreted_call"]


@dataclass(frozen=True)
class Accesses:
    """How many times a kernel loaded and stored each element of one tensor argument.

    loads, stores: int64 tensors of the argument's shape.
    """

    loads: torch.Tensor
    stores: torch.Tensor

    @property
    def numel(self) -> int:
        return self.loads.numel()

    def per_element(self) -> tuple[float, float]:
        """(loads, stores) per element, averaged over the tensor."""
        n = max(self.numel, 1)
        return int(self.loads.sum()) / n, int(self.stores.sum()) / n


@dataclass
class KernelAccesses:
    """The loads and stores of one kernel launch, per tensor argument (by its name).

    stray_loads, stray_stores: active lanes whose address lies in no tensor argument's
    elements (zero for a kernel that stays inside its tensors).
    """

    kernel: str
    programs: int
    arguments: dict[str, Accesses] = field(default_factory=dict)
    stray_loads: int = 0
    stray_stores: int = 0

    def __getitem__(self, name: str) -> Accesses:
        if name not in self.arguments:
            raise KeyError(f"{name!r} is not a tensor argument of {self.kernel}; "
                           f"those are {sorted(self.arguments)}")
        return self.arguments[name]

    def totals(self) -> tuple[int, int]:
        """(elements loaded, elements stored), summed over all tensor arguments."""
        loads = sum(int(a.loads.sum()) for a in self.arguments.values())
        stores = sum(int(a.stores.sum()) for a in self.arguments.values())
        return loads, stores

    def table(self) -> str:
        """One line per tensor argument: elements, loads and stores per element (mean,
        and the least and most of any element)."""
        head = f"{'argument':<10}{'elements':>9}{'loads/elem':>12}{'min..max':>10}" \
               f"{'stores/elem':>13}{'min..max':>10}"
        rows = [f"{self.kernel}, {self.programs} programs", head]
        for name, a in self.arguments.items():
            load, store = a.per_element()
            lo = f"{int(a.loads.min())}..{int(a.loads.max())}" if a.numel else "-"
            so = f"{int(a.stores.min())}..{int(a.stores.max())}" if a.numel else "-"
            rows.append(f"{name:<10}{a.numel:>9}{load:>12.2f}{lo:>10}{store:>13.2f}{so:>10}")
        return "\n".join(rows)


class _Region:
    """The memory of one tensor argument: its address range and a counter per slot."""

    def __init__(self, name: str, t: torch.Tensor):
        self.name, self.tensor = name, t
        self.start = t.data_ptr()
        self.itemsize = t.element_size()
        # slots from the first element to the last one (a strided view has gaps)
        self.span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True))
        self.end = self.start + self.span * self.itemsize
        self.counts = {"loads": np.zeros(self.span, np.int64),
                       "stores": np.zeros(self.span, np.int64)}

    def take(self, addresses: np.ndarray, kind: str) -> np.ndarray:
        """Count the addresses inside this region; return those outside it."""
        inside = (addresses >= self.start) & (addresses < self.end)
        slots = (addresses[inside] - self.start) // self.itemsize
        np.add.at(self.counts[kind], slots.astype(np.int64), 1)
        return addresses[~inside]

    def accesses(self) -> tuple[Accesses, int, int]:
        """Counts per element of the view, and the counts that fell into its gaps."""
        t = self.tensor
        slot = torch.as_strided(torch.arange(self.span), t.shape, t.stride())
        loads = torch.from_numpy(self.counts["loads"])[slot]
        stores = torch.from_numpy(self.counts["stores"])[slot]
        gaps = [int(self.counts[k].sum()) - int(v.sum())
                for k, v in (("loads", loads), ("stores", stores))]
        return Accesses(loads, stores), gaps[0], gaps[1]


def _check_grid(grid) -> tuple[int, ...]:
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid,)
    if not isinstance(grid, tuple) or not 1 <= len(grid) <= 3:
        raise TypeError(f"grid must be an int or a tuple of 1 to 3 ints, got {grid!r}")
    for g in grid:
        if not isinstance(g, int) or isinstance(g, bool):
            raise TypeError(f"grid must hold ints, got {grid!r}")
        if g < 1:
            raise ValueError(f"grid sizes must be at least 1, got {grid!r}")
    return grid


def count_accesses(kernel, grid: int | tuple[int, ...], *args, **kwargs) -> KernelAccesses:
    """Run ``kernel[grid](*args, **kwargs)`` once through Triton's interpreter, counting
    per tensor argument how often each element is loaded and stored.

    kernel: a ``@triton.jit`` function; its Python source is interpreted here whatever
    ``TRITON_INTERPRET`` says. grid: an int or a tuple of 1 to 3 ints (programs along
    each axis). args, kwargs: the launch arguments, as for ``kernel[grid](...)``;
    tensors must be on the CPU. Launch options such as ``num_warps`` are ignored.

    The kernel really runs: output tensors are written as by a launch. Returns a
    :class:`KernelAccesses` whose entries are named after the kernel's parameters. An
    address inside two tensor arguments (overlapping views) counts for the first.
    """
    if not HAS_TRITON:
        raise RuntimeError(f"count_accesses runs Triton's interpreter: {_INSTALL_HINT}")
    if not backend.INTERPRET:
        raise RuntimeError(
            "count_accesses needs Triton's interpreter in this process (TRITON_INTERPRET=1 "
            "before Triton is imported); where Triton runs compiled, call the counting "
            "function through lib.access_count.interpreted_call")
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, interpreter.InterpretedFunction):
        interpreted = kernel
    elif isinstance(kernel, JITFunction):
        interpreted = interpreter.InterpretedFunction(kernel.fn)
    else:
        raise TypeError(f"kernel must be a @triton.jit function, got {type(kernel).__name__}")
    grid = _check_grid(grid)
    names = interpreted.arg_names
    if len(args) > len(names):
        raise TypeError(f"{interpreted.__name__} takes {len(names)} arguments, "
                        f"got {len(args)} positional ones")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    regions = []
    for name, value in bound.items():
        if isinstance(value, torch.Tensor):
            if value.device.type != "cpu":
                raise ValueError(f"{name} must be on the CPU to be counted, "
                                 f"got device {value.device}")
            if name in names and value.numel() > 0:
                regions.append(_Region(name, value))
    stray = {"loads": 0, "stores": 0}

    def record(ptrs, mask, kind: str) -> None:
        shape = np.broadcast_shapes(ptrs.data.shape, mask.data.shape)
        active = np.broadcast_to(mask.data, shape).astype(bool)
        addresses = np.broadcast_to(ptrs.data, shape)[active].astype(np.uint64)
        for region in regions:
            if addresses.size == 0:
                break
            addresses = region.take(addresses, kind)
        stray[kind] += int(addresses.size)

    builder = interpreter.interpreter_builder
    load, store = builder.create_masked_load, builder.create_masked_store

    def counted_load(ptrs, mask, other, cache_policy, is_volatile):
        record(ptrs, mask, "loads")
        return load(ptrs, mask, other, cache_policy, is_volatile)

    def counted_store(ptrs, value, mask, cache_policy):
        record(ptrs, mask, "stores")
        return store(ptrs, value, mask, cache_policy)

    saved = {k: vars(builder)[k] for k in ("create_masked_load", "create_masked_store")
             if k in vars(builder)}  # a count_accesses call further up the stack
    builder.create_masked_load, builder.create_masked_store = counted_load, counted_store
    try:
        interpreted[grid](*args, **kwargs)
    finally:
        for k in ("create_masked_load", "create_masked_store"):
            if k in saved:
                setattr(builder, k, saved[k])
            else:
                delattr(builder, k)
    result = KernelAccesses(interpreted.__name__, math.prod(grid),
                            stray_loads=stray["loads"], stray_stores=stray["stores"])
    for region in regions:
        acc, gap_loads, gap_stores = region.accesses()
        result.arguments[region.name] = acc
        result.stray_loads += gap_loads
        result.stray_stores += gap_stores
    return result


def interpreted_call(function: str, *args, **kwargs) -> Any:
    """``function(*args, **kwargs)`` in a fresh Python process with Triton's interpreter
    on (``TRITON_INTERPRET=1``), and its result: how a process whose Triton runs
    compiled (a CUDA machine) counts accesses.

    function: the dotted name of a ``lib`` function, e.g.
    ``"lib.softmax.kernel_accesses"``. Arguments and result travel by ``torch.save``:
    tensors must be on the CPU.
    """
    if not isinstance(function, str):
        raise TypeError(f"function must be a dotted name (str), got {type(function).__name__}")
    module_name, _, name = function.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError:
        module = None
    if module_name.split(".")[0] != "lib" or not callable(getattr(module, name, None)):
        raise ValueError(f"function must name a function of lib, got {function!r}")
    code = ("import sys, torch, importlib, lib\n"
            "module, name, args, kwargs = torch.load(sys.argv[1], weights_only=False)\n"
            "result = getattr(importlib.import_module(module), name)(*args, **kwargs)\n"
            "torch.save(result, sys.argv[2])\n")
    with tempfile.TemporaryDirectory() as tmp:
        given, result = os.path.join(tmp, "args.pt"), os.path.join(tmp, "result.pt")
        torch.save((module_name, name, args, kwargs), given)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        done = subprocess.run([sys.executable, "-c", code, given, result], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{function} failed under Triton's interpreter:\n"
                               f"{done.stderr[-3000:]}")
        return torch.load(result, weights_only=False)
