"""FlashAttention's Triton kernels: forward, backward, their launch configurations.

Chapter 7 (equation numbers refer to it); Dao (2023), "FlashAttention-2", and Triton's
fused-attention tutorial. :mod:`lib.attention` is the public API and the reference;
this module holds the kernels, and :mod:`lib.attention_launch` their configurations and
launches. Layout (B, H, N, d); every program first shifts its
pointers to its batch and head, then works on tiles:

* forward: one program per (query block, batch x head) sweeps the key blocks with the
  online softmax (eqs. 5-6) and stores O and L = log-sum-exp (eq. 6);
* backward: a small kernel for D = rowsum(dO o O) (eq. 8); a dK, dV kernel (one program
  per key block) and a dQ kernel (one program per query block), both recomputing
  P = exp(S - L) (eq. 10) tile by tile.

Which keys a query sees is stated once, in :func:`_keys_end` (causal, bottom-right); the
tile ranges of every kernel (:func:`_key_range`, :func:`_query_range`) derive from it, and
:func:`lib.attention_io.tile_plan` runs those same functions on the host
(:func:`on_host`). Head dims are padded to a power of two (at least 16, the smallest
``tl.dot``). Kernels work in base 2: exp(x) = exp2(x log2 e).
"""

from __future__ import annotations

import math
import types

from ._triton import tl, triton
from .backend import INTERPRET

MAX_HEAD_DIM = 256  # head dims up to this are supported (padded to a power of two inside)
LOG2E = tl.constexpr(math.log2(math.e))  # the kernels work in base 2
LN2 = tl.constexpr(math.log(2.0))  # L = (m + log2 l) ln 2 back in natural log
# Triton 3.9's interpreter multiplies bf16 operands of tl.dot as raw 16-bit integers
# (it stores bf16 as uint16); under the interpreter _dot upcasts them to fp32 first, which
# is exact (a product of two bf16 fits in fp32). Compiled kernels never take that branch.
_UPCAST_BF16_DOT = tl.constexpr(INTERPRET)

# ------------------------------------------------------------------------ which tiles


@triton.jit
def _keys_end(row, N_Q, N_K):
    """The causal rule, bottom-right aligned (eq. 7): query ``row`` sees key j iff
    j < _keys_end(row). Plain arithmetic: on scalars, on tensors of rows, on the host."""
    return row + 1 + N_K - N_Q


