"""Loss scaling for mixed-precision training: the fused unscale-and-check pass and the scaler.

Chapter 2 (equation numbers refer to it). Micikevicius et al. (2018), "Mixed precision
training"; PyTorch's ``torch.amp.GradScaler``, whose interface and rules this module follows.

Gradients of FP16 training underflow; multiplying the loss by a scale S shifts them into
range (eq. 9). Before the optimizer steps, every gradient is divided by S again and checked
for inf/NaN (eq. 10); an overflow skips the step and halves S, and a run of good steps
doubles it (dynamic loss scaling, eq. 11).

Module layout: the unscale-and-check spec (``_unscale_and_check_reference``) -> the
Triton kernel (one launch for every gradient of every dtype, driven by a table of
addresses, :func:`launch_table`) and its :func:`aot_specs` -> the public
:func:`unscale_and_check_` -> :func:`update_scale` (eq. 11) -> :class:`DynamicLossScaler`.
Number formats and rounding are :mod:`lib.floating_point`'s.
"""

from __future__ import annotations

import math

import torch

from ._triton import tl, triton
from .backend import check_backend, resolve_backend
from .kernel_spec import KernelSpec
from .validate import FLOAT_DTYPES, check_int, check_real, check_tensor

# ------------------------------------------------------- fused unscale and inf/NaN check: spec


