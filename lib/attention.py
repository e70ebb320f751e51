"""Attention: the readable reference, a tiled forward that counts its memory traffic, and
FlashAttention's Triton forward and backward kernels.

Chapter 7 (equation numbers refer to it). Dao, Fu, Ermon, Rudra & Ré (2022),
"FlashAttention: fast and memory-efficient exact attention with IO-awareness";
Dao (2023), "FlashAttention-2".

Layout (B, H, N, d): q is (B, H, Nq, d), k and v are (B, H, Nk, d). With scale
s = 1/sqrt(d) by default,

    S = s Q K^T,   P = softmax(S) row by row,   O = P V                    (eq. 1)

and the log-sum-exp of each score row, L_i = log sum_j exp(S_ij) (eq. 6), is what the
backward pass recomputes P from, P_ij = exp(S_ij - L_i) (eq. 10).

Which keys a query may see:

* ``causal=True`` aligns the causal mask to the bottom-right corner, as flash-attn >= 2.1
  does: query i sees key j iff j <= i + (Nk - Nq) (eq. 7). With Nq = Nk this is the usual
  lower triangle; with Nq < Nk (decoding with a KV cache) the last query sees every key.
  PyTorch's ``scaled_dot_product_attention(is_causal=True)`` aligns top-left instead
  (j <= i); ``torch.nn.attention.bias.causal_lower_right`` gives our convention.
* ``mask`` (bool, ``(Nq, Nm)`` or ``(B, Nq, Nm)``, the same for every head) applies to the
  LAST Nm keys, 1 <= Nm <= min(Nk, 128); True means "may attend". The first Nk - Nm keys
  (a shared prefix) are not affected by it. It is combined with ``causal`` by AND. This is
  how chapter 9 verifies a prefix plus a tree of candidate tokens in one pass.
* A query row that sees no key at all outputs zeros and has L = -inf, never NaN (the
  convention of chapter 1's softmax for all -inf rows).

The Triton path: a forward kernel (one program per query block and batch x head), and a
backward made of a small kernel for D = rowsum(dO o O) (eq. 8), a dK/dV kernel (one program
per key block) and a dQ kernel (one program per query block), both recomputing P from L.
Head dims are padded to a power of two inside; for d > 128 the backward kernels split the
output columns between programs to stay within registers (correct, but not tuned for
speed). ``aot_specs`` lists the default GPU configurations, which compile for sm_90a and
sm_80 with tensor cores and no register spills (``python -m lib.bench compile``).

Module layout: reference (the spec) -> tiled forward with traffic counters and the IO
model -> Triton kernels -> autograd wrapper -> public ``flash_attention``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from ._triton import tl, triton
from .backend import INTERPRET, resolve_backend
from .kernel_spec import KernelSpec
from .softmax import softmax_reference
from .validate import FLOAT_DTYPES, check_positive_int, check_same, check_tensor

MAX_HEAD_DIM = 256  # head dims up to this are supported (padded to a power of two inside)
MAX_MASK_KEYS = 128  # the explicit mask covers at most this many trailing keys

# ----------------------------------------------------------------------------- reference


def allowed_keys(
    n_q: int,
    n_k: int,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean (Nq, Nk) or (B, Nq, Nk) table of which key each query may see.

    Bottom-right causal alignment (query i sees key j iff j <= i + Nk - Nq), AND the
    explicit ``mask`` on the last Nm keys. ``mask`` must already be validated.
    """
    if mask is not None:
        device = mask.device
    i = torch.arange(n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        allowed = j <= i + (n_k - n_q)
    if mask is not None:
        n_m = mask.shape[-1]
        prefix = torch.ones(*mask.shape[:-1], n_k - n_m, dtype=torch.bool, device=device)
        allowed = allowed & torch.cat([prefix, mask], dim=-1)
    return allowed


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    return_lse: bool = False,
):
    """Standard attention (eq. 1), materialising the (Nq, Nk) scores, in fp32.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); mask: None, (Nq, Nm) or (B, Nq, Nm) bool on the
    last Nm keys. Returns O (B, H, Nq, d) in q's dtype, and with ``return_lse`` also the
    log-sum-exp L (B, H, Nq) in fp32 (eq. 6). Differentiable through autograd. Rows that
    see no key give zeros and L = -inf.
    """
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    s = scale * (q.float() @ k.float().transpose(-2, -1))  # (B, H, Nq, Nk)
    if causal or mask is not None:
        allowed = allowed_keys(q.shape[-2], k.shape[-2], causal, mask, q.device)
        if allowed.dim() == 3:  # (B, Nq, Nk): the same mask for every head
            allowed = allowed[:, None]
        s = s.masked_fill(~allowed, -math.inf)
    p = softmax_reference(s, dim=-1)  # all -inf rows give zeros, not NaN
    out = (p @ v.float()).to(q.dtype)
    if return_lse:
        return out, torch.logsumexp(s, dim=-1)  # -inf where the row sees no key
    return out


# ------------------------------------------------- tiled forward, traffic and the IO model


