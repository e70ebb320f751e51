"""FlashAttention as the 2022 paper writes it: Algorithms 1 and 4 of Dao, Fu, Ermon,
Rudra & Ré (2022), keys and values in the outer loop, run in plain PyTorch and counting
every load and store, with the formulas those counts obey.

Chapter 7 (section "From FlashAttention to FlashAttention-2" and the GPT-2 comparison).
:func:`attention_fa1` is Algorithm 1 (the forward): for each key block K_j, V_j (read
once), sweep every query block and keep the running output O_i and statistics l_i, m_i
in main memory (HBM on a GPU), reading and writing them back at every inner step.
:func:`attention_fa1_backward` is Algorithm 4 without dropout: for each key block,
accumulate dK_j, dV_j on chip while dQ_i is read and written in HBM at every inner step.
The loops of this library's kernels (FlashAttention-2's order, queries outside) are in
:mod:`lib.attention_io`; both count through the same :class:`AttentionTraffic`.

Dtypes: O, dQ, dK, dV live in HBM in q's dtype, as the algorithm's N x d matrices;
l and m, and all arithmetic, in fp32 (fp64 for fp64 inputs), so a statistic takes
max(itemsize, 4) bytes. Line numbers in the docstrings are those of the paper's
Algorithms 1 and 4 (arXiv 2205.14135, Section 3.1 and Appendix B.4).
"""

from __future__ import annotations

import math

import torch

from .attention import _check_inputs
from .attention_io import (
    AttentionTraffic,
    _check_like,
    _check_loops,
    _check_sizes,
    _masked_scores,
)
from .validate import check_bool, check_same, check_tensor


def _arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16, bf16 and fp32 inputs, fp64 for fp64: the dtype of l, m and the sums."""
    return torch.promote_types(dtype, torch.float32)


def attention_fa1(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
    on_tile=None,
    return_stats: bool = False,
) -> tuple:
    """Algorithm 1 of Dao et al. (2022) in plain PyTorch, counting its HBM traffic.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); block_m = B_r query rows, block_n = B_c key
    rows per tile. Returns (O, traffic), or (O, l, m, traffic) with ``return_stats``:
    O (B, H, Nq, d) in q's dtype, l and m (B, H, Nq) the softmax normaliser and row max
    that Algorithm 4 reads. Counted, line by line: line 2 writes O = 0, l = 0,
    m = -inf to HBM; line 6 reads K_j, V_j once per key block; line 8 reads
    Q_i, O_i, l_i, m_i and lines 12-13 write O_i, l_i, m_i back at every (j, i) step.
    Lines 9-11 are eqs. 3-5 of the chapter in Algorithm 1's form: O_i is kept
    normalised, rescaled by l_i e^{m_i - m_new} / l_new at each step. ``causal`` masks
    every tile as Algorithm 2 (line 11) does, bottom-right as in the library; no tile is
    skipped, so the traffic is the same as without the mask. Without a mask the traffic
    obeys :func:`fa1_attention_io`.

    on_tile: optional callback ``on_tile(i, j, m, l, traffic)`` after each step, with
    the query and key block indices, m_i and l_i after the step and the traffic so far.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None, kernel_limits=False)
    _check_loops(block_m, block_n, on_tile)
    check_bool(return_stats, "return_stats")
    n_q, n_k = q.shape[-2], k.shape[-2]
    f = _arithmetic_dtype(q.dtype)
    t = AttentionTraffic()
    out = torch.zeros_like(q)  # line 2: O = 0, l = 0, m = -inf, initialised in HBM
    l = torch.zeros(q.shape[:-1], dtype=f, device=q.device)
    m = torch.full(q.shape[:-1], -math.inf, dtype=f, device=q.device)
    t.write("o", out)
    t.write("l", l)
    t.write("m", m)
    for j, k0 in enumerate(range(0, n_k, block_n)):  # line 5: key blocks outside
        k_j = t.read("k", k[..., k0 : k0 + block_n, :]).to(f)  # line 6
        v_j = t.read("v", v[..., k0 : k0 + block_n, :]).to(f)
        for i, q0 in enumerate(range(0, n_q, block_m)):  # line 7: query blocks inside
            rows = slice(q0, q0 + block_m)
            q_i = t.read("q", q[..., rows, :]).to(f)  # line 8: the state comes from HBM
            o_i = t.read("o", out[..., rows, :]).to(f)
            l_i, m_i = t.read("l", l[..., rows]), t.read("m", m[..., rows])
            s = _masked_scores(q_i, k_j, scale, q0, k0, n_q, n_k, causal)  # line 9, masked
            m_tile = s.amax(-1)  # line 10: m~_ij, P~_ij, l~_ij of this tile alone
            seen = m_tile > -math.inf  # rows with at least one visible key in the tile
            p = torch.exp(s - torch.where(seen, m_tile, 0.0)[..., None])
            l_tile = p.sum(-1)
            m_new = torch.maximum(m_i, m_tile)  # line 11
            m_ref = torch.where(m_new > -math.inf, m_new, 0.0)  # no key seen yet: 0
            alpha = torch.exp(m_i - m_ref)  # e^{m_i - m_new}; 0 while m_i = -inf
            beta = torch.where(seen, torch.exp(m_tile - m_ref), 0.0)  # e^{m~ - m_new}
            l_new = alpha * l_i + beta * l_tile
            o_new = (l_i * alpha)[..., None] * o_i + beta[..., None] * (p @ v_j)
            o_new = o_new / torch.where(l_new > 0, l_new, 1.0)[..., None]  # line 12
            out[..., rows, :] = o_new.to(q.dtype)
            l[..., rows], m[..., rows] = l_new, m_new
            t.write("o", out[..., rows, :])
            t.write("l", l[..., rows])  # line 13
            t.write("m", m[..., rows])
            if on_tile is not None:
                on_tile(i, j, m_new, l_new, t)
    return (out, l, m, t) if return_stats else (out, t)