def _unscale_and_check_reference(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> torch.Tensor:
    """g <- g * inv_scale for every g in ``grads`` (fp32 math), found_inf <- 1 if any input was
    inf or NaN (eq. 10). The spec of the kernel; same contract as PyTorch's
    ``torch._amp_foreach_non_finite_check_and_unscale_``."""
    for g in grads:
        gf = g.float()
        bad = (~torch.isfinite(gf)).any().float()
        found_inf.copy_(torch.maximum(found_inf, bad.reshape(found_inf.shape)))
        g.copy_(gf * inv_scale.reshape(()))
    return found_inf


# -------------------------------------------------------------- the kernel: one launch for all

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
CHUNK = 16384  # elements per program; a tensor of n elements gets ceil(n / CHUNK) programs
BLOCK_BYTES = 4096  # bytes per block inside a chunk: 1024 fp32 or 2048 fp16/bf16 elements
LAUNCH_META = {"CHUNK": CHUNK, "BLOCK_BYTES": BLOCK_BYTES}
NUM_WARPS = 4


@triton.jit
def _check_and_scale(g, inv_scale):
    """(g * inv_scale in fp32, 1 where g was NaN or +-inf) for a block g."""
    g = g.to(tl.float32)
    return g * inv_scale, ((g != g) | (tl.abs(g) == float("inf"))).to(tl.int32)


@triton.jit
def _unscale_span(ptr, start, end, inv_scale, BLOCK: tl.constexpr):
    """Unscale ptr[start:end] in blocks of BLOCK; 1 if an element was inf/NaN.

    Full blocks load without a mask, and the hints say that their offsets are
    BLOCK-aligned and the addresses 16-byte aligned (start is a multiple of CHUNK,
    each tensor starts 16-byte aligned), so the compiler emits 16-byte vector
    loads; the partial block is masked. The inf/NaN flags are kept per lane and
    reduced across the block once, after the loop: a reduction per block would
    synchronise the program's warps at every iteration.
    """
    bad = tl.zeros((BLOCK,), tl.int32)
    n_full = (end - start) // BLOCK
    for i in range(0, n_full):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        p = tl.multiple_of(ptr + offs, 16)
        y, b = _check_and_scale(tl.load(p), inv_scale)
        tl.store(p, y.to(ptr.dtype.element_ty))
        bad = tl.maximum(bad, b)
    offs = start + n_full * BLOCK + tl.arange(0, BLOCK)
    mask = offs < end
    y, b = _check_and_scale(tl.load(ptr + offs, mask=mask, other=0.0), inv_scale)
    tl.store(ptr + offs, y.to(ptr.dtype.element_ty), mask=mask)
    return tl.max(tl.maximum(bad, b), 0)


@triton.jit
def _unscale_and_check_kernel(
    table_ptr, found_inf_ptr, inv_scale_ptr, n_tensors,
    CHUNK: tl.constexpr, BLOCK_BYTES: tl.constexpr,
):
    """One program per chunk of one tensor, all tensors in one launch
    (multi-tensor apply).

    table (int64): rows (address, numel, dtype code) for each tensor, then rows
    (tensor index, chunk start) for each program.
    """
    pid = tl.program_id(0).to(tl.int64)
    # which tensor and which chunk of it
    tensor = tl.load(table_ptr + 3 * n_tensors + 2 * pid)
    start = tl.load(table_ptr + 3 * n_tensors + 2 * pid + 1)
    address = tl.load(table_ptr + 3 * tensor)
    numel = tl.load(table_ptr + 3 * tensor + 1)
    code = tl.load(table_ptr + 3 * tensor + 2)
    end = tl.minimum(start + CHUNK, numel)
    inv_scale = tl.load(inv_scale_ptr)
    # the address becomes a typed pointer (one name per type: the compiler wants
    # one type per variable across branches). Blocks are BLOCK_BYTES long, so the
    # fp32 and 16-bit branches get differently sized blocks, each with its own
    # 16-byte-vector layout.
    if code == 0:
        ptr_fp32 = address.to(tl.pointer_type(tl.float32))
        bad = _unscale_span(ptr_fp32, start, end, inv_scale, BLOCK_BYTES // 4)
    elif code == 1:
        ptr_fp16 = address.to(tl.pointer_type(tl.float16))
        bad = _unscale_span(ptr_fp16, start, end, inv_scale, BLOCK_BYTES // 2)
    else:
        ptr_bf16 = address.to(tl.pointer_type(tl.bfloat16))
        bad = _unscale_span(ptr_bf16, start, end, inv_scale, BLOCK_BYTES // 2)
    # every writer writes the same 1.0: no atomics needed
    tl.store(found_inf_ptr, 1.0, mask=bad > 0)


def launch_table(grads: list[torch.Tensor], chunk: int = CHUNK) -> tuple[torch.Tensor, int]:
    """The int64 table of ``_unscale_and_check_kernel`` (on the grads' device) and the grid.

    grads: non-empty, contiguous fp32/fp16/bf16 tensors on one device, each 16-byte aligned.
    Built with vectorised ops on the host (no per-chunk Python loop): rows
    (address, numel, dtype code) per tensor, then (tensor index, start) per chunk.
    """
    grads = _check_grads(grads)
    if not grads:
        raise ValueError("grads must hold at least one tensor, got an empty list")
    for i, g in enumerate(grads):
        if not g.is_contiguous() or g.data_ptr() % 16:
            raise ValueError(f"grads[{i}] must be contiguous and 16-byte aligned "
                             "(unscale_and_check_ copies such tensors for the kernel)")
    check_int(chunk, "chunk", minimum=1)
    return _launch_table(grads, chunk)


def _launch_table(grads: list[torch.Tensor], chunk: int) -> tuple[torch.Tensor, int]:
    tensor_rows = torch.tensor([[g.data_ptr(), g.numel(), DTYPE_CODES[g.dtype]] for g in grads])
    numel = tensor_rows[:, 1]
    counts = (numel + chunk - 1) // chunk  # chunks (programs) per tensor
    index = torch.repeat_interleave(torch.arange(len(grads)), counts)
    first = torch.cumsum(counts, 0) - counts  # id of each tensor's first chunk
    start = (torch.arange(int(counts.sum())) - first[index]) * chunk
    table = torch.cat([tensor_rows.flatten(), torch.stack([index, start], 1).flatten()])
    if grads[0].is_cuda:
        table = table.pin_memory().to(grads[0].device, non_blocking=True)
    return table, index.numel()


def _unscale_and_check_triton(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor
) -> torch.Tensor:
    """Same contract as ``_unscale_and_check_reference``: one kernel launch for all grads.

    Tensors that are not contiguous or not 16-byte aligned are processed as aligned
    contiguous copies inside the same launch and copied back afterwards.
    """
    work = [g if g.is_contiguous() and g.data_ptr() % 16 == 0
            else torch.empty_like(g, memory_format=torch.contiguous_format).copy_(g)
            for g in grads if g.numel() > 0]
    if not work:
        return found_inf
    table, programs = _launch_table(work, CHUNK)
    _unscale_and_check_kernel[(programs,)](
        **_launch_args(table, found_inf, inv_scale, len(work)), **LAUNCH_META,
        num_warps=NUM_WARPS,
    )
    for g, w in zip((g for g in grads if g.numel() > 0), work, strict=True):
        if w is not g:
            g.copy_(w)
    return found_inf


def _launch_args(table: torch.Tensor, found_inf: torch.Tensor, inv_scale: torch.Tensor,
                 n_tensors: int) -> dict:
    """The kernel's runtime arguments, by name: one source for the launch and for AOT."""
    return {"table_ptr": table, "found_inf_ptr": found_inf, "inv_scale_ptr": inv_scale,
            "n_tensors": n_tensors}


def aot_specs() -> list[KernelSpec]:
    """The default configuration, compiled ahead of time by ``python -m lib.bench compile``
    with the specialization of a launch on GPT-2 medium's 292 gradient tensors (the list of
    ``python -m lib.bench unscale``)."""
    n_tensors = 292  # not a multiple of 16 and not 1: an ordinary runtime int
    table = torch.empty(3 * n_tensors, dtype=torch.int64, device="meta")  # length: not compiled
    found_inf = torch.empty((), dtype=torch.float32, device="meta")
    args = _launch_args(table, found_inf, torch.empty_like(found_inf), n_tensors)
    return [KernelSpec("unscale_and_check (fp32/fp16/bf16)", _unscale_and_check_kernel,
                       constexprs=LAUNCH_META, num_warps=NUM_WARPS, args=args)]


# ------------------------------------------------------------------------------------ public


def _check_grads(grads) -> list[torch.Tensor]:
    """A list (or tuple) of dense fp32/fp16/bf16 tensors on one device; returned as a list."""
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads must be a list of tensors, got {type(grads).__name__}")
    grads = list(grads)
    for i, g in enumerate(grads):
        check_tensor(g, f"grads[{i}]", dtypes=FLOAT_DTYPES)
        if g.is_sparse:
            raise ValueError(f"grads[{i}] is sparse; only dense gradients are supported")
        if g.device != grads[0].device:
            raise ValueError(f"grads must share one device: grads[0] is on {grads[0].device}, "
                             f"grads[{i}] on {g.device}")
    return grads


def _check_scalar(t, name: str, dtype: torch.dtype, device: torch.device | None = None) -> None:
    """A one-element tensor of ``dtype`` (on ``device``). Shape and type only: no host sync."""
    check_tensor(t, name, dtypes=(dtype,))
    if t.numel() != 1:
        raise ValueError(f"{name} must have exactly one element, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device {device}, got {t.device}")


def _check_factors(growth_factor, backoff_factor, growth_interval) -> tuple[float, float, int]:
    """The rule of eq. 11 is only a rule if the scale grows, backs off, and counts to >= 1."""
    growth_factor = check_real(growth_factor, "growth_factor", minimum=1.0, strict=True)
    backoff_factor = check_real(backoff_factor, "backoff_factor", minimum=0.0, maximum=1.0,
                                strict=True)
    growth_interval = check_int(growth_interval, "growth_interval", minimum=1)
    return growth_factor, backoff_factor, growth_interval


def _check_scale_value(value, name: str) -> float:
    """A loss scale is a positive, finite number that fp32 holds (eq. 9)."""
    value = check_real(value, name, minimum=0.0, strict=True)
    if not math.isfinite(torch.tensor(value, dtype=torch.float32).item()):
        raise ValueError(f"{name} must fit in fp32 (at most {torch.finfo(torch.float32).max:.4g}),"
                         f" got {value}")
    return value


def unscale_and_check_(
    grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Multiply every gradient by ``inv_scale`` in place and flag inf/NaN (chapter 2, eq. 10).

    grads: a list of tensors of any shapes, fp32/fp16/bf16 mixed, on one device.
    found_inf: one-element fp32 tensor, set to 1.0 if any gradient held inf or NaN (it is not
    reset: pass zeros). inv_scale: one-element fp32 tensor, 1 / scale. Returns ``found_inf``.
    backend: ``"triton"`` runs ONE kernel launch for all tensors; ``"torch"`` the reference.
    No host synchronisation: the caller reads ``found_inf`` when it needs it.
    """
    grads = _check_grads(grads)
    check_backend(backend)
    device = grads[0].device if grads else None
    _check_scalar(found_inf, "found_inf", torch.float32, device)
    _check_scalar(inv_scale, "inv_scale", torch.float32, found_inf.device)
    if not grads:
        return found_inf
    if resolve_backend(backend, *grads) == "torch":
        return _unscale_and_check_reference(grads, found_inf, inv_scale)
    return _unscale_and_check_triton(grads, found_inf, inv_scale)


def update_scale(
    scale: torch.Tensor, growth_tracker: torch.Tensor, found_inf: torch.Tensor,
    growth_factor: float, backoff_factor: float, growth_interval: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of dynamic loss scaling (eq. 11), in place on the 0-d tensors, no host sync.

    scale: one-element fp32 tensor; growth_tracker: one-element int32 tensor (good steps in
    a row); found_inf: one-element fp32 tensor, > 0 after an inf/NaN; all on one device.
    growth_factor > 1, backoff_factor in (0, 1), growth_interval >= 1: the rule is
    ``_update_scale``, the same as ``torch._amp_update_scale_``. Returns the two tensors.
    """
    _check_scalar(scale, "scale", torch.float32)
    _check_scalar(growth_tracker, "growth_tracker", torch.int32, scale.device)
    _check_scalar(found_inf, "found_inf", torch.float32, scale.device)
    factors = _check_factors(growth_factor, backoff_factor, growth_interval)
    return _update_scale(scale, growth_tracker, found_inf, *factors)


def _update_scale(scale, growth_tracker, found_inf, growth_factor, backoff_factor,
                  growth_interval):
    """An inf/NaN multiplies the scale by ``backoff_factor`` and resets the count
    of good steps; ``growth_interval`` good steps in a row multiply it by
    ``growth_factor`` (unless that overflows fp32) and reset the count
    (eq. 11)."""
    found = found_inf.reshape(scale.shape) > 0
    good_steps = growth_tracker.reshape(scale.shape) + 1
    grow = ~found & (good_steps == growth_interval)
    # products in float64, rounded once to the fp32 scale, as in PyTorch
    grown = (scale.double() * growth_factor).float()
    backed_off = (scale.double() * backoff_factor).float()
    kept_or_grown = torch.where(grow & torch.isfinite(grown), grown, scale)
    new_scale = torch.where(found, backed_off, kept_or_grown)
    scale.copy_(new_scale)
    tracker = torch.where(found | grow, torch.zeros_like(good_steps), good_steps)
    growth_tracker.copy_(tracker.reshape(growth_tracker.shape))
    return scale, growth_tracker


READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"
_STATE_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, "
                        f"got {type(optimizer).__name__}")


class DynamicLossScaler:
    """Dynamic loss scaling, used exactly as ``torch.amp.GradScaler`` (chapter 2, eqs. 9-11).

    Per iteration::

        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)   # optional: to clip or inspect the true gradients
        scaler.step(optimizer)       # skipped when a gradient is inf/NaN
        scaler.update()

    The unscale and the inf/NaN check run as one fused pass over all gradients of an
    optimizer (:func:`unscale_and_check_`, one Triton launch per device). Differences from
    GradScaler: ``unscale_`` returns ``found_inf`` (a 0-d fp32 tensor) instead of None; there is
    no ``enabled`` switch; optimizers with their own scale handling (``_step_supports_amp_scaling``)
    are stepped like any other; a scale that is not a positive finite fp32 number is refused
    (by the constructor, :meth:`update` and :meth:`load_state_dict` alike) instead of
    silently turning every later step into NaN.
    """

    def __init__(
        self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
        backoff_factor: float = 0.5, growth_interval: int = 2000, backend: str = "auto",
    ):
        self.init_scale = _check_scale_value(init_scale, "init_scale")
        self.growth_factor, self.backoff_factor, self.growth_interval = _check_factors(
            growth_factor, backoff_factor, growth_interval)
        self.backend = check_backend(backend)
        self._scale: torch.Tensor | None = None  # 0-d fp32, created on the loss's device
        self._growth_tracker: torch.Tensor | None = None  # 0-d int32: good steps in a row
        self._init_tracker = 0
        self._states: dict[int, dict] = {}  # id(optimizer) -> stage and found_inf per device

    def _lazy_init(self, device: torch.device) -> None:
        if self._scale is None:
            self._scale = torch.full((), self.init_scale, dtype=torch.float32, device=device)
            self._growth_tracker = torch.full((), self._init_tracker, dtype=torch.int32,
                                              device=device)

    def _state(self, optimizer) -> dict:
        return self._states.setdefault(id(optimizer), {"stage": READY, "found_inf": {}})

    def _require_scale(self, what: str) -> None:
        if self._scale is None:
            raise RuntimeError(f"{what} was called before scale(loss) in this run")

    def scale(self, outputs):
        """``outputs * scale`` (eq. 9): a floating-point tensor, or a list/tuple of them."""
        if isinstance(outputs, torch.Tensor):
            if not outputs.is_floating_point():
                raise TypeError(f"outputs must be a floating-point tensor (a loss), "
                                f"got {outputs.dtype}")
            self._lazy_init(outputs.device)
            return outputs * self._scale.to(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"outputs must be a tensor or a list/tuple of tensors, "
                        f"got {type(outputs).__name__}")

    def unscale_(self, optimizer) -> torch.Tensor:
        """Divide the optimizer's gradients by the scale in place; return found_inf (0-d fp32)."""
        _check_optimizer(optimizer)
        self._require_scale("unscale_")
        state = self._state(optimizer)
        if state["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer "
                               "since the last update()")
        if state["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step()")
        inv_scale = self._scale.double().reciprocal().float()  # as GradScaler: 1/s in fp64
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dtype == torch.float16:
                    raise ValueError(
                        "Attempting to unscale FP16 gradients: keep fp32 master weights (eq. 8) "
                        "so that unscaled gradients are not rounded to fp16 again")
                by_device.setdefault(p.grad.device, []).append(p.grad)
        found = {}
        for device, grads in by_device.items():
            found[device] = torch.zeros((), dtype=torch.float32, device=device)
            unscale_and_check_(grads, found[device], inv_scale.to(device), self.backend)
        state["found_inf"], state["stage"] = found, UNSCALED
        total = torch.zeros((), dtype=torch.float32, device=self._scale.device)
        for f in found.values():
            total = total + f.to(total.device)
        return total

    def step(self, optimizer, *args, **kwargs):
        """Unscale (if not done yet) and call ``optimizer.step`` unless a gradient is inf/NaN."""
        _check_optimizer(optimizer)
        self._require_scale("step")
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not supported with loss scaling")
        state = self._state(optimizer)
        if state["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update()")
        if state["stage"] == READY:
            self.unscale_(optimizer)
        retval = None
        if not sum(f.item() for f in state["found_inf"].values()):
            retval = optimizer.step(*args, **kwargs)
        state["stage"] = STEPPED
        return retval

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Back off after an inf/NaN, grow after ``growth_interval`` good steps (eq. 11).

        new_scale: set the scale to this instead (a positive finite float, or a one-element
        fp32 tensor holding one; reading a tensor's value syncs with its device).
        """
        self._require_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, torch.Tensor):
                _check_scalar(new_scale, "new_scale", torch.float32)
                value = new_scale.item()
            else:
                value = new_scale
            self._scale.fill_(_check_scale_value(value, "new_scale"))
        else:
            found = [f.to(self._scale.device) for s in self._states.values()
                     for f in s["found_inf"].values()]
            if not found:
                raise RuntimeError("No inf checks were recorded prior to update(): call "
                                   "step(optimizer) first")
            # the settings were checked when they were set: the rule alone, no checks per step
            _update_scale(self._scale, self._growth_tracker, sum(found), self.growth_factor,
                          self.backoff_factor, self.growth_interval)
        self._states = {}

    def get_scale(self) -> float:
        """The current scale as a Python float (syncs with the device)."""
        return self.init_scale if self._scale is None else self._scale.item()

    def state_dict(self) -> dict:
        """The keys of ``GradScaler.state_dict``, so either can resume the other's run."""
        tracker = (self._init_tracker if self._growth_tracker is None
                   else int(self._growth_tracker.item()))
        return {"scale": self.get_scale(), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": tracker}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` or ``GradScaler.state_dict()``, checked as the
        constructor checks its arguments (nothing changes if a value is refused)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"state is missing the key(s) {missing}")
        scale = _check_scale_value(state["scale"], "state['scale']")
        factors = _check_factors(state["growth_factor"], state["backoff_factor"],
                                 state["growth_interval"])
        tracker = check_int(state["_growth_tracker"], "state['_growth_tracker']", minimum=0)
        self.init_scale = scale
        self.growth_factor, self.backoff_factor, self.growth_interval = factors
        self._init_tracker = tracker
        if self._scale is not None:
            self._scale.fill_(scale)
            self._growth_tracker.fill_(tracker)