@triton.jit
def _key_range(start_m, N_Q, N_K, N_M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Keys swept by the query block [start_m, start_m + BLOCK_M): (n_full, hi).

    Keys [0, n_full) are seen by every query of the block: no masking. Keys [n_full, hi)
    are masked element by element: the causal diagonal, the explicit mask on the last
    N_M keys, and the partial last key block. Its padding keys load k = v = 0, so their
    p = exp(-L) overflows when L is very negative; unmasked, dS K would add inf * 0 = NaN
    to dQ. No query of the block sees a key from hi on. Scalar arithmetic only.
    """
    hi = N_K
    n_full = N_K // BLOCK_N * BLOCK_N
    if CAUSAL:
        last = _keys_end(start_m + BLOCK_M - 1, N_Q, N_K)  # the block's last query
        hi = N_K if last > N_K else (0 if last < 0 else last)
        first = _keys_end(start_m, N_Q, N_K)  # the block's first query
        first = 0 if first < 0 else first // BLOCK_N * BLOCK_N
        n_full = first if first < n_full else n_full
    if HAS_MASK:
        prefix = (N_K - N_M) // BLOCK_N * BLOCK_N  # keys before the mask
        n_full = prefix if prefix < n_full else n_full
    n_full = hi if hi < n_full else n_full
    return n_full, hi


@triton.jit
def _query_range(start_n, N_Q, N_K, N_M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Queries swept by the key block [start_n, start_n + BLOCK_N): (lo, m_full).

    Queries before lo see no key of the block; [lo, m_full) are masked element by
    element; from m_full on every query sees every key of the block. The key block
    that meets the explicit mask or holds padding keys is masked throughout, so no
    padding key's overflowing p enters dK, dV. The inverse of :func:`_key_range`.
    """
    lo = 0
    m_full = 0
    if CAUSAL:  # query i sees key j iff i >= j - shift (from _keys_end)
        shift = _keys_end(0, N_Q, N_K) - 1
        first = start_n - shift  # first query that sees the block's first key
        lo = 0 if first < 0 else first // BLOCK_M * BLOCK_M
        full = start_n + BLOCK_N - 1 - shift  # first query that sees its last key
        full = 0 if full < 0 else (full + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        m_full = N_Q if full > N_Q else full
    masked_from = N_K - N_M if HAS_MASK else N_K
    if start_n + BLOCK_N > masked_from:
        m_full = N_Q
    m_full = lo if m_full < lo else m_full
    return lo, m_full


def on_host(jit_fn):
    """The plain Python function behind a scalar-arithmetic ``@triton.jit`` helper, with
    the jit helpers it calls replaced the same way: the host runs the kernels' own rules."""
    fn = jit_fn.fn
    env = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        if isinstance(getattr(env.get(name), "fn", None), types.FunctionType):
            env[name] = on_host(env[name])
    return types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__)


# ------------------------------------------------------------------------ tile helpers


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
def _allowed(rows, cols, mask_ptr, stride_mq, N_Q, N_K, N_M,
             CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr):
    """Which (query row, key col) pairs may attend; rows, cols broadcast to a tile.

    Keys past Nk are excluded; causal by :func:`_keys_end`; the explicit mask (int8, one
    row of N_M entries per query) covers the last N_M keys.
    """
    ok = cols < N_K
    if CAUSAL:
        ok = ok & (cols < _keys_end(rows, N_Q, N_K))
    if HAS_MASK:
        c = cols - (N_K - N_M)  # column in the mask; negative: in the unmasked prefix
        inside = ok & (c >= 0) & (rows < N_Q)
        m = tl.load(mask_ptr + rows * stride_mq + c, mask=inside, other=1)
        ok = ok & (m != 0)
    return ok


@triton.jit
def _tile_mask(rows, n_rows, offs_d, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load/store mask of a (rows x BLOCK_D) tile: rows < n_rows, columns < HEAD_DIM;
    None when neither is needed, so that interior tiles move unmasked."""
    mask = None
    if CHECK_ROWS:
        mask = rows[:, None] < n_rows
        if HEAD_DIM != BLOCK_D:
            mask = mask & (offs_d[None, :] < HEAD_DIM)
    elif HEAD_DIM != BLOCK_D:
        mask = offs_d[None, :] < HEAD_DIM
    return mask


@triton.jit
def _load(ptrs, mask):
    """tl.load of a tile, reading 0 where ``mask`` is False; unmasked when it is None."""
    if mask is None:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x


@triton.jit
def _store(ptrs, x, mask):
    """Store a tile in the pointers' dtype where ``mask`` is True (everywhere if None)."""
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- forward


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                    offs_m, offs_n, offs_d, lo, hi, mask_ptr, stride_mq,
                    N_Q, N_K, N_M, qk_scale,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                    PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    """Sweep key blocks [lo, hi): the online-softmax update of (m, l, acc)
    (eqs. 5-6)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = _tile_mask(cols, N_K, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        k = _load(k_ptrs + start_n * stride_kn, kv_ok)
        v = _load(v_ptrs + start_n * stride_vn, kv_ok)
        # -- compute qk, scaled to base 2
        qk = _dot(q, tl.trans(k), None, PRECISION) * qk_scale
        if MASKED:
            ok = _allowed(offs_m[:, None], cols[None, :], mask_ptr, stride_mq,
                          N_Q, N_K, N_M, CAUSAL, HAS_MASK)
            qk = tl.where(ok, qk, -float("inf"))
        # -- update m_i and l_i; a row that has seen nothing keeps m = -inf
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_ref = m_new
        if MASKED:  # reference point 0 for such rows: no -inf - (-inf) = NaN
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

    Key blocks that every query of the block sees are swept without masking; only the
    blocks on the causal diagonal, under the explicit mask or past Nk are masked.
    """
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    # -- shift every pointer to this program's batch and head, once
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    o_ptr += b * stride_ob + h * stride_oh
    lse_ptr += off_bh.to(tl.int64) * N_Q
    mask_ptr += b * stride_mb
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # rows past Nq and columns past d read 0
    q_ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    q = _load(q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :], q_ok)
    k_ptrs = k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :]
    m_i = tl.full((BLOCK_M,), -float("inf"), tl.float32)  # running max, base 2
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running normaliser
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # unnormalised output
    n_full, hi = _key_range(start_m, N_Q, N_K, N_M, BLOCK_M, BLOCK_N,
                            CAUSAL, HAS_MASK)
    # -- phase 1, keys [0, n_full): every query sees every key, no mask code
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, 0, n_full, mask_ptr, stride_mq,
        N_Q, N_K, N_M, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D)
    # -- phase 2, keys [n_full, hi): the diagonal, the mask, the last block
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
        offs_m, offs_n, offs_d, n_full, hi, mask_ptr, stride_mq,
        N_Q, N_K, N_M, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D)
    # -- epilogue: O = acc / l, L = (m + log2 l) ln 2 (eq. 6);
    # a row that saw no key gives O = 0, L = -inf
    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2, -float("inf"))
    o_ptrs = o_ptr + offs_m[:, None] * stride_on + offs_d[None, :]
    _store(o_ptrs, acc / l_safe[:, None], q_ok)
    tl.store(lse_ptr + offs_m, lse, mask=offs_m < N_Q)