@dataclass
class AttentionTraffic:
    """Bytes read from and written to main memory (HBM on a GPU), per tensor."""

    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)

    def read(self, name: str, t: torch.Tensor) -> torch.Tensor:
        self.reads[name] = self.reads.get(name, 0) + t.numel() * t.element_size()
        return t

    def write(self, name: str, t: torch.Tensor) -> None:
        self.writes[name] = self.writes.get(name, 0) + t.numel() * t.element_size()

    @property
    def total(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())


def attention_tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
    on_tile=None,
) -> tuple[torch.Tensor, AttentionTraffic]:
    """FlashAttention's forward in plain PyTorch, one (block_m x block_n) tile at a time.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d). Returns (O, traffic): O (B, H, Nq, d) in q's
    dtype, and the bytes read from q, k, v and written to O and L, counted as the loads and
    stores happen. Loop order of FlashAttention-2 and of the Triton kernel: for each query
    block Q_i (read once), sweep the key blocks K_j, V_j (read once per query block),
    keeping the running max m, normaliser l and unnormalised output acc (eqs. 3-5); store
    O_i = acc / l and L_i = m + log l once. Causal tiles entirely above the (bottom-right)
    diagonal are skipped, as in the kernel. Only small (B, H, block_m, block_n) score tiles
    ever exist: the extra memory is O(B H block_m (block_n + d)), not O(B H Nq Nk).

    on_tile: optional callback ``on_tile(i, j, m, l, traffic)`` after each tile, with the
    block indices, the running state m, l (B, H, block_m) fp32 and the traffic so far.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None)
    check_positive_int(block_m, "block_m")
    check_positive_int(block_n, "block_n")
    n_q, n_k = q.shape[-2], k.shape[-2]
    traffic = AttentionTraffic()
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    for i, q0 in enumerate(range(0, n_q, block_m)):
        rows = torch.arange(q0, min(q0 + block_m, n_q), device=q.device)
        q_i = traffic.read("q", q[..., q0 : q0 + block_m, :]).float()
        m = torch.full(q_i.shape[:-1], -math.inf, device=q.device)  # (B, H, bm)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(q_i)  # (B, H, bm, d), unnormalised output
        # causal: the block's last row (q0 + block_m - 1, as in the kernel) sees j <= that + Nk - Nq
        hi = min(n_k, max(q0 + block_m + n_k - n_q, 0)) if causal else n_k
        for j, k0 in enumerate(range(0, max(hi, 0), block_n)):
            k_j = traffic.read("k", k[..., k0 : k0 + block_n, :]).float()
            v_j = traffic.read("v", v[..., k0 : k0 + block_n, :]).float()
            s = scale * (q_i @ k_j.transpose(-2, -1))  # (B, H, bm, bn): one score tile
            if causal:
                cols = torch.arange(k0, k0 + k_j.shape[-2], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None] + (n_k - n_q), -math.inf)
            # online softmax (eq. 5): rescale the old state to the new running max
            m_new = torch.maximum(m, s.amax(-1))
            m_ref = torch.where(m_new == -math.inf, 0.0, m_new)  # fully masked row so far
            alpha = torch.exp(m - m_ref)
            p = torch.exp(s - m_ref[..., None])
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v_j
            m = m_new
            if on_tile is not None:
                on_tile(i, j, m, l, traffic)
        o_i = acc / torch.where(l > 0, l, 1.0)[..., None]  # rows that saw no key stay 0
        out[..., q0 : q0 + block_m, :] = o_i.to(q.dtype)
        lse[..., q0 : q0 + block_m] = torch.where(l > 0, m + torch.log(l), -math.inf)
        traffic.write("o", out[..., q0 : q0 + block_m, :])
        traffic.write("lse", lse[..., q0 : q0 + block_m])
    return out, traffic


def tile_plan(n_q: int, n_k: int, block_m: int, block_n: int, causal: bool = False,
              n_mask: int = 0) -> torch.Tensor:
    """Which tiles the forward kernel visits, and which of them it masks.

    Returns an int8 tensor (ceil(Nq / block_m), ceil(Nk / block_n)): 0 = never visited
    (above the causal diagonal), 1 = visited without any masking (every query of the block
    sees every key of the tile), 2 = visited with masking (on the causal diagonal, under an
    explicit mask on the last ``n_mask`` keys, or past Nk). The rule is the kernel's own
    (``_first_masked_key``); :func:`attention_tiled` visits the same tiles.
    """
    t_q, t_k = math.ceil(n_q / block_m), math.ceil(n_k / block_n)
    plan = torch.zeros(t_q, t_k, dtype=torch.int8)
    for i in range(t_q):
        start_m = i * block_m
        hi = min(n_k, max(start_m + block_m + n_k - n_q, 0)) if causal else n_k
        n_full = n_k // block_n * block_n  # key padding needs a mask
        if causal:
            n_full = min(n_full, max(start_m + 1 + n_k - n_q, 0) // block_n * block_n)
        if n_mask:
            n_full = min(n_full, (n_k - n_mask) // block_n * block_n)
        for j in range(t_k):
            if j * block_n < min(n_full, hi):
                plan[i, j] = 1
            elif j * block_n < hi:
                plan[i, j] = 2
    return plan


def standard_attention_io(n: int, d: int, itemsize: int = 2) -> int:
    """HBM bytes of standard attention (Algorithm 0 of Dao et al. 2022), per head: eq. 2.

    Read Q, K (2Nd), write S (N^2); read S, write P (2N^2); read P, V, write O
    (N^2 + 2Nd): 4Nd + 4N^2 elements, Theta(Nd + N^2).
    """
    return (4 * n * d + 4 * n * n) * itemsize


def flash_attention_io(n: int, d: int, block_m: int, itemsize: int = 2) -> int:
    """HBM bytes of the tiled forward, per head, exactly as :func:`attention_tiled` counts.

    Q read once and O written once (2Nd), K and V read once per query block
    (2 ceil(N / block_m) N d), plus the fp32 log-sum-exp (4N bytes): eq. 11.
    """
    return (2 * n * d + 2 * math.ceil(n / block_m) * n * d) * itemsize + 4 * n


def sram_block(sram_bytes: int, d: int, itemsize: int = 2) -> int:
    """The query block that fills an SRAM of M = sram_bytes / itemsize elements: M / (4d).

    The Q, K and V tiles and the output accumulator, each block x d, share the SRAM
    (the choice B_c = M / 4d of Dao et al. 2022); with it :func:`flash_attention_io` is
    2Nd + 8 N^2 d^2 / M elements, Theta(N^2 d^2 / M) (eq. 12).
    """
    return max(1, sram_bytes // itemsize // (4 * d))


# ------------------------------------------------------------------------------ validation


def _check_inputs(q, k, v, causal, scale, mask) -> tuple[float, torch.Tensor | None]:
    """Validate the public arguments; return the scale as a float and the mask (or None)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, ndim=4, dtypes=FLOAT_DTYPES)
    check_same("dtype", q=q, k=k, v=v)
    check_same("device", q=q, k=k, v=v)
    (bq, hq, n_q, d), (bk, hk, n_k, dk) = q.shape, k.shape
    if (bq, hq) != (bk, hk):
        raise ValueError(
            f"q and k must have the same batch and head sizes (B, H), got {(bq, hq)} and "
            f"{(bk, hk)}"
        )
    if dk != d:
        raise ValueError(f"q and k must have the same head dim d, got {d} and {dk}")
    if v.shape != k.shape:
        raise ValueError(
            f"v must have the shape of k (B, H, Nk, d) = {tuple(k.shape)}, got {tuple(v.shape)}"
        )
    if n_q < 1 or n_k < 1 or d < 1:
        raise ValueError(
            f"q and k need at least one query, key and head dim, got Nq={n_q}, Nk={n_k}, d={d}"
        )
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim d must be at most {MAX_HEAD_DIM}, got {d}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype bool (True = may attend), got {mask.dtype}")
        if mask.device != q.device:
            raise ValueError(f"mask must be on q's device {q.device}, got {mask.device}")
        if mask.dim() not in (2, 3):
            raise ValueError(
                f"mask must have shape (Nq, Nm) or (B, Nq, Nm), got {tuple(mask.shape)}"
            )
        n_m = mask.shape[-1]
        if mask.shape[-2] != n_q or (mask.dim() == 3 and mask.shape[0] != bq):
            want = f"({n_q}, Nm) or ({bq}, {n_q}, Nm)"
            raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")
        if not 1 <= n_m <= min(n_k, MAX_MASK_KEYS):
            raise ValueError(
                f"mask covers the last Nm keys with 1 <= Nm <= min(Nk, {MAX_MASK_KEYS}) = "
                f"{min(n_k, MAX_MASK_KEYS)}, got Nm={n_m}"
            )
    return float(scale), mask