def attention_fa1_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    l: torch.Tensor, m: torch.Tensor, do: torch.Tensor, causal: bool = False,
    scale: float | None = None, block_m: int = 64, block_n: int = 64, on_tile=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionTraffic]:
    """Algorithm 4 of Dao et al. (2022) without dropout, counting its HBM traffic.

    q, out, do: (B, H, Nq, d); k, v: (B, H, Nk, d); l, m: (B, H, Nq), the statistics
    that :func:`attention_fa1` returns with ``return_stats`` (fp32, fp64 for fp64
    inputs). Counted, line by line: line 5 writes dQ = dK = dV = 0 to HBM; line 7 reads
    K_j, V_j once per key block; line 10 reads Q_i, O_i, dO_i, dQ_i, l_i, m_i at every
    (j, i) step and line 21 writes dQ_i back; line 24 writes dK_j, dV_j, accumulated on
    chip (lines 8, 16, 22), once. On chip: P = diag(l)^-1 e^{S - m} (line 13, eq. 10
    with L = m + log l), dV_j += P^T dO_i (16), dP = dO_i V_j^T (17),
    D_i = rowsum(dO_i o O_i) recomputed at every step (19), dS = P o (dP - D_i) (20,
    eq. 8), dQ_i += s dS K_j (21) and dK_j += s dS^T Q_i (22, eq. 9). Lines 14, 15 and
    18 (dropout) are left out. ``causal`` masks every tile (line 12), skipping none.
    Returns (dQ, dK, dV, traffic) in q's dtype; the traffic obeys
    :func:`fa1_attention_backward_io`.

    on_tile: optional callback ``on_tile(i, j)`` after each step, i and j the query and
    key block indices.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None, kernel_limits=False)
    _check_like(out, q, "out", "q")
    _check_like(do, q, "do", "q")
    f = _arithmetic_dtype(q.dtype)
    for name, stat in (("l", l), ("m", m)):
        check_tensor(stat, name, dtypes=(f,))
        if stat.shape != q.shape[:-1]:
            raise ValueError(f"{name} must have shape (B, H, Nq) = {tuple(q.shape[:-1])}, "
                             f"got {tuple(stat.shape)}")
    check_same("dtype", q=q, out=out, do=do)
    check_same("device", q=q, out=out, do=do, l=l, m=m)
    _check_loops(block_m, block_n, on_tile)
    n_q, n_k = q.shape[-2], k.shape[-2]
    t = AttentionTraffic()
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)  # line 5
    for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
        t.write(name, grad)
    for j, k0 in enumerate(range(0, n_k, block_n)):  # line 6: key blocks outside
        cols = slice(k0, k0 + block_n)
        k_j, v_j = t.read("k", k[..., cols, :]).to(f), t.read("v", v[..., cols, :]).to(f)
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)  # line 8, on chip
        for i, q0 in enumerate(range(0, n_q, block_m)):  # line 9: query blocks inside
            rows = slice(q0, q0 + block_m)
            q_i, o_i = t.read("q", q[..., rows, :]).to(f), t.read("o", out[..., rows, :])
            do_i, dq_i = t.read("do", do[..., rows, :]).to(f), t.read("dq", dq[..., rows, :])
            l_i, m_i = t.read("l", l[..., rows]), t.read("m", m[..., rows])  # line 10
            s = _masked_scores(q_i, k_j, scale, q0, k0, n_q, n_k, causal)  # lines 11-12
            m_ref = torch.where(m_i > -math.inf, m_i, 0.0)  # a row that sees no key
            p = torch.exp(s - m_ref[..., None]) / torch.where(l_i > 0, l_i, 1.0)[..., None]
            dv_j += p.transpose(-2, -1) @ do_i  # line 16
            dp = do_i @ v_j.transpose(-2, -1)  # line 17
            d_i = (do_i * o_i.to(f)).sum(-1)  # line 19: D_i, recomputed at every step
            ds = p * (dp - d_i[..., None])  # line 20
            dq[..., rows, :] = (dq_i.to(f) + scale * (ds @ k_j)).to(q.dtype)
            t.write("dq", dq[..., rows, :])  # line 21
            dk_j += scale * (ds.transpose(-2, -1) @ q_i)  # line 22
            if on_tile is not None:
                on_tile(i, j)
        dk[..., cols, :], dv[..., cols, :] = dk_j.to(k.dtype), dv_j.to(v.dtype)
        t.write("dk", dk[..., cols, :])  # line 24
        t.write("dv", dv[..., cols, :])
    return dq, dk, dv, t


def fa1_attention_io(n: int, d: int, block_n: int, itemsize: int = 2) -> int:
    """HBM bytes of Algorithm 1, per head, exactly as :func:`attention_fa1` counts them:
    eq. 13 of the chapter, first line.

    With T_c = ceil(N / block_n) key blocks and s = max(itemsize, 4) bytes per statistic:
    line 2 writes O (Nd) and l, m (2N s); line 6 reads K, V once (2Nd); for each key
    block, line 8 reads all of Q, O and l, m (2Nd + 2N s) and lines 12-13 write O, l, m
    (Nd + 2N s). In all (3 + 3 T_c) N d elements and (2 + 4 T_c) N statistics. The query
    block B_r does not appear: every inner sweep covers all N queries once.
    """
    _check_sizes(n=n, d=d, block_n=block_n, itemsize=itemsize)
    t_c, stat = math.ceil(n / block_n), max(itemsize, 4)
    return (3 + 3 * t_c) * n * d * itemsize + (2 + 4 * t_c) * n * stat


def fa1_attention_backward_io(n: int, d: int, block_n: int, itemsize: int = 2) -> int:
    """HBM bytes of Algorithm 4 (no dropout), per head, exactly as
    :func:`attention_fa1_backward` counts them: eq. 13 of the chapter, second line.

    With T_c = ceil(N / block_n) and s = max(itemsize, 4): line 5 writes dQ, dK, dV
    (3Nd); line 7 reads K, V once (2Nd); for each key block, line 10 reads all of Q, O,
    dO, dQ and l, m (4Nd + 2N s) and line 21 writes dQ (Nd); line 24 writes dK, dV
    (2Nd). In all (7 + 5 T_c) N d elements and 2 T_c N statistics.
    """
    _check_sizes(n=n, d=d, block_n=block_n, itemsize=itemsize)
    t_c, stat = math.ceil(n / block_n), max(itemsize, 4)
    return (7 + 5 * t_c) * n * d * itemsize + 2 * t_c * n * stat