# ---------------------------------------------------------------------------- backward


@triton.jit
def _attn_bwd_preprocess(o_ptr, do_ptr, delta_ptr, stride_ob, stride_oh, stride_on,
                         stride_dob, stride_doh, stride_don, H, N_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """D_i = sum_c dO_ic O_ic (eq. 8), one program per (query block, batch x head)."""
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    o_ptr += b * stride_ob + h * stride_oh
    do_ptr += b * stride_dob + h * stride_doh
    delta_ptr += off_bh.to(tl.int64) * N_Q
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    o = _load(o_ptr + offs_m[:, None] * stride_on + offs_d[None, :], ok).to(tl.float32)
    do = _load(do_ptr + offs_m[:, None] * stride_don + offs_d[None, :], ok).to(tl.float32)
    tl.store(delta_ptr + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr,
                         stride_qn, stride_don, offs_m, offs_n, offs_d, offs_o,
                         lo, hi, mask_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
                         BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                         PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """Sweep query blocks [lo, hi) for one key block:
    dV += P^T dO, dK += dS^T Q (eqs. 8-10)."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < N_Q
        q_ok = _tile_mask(rows, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
        q = _load(q_ptr + rows[:, None] * stride_qn + offs_d[None, :], q_ok)
        do = _load(do_ptr + rows[:, None] * stride_don + offs_d[None, :], q_ok)
        # padding rows (q = dO = 0, L = D = 0) contribute exactly zero below
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0) * LOG2E
        delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
        # -- recompute P^T (BLOCK_N x BLOCK_M) from the log-sum-exp (eq. 10)
        qkT = _dot(k, tl.trans(q), None, PRECISION) * qk_scale
        if MASKED:
            # rows that see no key at all: L = -inf, every p is masked
            lse = tl.where(lse == -float("inf"), 0.0, lse)
            ok = _allowed(rows[None, :], offs_n[:, None], mask_ptr, stride_mq,
                          N_Q, N_K, N_M, CAUSAL, HAS_MASK)
            pT = tl.math.exp2(tl.where(ok, qkT - lse[None, :], -float("inf")))
        else:
            pT = tl.math.exp2(qkT - lse[None, :])
        if BLOCK_DO == BLOCK_D:
            q_o = q
            do_o = do
        else:  # this program owns only the columns offs_o of dK and dV
            o_ok = _tile_mask(rows, N_Q, offs_o, True, HEAD_DIM, BLOCK_D)
            q_o = _load(q_ptr + rows[:, None] * stride_qn + offs_o[None, :],
                        o_ok)
            do_o = _load(do_ptr + rows[:, None] * stride_don + offs_o[None, :],
                         o_ok)
        dv = _dot(pT.to(do.dtype), do_o, dv, PRECISION)
        # -- dS^T = P^T o (dP^T - D) (eq. 8)
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
    accumulators dK_j, dV_j (BLOCK_N x BLOCK_DO) stay on chip. A program writes BLOCK_DO
    of the head dim's columns (all of them up to d = 128; a part for d = 256, where the
    accumulators next to K_j and V_j would not fit in registers). dK, dV are allocated
    contiguous (B, H, Nk, d).
    """
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    # -- shift every pointer to this program's batch and head, once
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    do_ptr += b * stride_dob + h * stride_doh
    lse_ptr += off_bh.to(tl.int64) * N_Q
    delta_ptr += off_bh.to(tl.int64) * N_Q
    dk_ptr += off_bh.to(tl.int64) * N_K * HEAD_DIM
    dv_ptr += off_bh.to(tl.int64) * N_K * HEAD_DIM
    mask_ptr += b * stride_mb
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    # the columns of dK, dV this program writes
    offs_o = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    # -- K_j, V_j stay in registers for the whole sweep down the column
    kv_ok = _tile_mask(offs_n, N_K, offs_d, True, HEAD_DIM, BLOCK_D)
    k = _load(k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :], kv_ok)
    v = _load(v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :], kv_ok)
    dk = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DO), tl.float32)
    lo, m_full = _query_range(start_n, N_Q, N_K, N_M, BLOCK_M, BLOCK_N,
                              CAUSAL, HAS_MASK)
    # -- phase 1, queries [lo, m_full): on the diagonal or under the mask
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qn, stride_don,
        offs_m, offs_n, offs_d, offs_o, lo, m_full, mask_ptr, stride_mq,
        N_Q, N_K, N_M, qk_scale, BLOCK_M, True, CAUSAL, HAS_MASK, PRECISION,
        HEAD_DIM, BLOCK_D, BLOCK_DO)
    # -- phase 2, queries [m_full, Nq): each sees every key of the block
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, stride_qn, stride_don,
        offs_m, offs_n, offs_d, offs_o, m_full, N_Q, mask_ptr, stride_mq,
        N_Q, N_K, N_M, qk_scale, BLOCK_M, False, CAUSAL, HAS_MASK, PRECISION,
        HEAD_DIM, BLOCK_D, BLOCK_DO)
    out = offs_n[:, None] * HEAD_DIM + offs_o[None, :]
    out_ok = _tile_mask(offs_n, N_K, offs_o, True, HEAD_DIM, BLOCK_D)
    _store(dk_ptr + out, dk * sm_scale, out_ok)  # dK = s dS^T Q (eq. 9)
    _store(dv_ptr + out, dv, out_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, k_o_ptrs,
                       stride_kn, stride_vn, offs_m, offs_n, offs_d, offs_o,
                       lo, hi, mask_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
                       BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                       PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr):
    """Sweep key blocks [lo, hi) for one query block: dQ += dS K (eqs. 8-10)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kv_ok = _tile_mask(cols, N_K, offs_d, MASKED, HEAD_DIM, BLOCK_D)
        k = _load(k_ptrs + start_n * stride_kn, kv_ok)
        v = _load(v_ptrs + start_n * stride_vn, kv_ok)
        # -- recompute P from the log-sum-exp (eq. 10)
        qk = _dot(q, tl.trans(k), None, PRECISION) * qk_scale
        if MASKED:
            ok = _allowed(offs_m[:, None], cols[None, :], mask_ptr, stride_mq,
                          N_Q, N_K, N_M, CAUSAL, HAS_MASK)
            p = tl.math.exp2(tl.where(ok, qk - lse[:, None], -float("inf")))
        else:
            p = tl.math.exp2(qk - lse[:, None])
        # -- dS = P o (dP - D) (eq. 8)
        dp = _dot(do, tl.trans(v), None, PRECISION)
        ds = p * (dp - delta[:, None])
        if BLOCK_DO == BLOCK_D:
            k_o = k
        else:  # this program owns only the columns offs_o of dQ
            k_o = _load(k_o_ptrs + start_n * stride_kn,
                        _tile_mask(cols, N_K, offs_o, MASKED, HEAD_DIM, BLOCK_D))
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
    (eqs. 8-10); a program writes BLOCK_DO columns of dQ, allocated contiguous."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    b = (off_bh // H).to(tl.int64)
    h = (off_bh % H).to(tl.int64)
    # -- shift every pointer to this program's batch and head, once
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    do_ptr += b * stride_dob + h * stride_doh
    lse_ptr += off_bh.to(tl.int64) * N_Q
    delta_ptr += off_bh.to(tl.int64) * N_Q
    dq_ptr += off_bh.to(tl.int64) * N_Q * HEAD_DIM
    mask_ptr += b * stride_mb
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_o = tl.program_id(2) * BLOCK_DO + tl.arange(0, BLOCK_DO)  # columns of dQ
    q_ok = _tile_mask(offs_m, N_Q, offs_d, True, HEAD_DIM, BLOCK_D)
    q = _load(q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :], q_ok)
    do = _load(do_ptr + offs_m[:, None] * stride_don + offs_d[None, :], q_ok)
    lse = tl.load(lse_ptr + offs_m, mask=offs_m < N_Q, other=0.0) * LOG2E
    lse = tl.where(lse == -float("inf"), 0.0, lse)  # rows that see no key: every p is masked
    delta = tl.load(delta_ptr + offs_m, mask=offs_m < N_Q, other=0.0)
    k_ptrs = k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :]
    k_o_ptrs = k_ptr + offs_n[:, None] * stride_kn + offs_o[None, :]
    dq = tl.zeros((BLOCK_M, BLOCK_DO), tl.float32)
    n_full, hi = _key_range(start_m, N_Q, N_K, N_M, BLOCK_M, BLOCK_N, CAUSAL, HAS_MASK)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, k_o_ptrs, stride_kn, stride_vn, offs_m, offs_n,
        offs_d, offs_o, 0, n_full, mask_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, False, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, k_o_ptrs, stride_kn, stride_vn, offs_m, offs_n,
        offs_d, offs_o, n_full, hi, mask_ptr, stride_mq, N_Q, N_K, N_M, qk_scale,
        BLOCK_N, True, CAUSAL, HAS_MASK, PRECISION, HEAD_DIM, BLOCK_D, BLOCK_DO)
    out = offs_m[:, None] * HEAD_DIM + offs_o[None, :]
    _store(dq_ptr + out, dq * sm_scale, _tile_mask(offs_m, N_Q, offs_o, True, HEAD_DIM, BLOCK_D))