# ---------------------------------------------------------------------------- Triton kernels

LOG2E = 1.4426950408889634  # the kernels work in base 2: exp(x) = exp2(x log2 e)
LN2 = 0.6931471805599453
# Triton 3.9's interpreter multiplies bf16 operands of tl.dot as raw 16-bit integers
# (it stores bf16 as uint16); under the interpreter _dot upcasts them to fp32 first, which
# is exact (a product of two bf16 fits in fp32). Compiled kernels never take that branch.
_UPCAST_BF16_DOT = tl.constexpr(INTERPRET)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation (tensor cores for fp16/bf16 operands)."""
    if _UPCAST_BF16_DOT:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
        if b.dtype == tl.bfloat16:
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _allowed(rows, cols, mask_row_ptr, stride_mq, N_Q, N_K, N_M,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Which (query row, key col) pairs may attend; rows, cols broadcast to the tile's shape.

    Key padding beyond Nk is excluded; causal is bottom-right aligned; the explicit mask
    (int8, one row of N_M entries per query) covers the last N_M keys.
    """
    ok = cols < N_K
    if CAUSAL:
        ok = ok & (cols <= rows + (N_K - N_Q))
    if HAS_MASK:
        c = cols - (N_K - N_M)  # column in the mask; negative: in the unmasked prefix
        inside = ok & (c >= 0) & (rows < N_Q)
        m = tl.load(mask_row_ptr + rows * stride_mq + c, mask=inside, other=1)
        ok = ok & (m != 0)
    return ok


@triton.jit
def _tile_mask(rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load/store mask of a (rows x BLOCK_D) tile: rows < n_rows and columns < HEAD_DIM.

    Both checks are compile-time optional (None when neither is needed), so that tiles
    of a power-of-two head dim in the interior of the sequence are moved unmasked.
    """
    mask = None
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            mask = rows[:, None] < n_rows
        else:
            mask = (rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)
    else:
        if HEAD_DIM != BLOCK_D:
            mask = offs_d[None, :] < HEAD_DIM
    return mask


@triton.jit
def _load(ptrs, mask):
    """tl.load of a tile, reading 0 where ``mask`` is False; unmasked when ``mask`` is None."""
    if mask is None:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x


@triton.jit
def _store(ptrs, x, mask):
    """Store a tile in the pointers' dtype where ``mask`` is True (everywhere if None)."""
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _first_masked_key(start_m, N_Q, N_K, N_M, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Start of the first key block in which some query of [start_m, start_m + BLOCK_M)
    must be masked; every key block before it is visible to all of them (no masking).

    The partial last key block is always masked: its padding keys load k = v = 0, so
    their p = exp(-L) overflows when L is very negative, and dS K would then add
    inf * 0 = NaN to dQ (the forward and the dQ kernel both use this rule)."""
    n_full = N_K // BLOCK_N * BLOCK_N  # keys beyond Nk must not enter the softmax
    if CAUSAL:  # the block's first query sees keys j <= start_m + Nk - Nq
        n_full = tl.minimum(n_full, tl.maximum(start_m + 1 + N_K - N_Q, 0) // BLOCK_N * BLOCK_N)
    if HAS_MASK:  # the explicit mask covers the last N_M keys
        n_full = tl.minimum(n_full, (N_K - N_M) // BLOCK_N * BLOCK_N)
    return n_full


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn,
                    offs_m, offs_n, offs_d, lo, hi, mask_row_ptr, stride_mq,
                    N_Q, N_K, N_M, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Sweep key blocks [lo, hi): the online-softmax update of (m, l, acc) (eqs. 5-6)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = _tile_mask(cols, N_K, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        k = _load(k_base + cols[:, None] * stride_kn + offs_d[None, :], kv_ok)
        v = _load(v_base + cols[:, None] * stride_vn + offs_d[None, :], kv_ok)
        # -- compute qk, scaled to base 2
        qk = _dot(q, tl.trans(k), None, PRECISION) * qk_scale
        if MASKED:
            ok = _allowed(offs_m[:, None], cols[None, :], mask_row_ptr, stride_mq, N_Q, N_K,
                          N_M, CAUSAL, HAS_MASK)
            qk = tl.where(ok, qk, -float("inf"))
        # -- update m_i and l_i; a row with nothing visible yet keeps m = -inf, without NaN
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = m_new
        if MASKED:
            m_ref = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_ref)
        p = tl.math.exp2(qk - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # -- rescale the accumulator and add this tile's P V
        acc = acc * alpha[:, None]
        acc = _dot(p.to(v.dtype), v, acc, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_mb, stride_mq,
    H, N_Q, N_K, N_M, qk_scale, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (query block, batch x head): O_i and L_i by the online softmax (eq. 6).

    Key blocks that every query of the block may see are swept without masking; only
    the blocks on the causal diagonal, under the explicit mask, or past Nk are masked.
    """
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # head dims padded to a power of two and rows past Nq read as 0
    q_ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    q = _load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :], q_ok)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    mask_row_ptr = mask_ptr + b * stride_mb
    m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)  # running max (base 2)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running normaliser
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # unnormalised output
    hi = N_K
    if CAUSAL:  # keys beyond the diagonal of the block's last query are never visited
        hi = tl.minimum(N_K, tl.maximum(start_m + BLOCK_M + N_K - N_Q, 0))
    n_full = _first_masked_key(start_m, N_Q, N_K, N_M, BLOCK_N, CAUSAL, HAS_MASK)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
        0, n_full, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
        n_full, hi, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D)
    # -- epilogue: O = acc / l, L = (m + log2 l) ln 2; a row that saw no key gives 0, -inf
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    acc = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, -float("inf"))
    o_base = o_ptr + b * stride_ob + h * stride_oh
    _store(o_base + offs_m[:, None] * stride_on + offs_d[None, :], acc, q_ok)
    tl.store(lse_ptr + pid_bh.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_preprocess(o_ptr, do_ptr, delta_ptr, stride_ob, stride_oh, stride_on,
                         stride_dob, stride_doh, stride_don, H, N_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """D_i = sum_c dO_ic O_ic (eq. 8), one program per (query block, batch x head)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    o = _load(o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on
                + offs_d[None, :], ok).to(tl.float32)
    do = _load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :], ok).to(tl.float32)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, stride_qn,
                         stride_don, offs_m, offs_n, offs_d, offs_o, lo, hi, mask_row_ptr,
                         stride_mq, N_Q, N_K, N_M, qk_scale, BLOCK_M: tl.constexpr,
                         MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                         PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """Sweep query blocks [lo, hi) for one key block: dV += P^T dO, dK += dS^T Q (eqs. 8-10)."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < N_Q
        q_ok = _tile_mask(rows, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
        q = _load(q_base + rows[:, None] * stride_qn + offs_d[None, :], q_ok)
        do = _load(do_base + rows[:, None] * stride_don + offs_d[None, :], q_ok)
        # padding rows (q = dO = 0, L = D = 0) contribute exactly zero below
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
        # -- recompute P^T (BLOCK_N x BLOCK_M) from the log-sum-exp
        qkT = _dot(k, tl.trans(q), None, PRECISION) * qk_scale
        if MASKED:
            lse = tl.where(lse == -float("inf"), 0.0, lse)  # rows that see no key at all
            ok = _allowed(rows[None, :], offs_n[:, None], mask_row_ptr, stride_mq, N_Q, N_K,
                          N_M, CAUSAL, HAS_MASK)
            pT = tl.math.exp2(tl.where(ok, qkT - lse[None, :], -float("inf")))
        else:
            pT = tl.math.exp2(qkT - lse[None, :])
        if BLOCK_DO == BLOCK_D:
            q_o = q
            do_o = do
        else:  # this program owns only the columns offs_o of dK and dV
            o_ok = _tile_mask(rows, N_Q, offs_o, True, HEAD_DIM, BLOCK_D)
            q_o = _load(q_base + rows[:, None] * stride_qn + offs_o[None, :], o_ok)
            do_o = _load(do_base + rows[:, None] * stride_don + offs_o[None, :], o_ok)
        dv = _dot(pT.to(do.dtype), do_o, dv, PRECISION)
        # -- dS^T = P^T o (dP^T - D)
        dpT = _dot(v, tl.trans(do), None, PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(q.dtype), q_o, dk, PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, mask_ptr,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_mb, stride_mq,
    H, N_Q, N_K, N_M, sm_scale, qk_scale, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (key block, batch x head, column part): dK_j and dV_j.

    P^T is recomputed tile by tile from the saved L (eq. 10), transposed so that the
    accumulators dK_j, dV_j (BLOCK_N x d) stay on chip. Padding keys (k = v = 0) give
    rows of dK, dV that are never stored; the program that holds them masks every tile.
    A program writes BLOCK_DO of the head dim's columns (all of them up to d = 128; a part
    for d = 256, where the accumulators next to K_j and V_j would not fit in registers).
    """
    start_n = tl.program_id(0) * BLOCK_N
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_o = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # columns of dK, dV
    kv_ok = _tile_mask(offs_n, N_K, offs_d, True, HEAD_DIM, BLOCK_D)
    k = _load(k_ptr + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :], kv_ok)
    v = _load(v_ptr + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :], kv_ok)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    do_base = do_ptr + b * stride_dob + h * stride_doh
    lse_row = lse_ptr + pid_bh.to(tl.int64) * N_Q
    delta_row = delta_ptr + pid_bh.to(tl.int64) * N_Q
    mask_row_ptr = mask_ptr + b * stride_mb
    dk = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    lo = 0  # first query block that sees any key of this block
    m_full = 0  # from here on, every query sees every key of this block
    if CAUSAL:  # query i sees key j iff i >= j - (Nk - Nq)
        lo = tl.maximum(0, start_n - (N_K - N_Q)) // BLOCK_M * BLOCK_M
        m_full = tl.maximum(0, start_n + BLOCK_N - 1 - (N_K - N_Q))
        m_full = tl.minimum((m_full + BLOCK_M - 1) // BLOCK_M * BLOCK_M, N_Q)
    # the key block that holds padding keys (k = v = 0, p = exp(-L) may overflow) or meets
    # the explicit mask is masked in every tile: no inf enters its dK, dV accumulators
    first_masked_col = N_K
    if HAS_MASK:
        first_masked_col = N_K - N_M
    if start_n + BLOCK_N > first_masked_col:
        m_full = N_Q
    m_full = tl.maximum(m_full, lo)
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_row, delta_row, stride_qn, stride_don, offs_m,
        offs_n, offs_d, offs_o, lo, m_full, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_M, True, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_base, do_base, lse_row, delta_row, stride_qn, stride_don, offs_m,
        offs_n, offs_d, offs_o, m_full, N_Q, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_M, False, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    dk = dk * sm_scale
    # dk, dv are written contiguously in (B, H, Nk, d)
    out_off = pid_bh.to(tl.int64) * N_K * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_o[None, :]
    out_ok = _tile_mask(offs_n, N_K, offs_o, True, HEAD_DIM, BLOCK_D)
    _store(dk_ptr + out_off, dk, out_ok)
    _store(dv_ptr + out_off, dv, out_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn,
                       offs_m, offs_n, offs_d, offs_o, lo, hi, mask_row_ptr, stride_mq,
                       N_Q, N_K, N_M, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """Sweep key blocks [lo, hi) for one query block: dQ += dS K (eqs. 8-10)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = _tile_mask(cols, N_K, offs_d, True, HEAD_DIM, BLOCK_D)  # padding keys: 0
        k = _load(k_base + cols[:, None] * stride_kn + offs_d[None, :], kv_ok)
        v = _load(v_base + cols[:, None] * stride_vn + offs_d[None, :], kv_ok)
        qk = _dot(q, tl.trans(k), None, PRECISION) * qk_scale
        if MASKED:
            ok = _allowed(offs_m[:, None], cols[None, :], mask_row_ptr, stride_mq, N_Q, N_K,
                          N_M, CAUSAL, HAS_MASK)
            p = tl.math.exp2(tl.where(ok, qk - lse[:, None], -float("inf")))
        else:
            p = tl.math.exp2(qk - lse[:, None])
        dp = _dot(do, tl.trans(v), None, PRECISION)
        ds = p * (dp - delta[:, None])
        if BLOCK_DO == BLOCK_D:
            k_o = k
        else:  # this program owns only the columns offs_o of dQ
            o_ok = _tile_mask(cols, N_K, offs_o, True, HEAD_DIM, BLOCK_D)
            k_o = _load(k_base + cols[:, None] * stride_kn + offs_o[None, :], o_ok)
        dq = _dot(ds.to(k.dtype), k_o, dq, PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, mask_ptr,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_mb, stride_mq,
    H, N_Q, N_K, N_M, sm_scale, qk_scale, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    """One program per (query block, batch x head, column part): dQ_i = s sum_j dS_ij K_j
    (eqs. 8-10); a program writes BLOCK_DO columns of dQ, as in the dK, dV kernel."""
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_o = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # columns of dQ
    q_ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    q = _load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :], q_ok)
    do = _load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :], q_ok)
    row_base = pid_bh.to(tl.int64) * N_Q
    lse = tl.load(lse_ptr + row_base + offs_m, mask=offs_m < N_Q, other=0.0) * 1.4426950408889634
    lse = tl.where(lse == -float("inf"), 0.0, lse)  # rows that see no key: every p is masked
    delta = tl.load(delta_ptr + row_base + offs_m, mask=offs_m < N_Q, other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    mask_row_ptr = mask_ptr + b * stride_mb
    dq = tl.zeros((BLOCK_M, BLOCK_DO), tl.float32)
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, tl.maximum(start_m + BLOCK_M + N_K - N_Q, 0))
    n_full = _first_masked_key(start_m, N_Q, N_K, N_M, BLOCK_N, CAUSAL, HAS_MASK)
    n_full = tl.minimum(n_full, hi)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
        offs_o, 0, n_full, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_n, offs_d,
        offs_o, n_full, hi, mask_row_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    dq = dq * sm_scale
    out_off = pid_bh.to(tl.int64) * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_o[None, :]
    _store(dq_ptr + out_off, dq, _tile_mask(offs_m, N_Q, offs_o, True, HEAD_DIM, BLOCK_D))


def _head_block(d: int) -> int:
    """Head dims are padded to a power of two of at least 16 (the smallest tl.dot size)."""
    return max(16, triton.next_power_of_2(d))


def launch_config(d: int, n_q: int, n_k: int, kind: str = "fwd", masked: bool = False) -> dict:
    """Block sizes and warps for one kernel: large blocks on the GPU, few programs on CPU.

    kind: ``"fwd"``, ``"dkdv"`` or ``"dq"``; masked: an explicit mask is loaded per tile,
    which takes registers, so those launches use smaller tiles.

    On CUDA these are the configurations ``aot_specs`` compiles (no spills, tensor cores).
    Under the interpreter cost grows with programs x loop iterations, so blocks cover up
    to 64 rows/columns at once.
    """
    block_d = _head_block(d)
    if INTERPRET:
        block_m = min(64, max(16, triton.next_power_of_2(n_q)))
        block_n = min(64, max(16, triton.next_power_of_2(n_k)))
        cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=1)
    else:
        table = _GPU_CONFIGS[kind + "+mask" if masked else kind]
        cfg = dict(table[min(c for c in table if c >= block_d)])
    cfg["BLOCK_D"] = block_d
    if kind != "fwd":
        cfg["BLOCK_DO"] = min(cfg.get("BLOCK_DO", block_d), block_d)
    return cfg


# (BLOCK_M, BLOCK_N, warps, stages) per kernel and padded head dim: the configurations
# that aot_specs compiles for sm_90a and sm_80 with no register spills and tensor cores.
# For d = 256 the backward kernels split the output columns into parts (BLOCK_DO): each
# part recomputes P, which costs time but keeps Q, dO and the accumulators in registers.
_GPU_CONFIGS = {
    "fwd": {
        64: dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
        128: dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, num_warps=8, num_stages=2),
    },
    "dkdv": {
        64: dict(BLOCK_M=32, BLOCK_N=128, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=16, BLOCK_N=64, BLOCK_DO=128, num_warps=8, num_stages=1),
    },
    "dq": {
        64: dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, BLOCK_DO=64, num_warps=8, num_stages=2),
    },
    "fwd+mask": {
        64: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, num_warps=8, num_stages=2),
    },
    "dkdv+mask": {
        64: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=32, BLOCK_N=64, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=16, BLOCK_N=64, BLOCK_DO=128, num_warps=8, num_stages=1),
    },
    "dq+mask": {
        64: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        128: dict(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=2),
        256: dict(BLOCK_M=64, BLOCK_N=16, BLOCK_DO=32, num_warps=8, num_stages=2),
    },
}
_GPU_CONFIGS = {k: {16: v[64], 32: v[64], **v} for k, v in _GPU_CONFIGS.items()}


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (tf32 would miss the fp32 tolerance); fp16/bf16
    # inputs use the tensor cores directly
    return "ieee" if dtype == torch.float32 else "tf32"


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_args(mask: torch.Tensor | None, q: torch.Tensor):
    """(int8 mask tensor, stride over B, stride over Nq, Nm); a dummy when there is none."""
    if mask is None:
        return q, 0, 0, 1
    m8 = mask.to(torch.int8).contiguous()
    if m8.dim() == 2:  # (Nq, Nm): the same for every batch
        return m8, 0, m8.stride(0), m8.shape[-1]
    return m8, m8.stride(0), m8.stride(1), m8.shape[-1]


def _flash_fwd_triton(q, k, v, causal, scale, mask, block_m=None, block_n=None):
    """Launch the forward kernel; returns O (B, H, Nq, d) in q's dtype and L (B, H, Nq) fp32."""
    q, k, v = map(_last_dim_contiguous, (q, k, v))
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
    cfg = launch_config(d, n_q, n_k, "fwd", mask is not None)
    cfg["BLOCK_M"] = block_m or cfg["BLOCK_M"]
    cfg["BLOCK_N"] = block_n or cfg["BLOCK_N"]
    m8, smb, smq, n_m = _mask_args(mask, q)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), batch * heads)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, m8,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        smb, smq, heads, n_q, n_k, n_m, scale * LOG2E, HEAD_DIM=d,
        CAUSAL=causal, HAS_MASK=mask is not None, PRECISION=_precision(q.dtype), **cfg,
    )
    return out, lse


def _flash_bwd_triton(q, k, v, out, lse, do, dlse, causal, scale, mask,
                      block_m=None, block_n=None, block_do=None):
    """dQ, dK, dV (eqs. 8-10) by recomputing P from L; ``dlse`` (or None) is L's gradient."""
    q, k, v, out, do = map(_last_dim_contiguous, (q, k, v, out, do))
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    pre = launch_config(d, n_q, n_k, "fwd")
    delta = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
    _attn_bwd_preprocess[(triton.cdiv(n_q, pre["BLOCK_M"]), batch * heads)](
        out, do, delta, out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2), heads, n_q, HEAD_DIM=d,
        BLOCK_M=pre["BLOCK_M"], BLOCK_D=pre["BLOCK_D"],
    )
    if dlse is not None:  # dL_i/dS_ij = P_ij, so L's gradient enters as D_i - dL_i
        delta = delta - dlse.float()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    m8, smb, smq, n_m = _mask_args(mask, q)
    common = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
        smb, smq, heads, n_q, n_k, n_m, scale, scale * LOG2E,
    )
    flags = dict(HEAD_DIM=d, CAUSAL=causal, HAS_MASK=mask is not None,
                 PRECISION=_precision(q.dtype))
    for kind in ("dkdv", "dq"):
        cfg = launch_config(d, n_q, n_k, kind, mask is not None)
        cfg["BLOCK_M"] = block_m or cfg["BLOCK_M"]
        cfg["BLOCK_N"] = block_n or cfg["BLOCK_N"]
        cfg["BLOCK_DO"] = block_do or cfg["BLOCK_DO"]
        parts = cfg["BLOCK_D"] // cfg["BLOCK_DO"]  # column parts of the output
        if kind == "dkdv":
            grid = (triton.cdiv(n_k, cfg["BLOCK_N"]), batch * heads, parts)
            _attn_bwd_dkdv_kernel[grid](q, k, v, do, lse, delta, dk, dv, m8, *common,
                                        **flags, **cfg)
        else:
            grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), batch * heads, parts)
            _attn_bwd_dq_kernel[grid](q, k, v, do, lse, delta, dq, m8, *common, **flags, **cfg)
    return dq, dk, dv


def aot_specs() -> list[KernelSpec]:
    """Default GPU configurations, compiled by ``python -m lib.bench compile``: every kernel
    for d = 64, 128, 256 in fp16 and bf16 (causal), and with an explicit mask in fp16."""
    ints = {n: "i32" for n in ("H", "N_Q", "N_K", "N_M", "stride_mb", "stride_mq")}
    ints |= {f"stride_{t}{a}": "i32" for t in ("q", "k", "v") for a in "bhn"}
    specs = []
    for dt in ("fp16", "bf16"):
        ptrs = {p: f"*{dt}" for p in ("q_ptr", "k_ptr", "v_ptr", "do_ptr")}
        ptrs |= {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "mask_ptr": "*i8"}
        fwd = {p: t for p, t in ptrs.items() if p not in ("do_ptr", "delta_ptr")}
        fwd |= {"o_ptr": f"*{dt}", "stride_ob": "i32", "stride_oh": "i32", "stride_on": "i32"}
        fwd |= ints | {"qk_scale": "fp32"}
        bwd = ptrs | ints | {n: "i32" for n in ("stride_dob", "stride_doh", "stride_don")}
        bwd |= {"sm_scale": "fp32", "qk_scale": "fp32"}
        kernels = {"fwd": (_attn_fwd_kernel, fwd),
                   "dkdv": (_attn_bwd_dkdv_kernel, bwd | {"dk_ptr": f"*{dt}", "dv_ptr": f"*{dt}"}),
                   "dq": (_attn_bwd_dq_kernel, bwd | {"dq_ptr": f"*{dt}"})}
        for masked in (False, True) if dt == "fp16" else (False,):
            for block_d in (64, 128, 256):
                for kind, (kernel, sig) in kernels.items():
                    cfg = dict(_GPU_CONFIGS[kind + "+mask" if masked else kind][block_d])
                    if kind != "fwd":
                        cfg.setdefault("BLOCK_DO", block_d)
                    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                    flags = {"BLOCK_D": block_d, "HEAD_DIM": block_d, "CAUSAL": True,
                             "HAS_MASK": masked, "PRECISION": "tf32"}
                    name = f"attn_{kind}{' masked' if masked else ''} ({dt}, d={block_d})"
                    specs.append(KernelSpec(name, kernel, sig, cfg | flags, num_warps=warps,
                                            num_stages=stages, matmul=True))
        pre = {"o_ptr": f"*{dt}", "do_ptr": f"*{dt}", "delta_ptr": "*fp32"}
        pre |= {n: "i32" for n in ("stride_ob", "stride_oh", "stride_on", "stride_dob",
                                   "stride_doh", "stride_don", "H", "N_Q")}
        specs.append(KernelSpec(f"attn_bwd_preprocess ({dt})", _attn_bwd_preprocess, pre,
                                {"HEAD_DIM": 128, "BLOCK_M": 64, "BLOCK_D": 128}))
    return specs


# --------------------------------------------------------------------------- autograd wrapper


class _FlashAttention(torch.autograd.Function):
    """Saves exactly what the backward needs: q, k, v, O and L (not the Nq x Nk matrix P)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, mask):
        out, lse = _flash_fwd_triton(q, k, v, causal, scale, mask)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.causal, ctx.scale = causal, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(out)
        dq, dk, dv = _flash_bwd_triton(q, k, v, out, lse, do, dlse, ctx.causal, ctx.scale,
                                       mask)
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------- public function


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
):
    """Exact attention softmax(s Q K^T) V (eq. 1) without materialising the scores.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); any Nq, Nk >= 1, d <= 256; fp32, fp16 or bf16
    (all three the same), fp32 accumulation. scale: default 1/sqrt(d).
    causal: bottom-right aligned (query i sees key j iff j <= i + Nk - Nq), as flash-attn
    >= 2.1; SDPA's ``is_causal`` is top-left aligned (see the module docstring).
    mask: None or bool (Nq, Nm) / (B, Nq, Nm) on the last Nm <= 128 keys, True = may
    attend, ANDed with ``causal``.
    backend: ``"auto"`` (Triton on CUDA, the PyTorch reference elsewhere), ``"triton"``
    (the kernels; Triton's interpreter on CPU) or ``"torch"`` (:func:`attention_reference`).
    Returns O (B, H, Nq, d) in q's dtype, and with ``return_lse`` also the log-sum-exp
    L (B, H, Nq) in fp32 (natural log; -inf for a row that sees no key, whose O is zero).
    Differentiable in q, k, v with either backend.
    """
    scale, mask = _check_inputs(q, k, v, causal, scale, mask)
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if resolve_backend(backend, q) == "torch":
        return attention_reference(q, k, v, causal, scale, mask, return_lse=return_lse)
    if q.shape[0] * q.shape[1] == 0:  # nothing to launch
        return attention_reference(q, k, v, causal, scale, mask, return_lse=return_lse)
    out, lse = _FlashAttention.apply(q, k, v, causal, scale, mask)
    return (out, lse) if return_lse else out
