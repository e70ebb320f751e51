"""The IO model of attention: forward and backward passes that count their memory
traffic, the tiles the kernels visit, and the bytes of standard and flash attention.

Chapter 7 (equation numbers refer to it); Dao, Fu, Ermon, Rudra & Ré (2022), Section 3.2,
Appendix B and Theorems 2 and 5. Four functions run attention in plain PyTorch and count
every load and store as it happens: :func:`attention_standard` and
:func:`attention_standard_backward` are Algorithms 0 and 3 of the paper (the N x N
matrices written to and read from main memory), :func:`attention_tiled` and
:func:`attention_tiled_backward` are the loops of this library's Triton kernels.
:func:`standard_attention_io`, :func:`standard_attention_backward_io`,
:func:`flash_attention_io` and :func:`flash_attention_backward_io` are the formulas those
counts obey, and :func:`tile_plan` shows which tiles each kernel visits, computed by the
kernels' own rules (:func:`lib.attention_kernels._key_range`,
:func:`lib.attention_kernels._query_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .attention import _check_inputs
from .attention_kernels import _key_range, _keys_end, _query_range, on_host
from .validate import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_positive_int,
    check_same,
    check_tensor,
)

_key_range_on_host = on_host(_key_range)  # the kernel's tile rule, as plain Python
_keys_end_on_host = on_host(_keys_end)  # the kernel's causal rule, as plain Python
_query_range_on_host = on_host(_query_range)  # the dK, dV kernel's tile rule


@dataclass
class AttentionTraffic:
    """Bytes read from and written to main memory (HBM on a GPU), per tensor.

    ``reads`` and ``writes`` sum the bytes per tensor name; ``events`` lists every load
    and store in order as ``(kind, name, bytes)``.
    """

    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, str, int]] = field(default_factory=list)

    def read(self, name: str, t: torch.Tensor) -> torch.Tensor:
        nbytes = t.numel() * t.element_size()
        self.reads[name] = self.reads.get(name, 0) + nbytes
        self.events.append(("read", name, nbytes))
        return t

    def write(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        self.writes[name] = self.writes.get(name, 0) + nbytes
        self.events.append(("write", name, nbytes))

    @property
    def total(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    def by_tensor(self) -> list[tuple[str, str, int]]:
        """``(kind, name, bytes)`` summed per kind and tensor, in the order first touched."""
        totals: dict[tuple[str, str], int] = {}
        for kind, name, nbytes in self.events:
            totals[kind, name] = totals.get((kind, name), 0) + nbytes
        return [(kind, name, nbytes) for (kind, name), nbytes in totals.items()]


def attention_standard(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       scale: float | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, AttentionTraffic]:
    """Standard attention as Algorithm 0 of Dao et al. (2022) runs it, counting its traffic.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d). Three steps meet in main memory: read Q, K and
    write S = s Q K^T; read S and write P = softmax(S); read P, V and write O (eq. 2).
    S and P are stored in q's dtype, as a standard implementation in that dtype stores
    them; each step computes in fp32. Returns (O, P, traffic): O (B, H, Nq, d) and
    P (B, H, Nq, Nk) in q's dtype (P is what the standard backward reads).
    """
    scale, _ = _check_inputs(q, k, v, False, scale, None)
    traffic = AttentionTraffic()
    f = torch.float32  # the arithmetic, as in the kernels
    q32, k32 = traffic.read("q", q).to(f), traffic.read("k", k).to(f)
    s = (scale * (q32 @ k32.transpose(-2, -1))).to(q.dtype)  # (B, H, Nq, Nk)
    traffic.write("S", s)
    p = torch.softmax(traffic.read("S", s).to(f), dim=-1).to(q.dtype)
    traffic.write("P", p)
    out = (traffic.read("P", p).to(f) @ traffic.read("v", v).to(f)).to(q.dtype)
    traffic.write("o", out)
    return out, p, traffic


def attention_standard_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: torch.Tensor,
    do: torch.Tensor, scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionTraffic]:
    """The backward of standard attention as Algorithm 3 of Dao et al. (2022) runs it.

    q, do: (B, H, Nq, d); k, v: (B, H, Nk, d); p: the (B, H, Nq, Nk) probabilities that
    :func:`attention_standard` stored. Five steps, each through main memory: dV = P^T dO;
    dP = dO V^T; dS = P o (dP - rowsum(P o dP)) (eq. 8); dQ = s dS K; dK = s dS^T Q
    (eq. 9). dP and dS are stored in q's dtype; each step computes in fp32. Returns
    (dQ, dK, dV, traffic), the gradients in q's dtype; the traffic obeys eq. 13.
    """
    scale, _ = _check_inputs(q, k, v, False, scale, None)
    n_k = k.shape[-2]
    check_tensor(p, "p", ndim=4)
    if p.shape != (*q.shape[:-1], n_k):
        raise ValueError(f"p must have shape (B, H, Nq, Nk) = {(*q.shape[:-1], n_k)}, "
                         f"got {tuple(p.shape)}")
    _check_like(do, q, "do", "q")
    check_same("dtype", q=q, p=p, do=do)
    check_same("device", q=q, p=p, do=do)
    t = AttentionTraffic()
    f = torch.float32  # the arithmetic, as in the kernels
    dv = (t.read("P", p).to(f).transpose(-2, -1) @ t.read("do", do).to(f)).to(q.dtype)
    t.write("dv", dv)
    dp = (t.read("do", do).to(f) @ t.read("v", v).to(f).transpose(-2, -1)).to(q.dtype)
    t.write("dP", dp)
    p32, dp32 = t.read("P", p).to(f), t.read("dP", dp).to(f)
    ds = (p32 * (dp32 - (p32 * dp32).sum(-1, keepdim=True))).to(q.dtype)
    t.write("dS", ds)
    dq = (scale * (t.read("dS", ds).to(f) @ t.read("k", k).to(f))).to(q.dtype)
    t.write("dq", dq)
    dk = (scale * (t.read("dS", ds).to(f).transpose(-2, -1) @ t.read("q", q).to(f)))
    dk = dk.to(q.dtype)
    t.write("dk", dk)
    return dq, dk, dv, t


def _check_like(t, like: torch.Tensor, name: str, like_name: str) -> None:
    """t must be a tensor of ``like``'s shape (an output or its gradient)."""
    check_tensor(t, name)
    if t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, "
                         f"got {tuple(t.shape)}")


def _check_loops(block_m, block_n, on_tile) -> None:
    """The block sizes of a tiled loop (positive ints) and its optional callback."""
    check_positive_int(block_m, "block_m")
    check_positive_int(block_n, "block_n")
    if on_tile is not None:
        check_callable(on_tile, "on_tile")


def _masked_scores(q_i, k_j, scale: float, q0: int, k0: int, n_q: int, n_k: int,
                   causal: bool) -> torch.Tensor:
    """S = scale Q_i K_j^T of the tile whose first query is q0 and first key k0, with the
    keys a causal (bottom-right) query may not see set to -inf, by the kernels' rule."""
    s = scale * (q_i @ k_j.transpose(-2, -1))  # (B, H, bm, bn)
    if causal:
        rows = torch.arange(q0, q0 + q_i.shape[-2], device=q_i.device)
        cols = torch.arange(k0, k0 + k_j.shape[-2], device=q_i.device)
        hidden = cols[None, :] >= _keys_end_on_host(rows[:, None], n_q, n_k)
        s = s.masked_fill(hidden, -math.inf)
    return s


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
    diagonal are skipped and the diagonal tiles masked, by the kernel's own rules. Only
    small (B, H, block_m, block_n) score tiles ever exist: the extra memory is
    O(B H block_m (block_n + d)), not O(B H Nq Nk).

    on_tile: optional callback ``on_tile(i, j, m, l, traffic)`` after each tile, with the
    block indices, the running state m, l (B, H, block_m) fp32 and the traffic so far.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None)
    _check_loops(block_m, block_n, on_tile)
    n_q, n_k = q.shape[-2], k.shape[-2]
    traffic = AttentionTraffic()
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    for i, q0 in enumerate(range(0, n_q, block_m)):
        q_i = traffic.read("q", q[..., q0 : q0 + block_m, :]).float()
        m = torch.full(q_i.shape[:-1], -math.inf, device=q.device)  # (B, H, bm)
        l = torch.zeros_like(m)
        acc = torch.zeros_like(q_i)  # (B, H, bm, d), unnormalised output
        _, hi = _key_range_on_host(q0, n_q, n_k, 0, block_m, block_n, causal, False)
        for j, k0 in enumerate(range(0, hi, block_n)):
            k_j = traffic.read("k", k[..., k0 : k0 + block_n, :]).float()
            v_j = traffic.read("v", v[..., k0 : k0 + block_n, :]).float()
            s = _masked_scores(q_i, k_j, scale, q0, k0, n_q, n_k, causal)  # one tile
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


def attention_tiled_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, do: torch.Tensor, causal: bool = False,
    scale: float | None = None, block_m: int = 64, block_n: int = 64,
    on_tile=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionTraffic]:
    """FlashAttention's backward in plain PyTorch, in the loops of the Triton kernels.

    q, out, do: (B, H, Nq, d); k, v: (B, H, Nk, d); lse: (B, H, Nq) fp32, the L that
    :func:`attention_tiled` or the forward kernel saved. Three passes, as the kernels run:
    D = rowsum(dO o O) (eq. 8); for each key block j (read once), sweep the query blocks
    that see it, recomputing P = exp(S - L) (eq. 10), and accumulate dV_j = P^T dO and
    dK_j = s dS^T Q (eq. 9); for each query block i (read once), sweep its key blocks and
    accumulate dQ_i = s dS K. Causal tiles are chosen and masked by the kernels' rules
    (:func:`tile_plan` with ``kind="dkdv"`` and ``"dq"``). Returns (dQ, dK, dV, traffic),
    the gradients in q's dtype; without a mask the traffic obeys eq. 14.

    on_tile: optional callback ``on_tile(kind, i, j)`` for each tile, kind ``"dkdv"``
    or ``"dq"``, i and j the query and key block indices.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None)
    _check_like(out, q, "out", "q")
    _check_like(do, q, "do", "q")
    check_tensor(lse, "lse", dtypes=(torch.float32,))
    if lse.shape != q.shape[:-1]:
        raise ValueError(f"lse must have shape (B, H, Nq) = {tuple(q.shape[:-1])}, "
                         f"got {tuple(lse.shape)}")
    check_same("dtype", q=q, out=out, do=do)
    check_same("device", q=q, out=out, do=do, lse=lse)
    _check_loops(block_m, block_n, on_tile)
    n_q, n_k = q.shape[-2], k.shape[-2]
    t = AttentionTraffic()
    f = torch.float32  # the arithmetic, as in the kernels
    delta = torch.empty(lse.shape, dtype=f, device=q.device)  # D (B, H, Nq)
    for q0 in range(0, n_q, block_m):  # the small kernel: D = rowsum(dO o O)
        rows = slice(q0, q0 + block_m)
        o_i, do_i = t.read("o", out[..., rows, :]), t.read("do", do[..., rows, :])
        delta[..., rows] = (o_i.to(f) * do_i.to(f)).sum(-1)
        t.write("D", delta[..., rows])
    lse0 = torch.where(lse == -math.inf, 0.0, lse)  # rows that see no key: every p is 0

    def probs(q0, k0, q_i, k_j, lse_i):
        """P = exp(S - L) of one (query block, key block) tile (eq. 10), masked."""
        s = _masked_scores(q_i, k_j, scale, q0, k0, n_q, n_k, causal)
        return torch.exp(s - lse_i[..., None])

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for j, k0 in enumerate(range(0, n_k, block_n)):  # the dK, dV kernel: a key block
        cols = slice(k0, k0 + block_n)
        k_j, v_j = t.read("k", k[..., cols, :]).to(f), t.read("v", v[..., cols, :]).to(f)
        dk_j, dv_j = torch.zeros_like(k_j), torch.zeros_like(v_j)
        lo, _ = _query_range_on_host(k0, n_q, n_k, 0, block_m, block_n, causal, False)
        for q0 in range(lo, n_q, block_m):  # ... sweeps down its column
            rows = slice(q0, q0 + block_m)
            q_i, do_i = t.read("q", q[..., rows, :]).to(f), t.read("do", do[..., rows, :]).to(f)
            lse_i = t.read("lse", lse0[..., rows])
            delta_i = t.read("D", delta[..., rows])
            p = probs(q0, k0, q_i, k_j, lse_i)
            dv_j += p.transpose(-2, -1) @ do_i
            ds = p * (do_i @ v_j.transpose(-2, -1) - delta_i[..., None])  # eq. 8
            dk_j += ds.transpose(-2, -1) @ q_i
            if on_tile is not None:
                on_tile("dkdv", q0 // block_m, j)
        dk[..., cols, :], dv[..., cols, :] = (scale * dk_j).to(k.dtype), dv_j.to(v.dtype)
        t.write("dk", dk[..., cols, :])
        t.write("dv", dv[..., cols, :])
    for i, q0 in enumerate(range(0, n_q, block_m)):  # the dQ kernel: a query block
        rows = slice(q0, q0 + block_m)
        q_i, do_i = t.read("q", q[..., rows, :]).to(f), t.read("do", do[..., rows, :]).to(f)
        lse_i, delta_i = t.read("lse", lse0[..., rows]), t.read("D", delta[..., rows])
        dq_i = torch.zeros_like(q_i)
        _, hi = _key_range_on_host(q0, n_q, n_k, 0, block_m, block_n, causal, False)
        for k0 in range(0, hi, block_n):  # ... sweeps along its row
            cols = slice(k0, k0 + block_n)
            k_j, v_j = t.read("k", k[..., cols, :]).to(f), t.read("v", v[..., cols, :]).to(f)
            p = probs(q0, k0, q_i, k_j, lse_i)
            ds = p * (do_i @ v_j.transpose(-2, -1) - delta_i[..., None])
            dq_i += ds @ k_j
            if on_tile is not None:
                on_tile("dq", i, k0 // block_n)
        dq[..., rows, :] = (scale * dq_i).to(q.dtype)
        t.write("dq", dq[..., rows, :])
    return dq, dk, dv, t


def tile_plan(n_q: int, n_k: int, block_m: int, block_n: int, causal: bool = False,
              n_mask: int = 0, kind: str = "fwd") -> torch.Tensor:
    """Which tiles a kernel visits, and which of them it masks.

    Returns an int8 tensor (ceil(Nq / block_m), ceil(Nk / block_n)), rows = query blocks,
    columns = key blocks: 0 = never visited (above the causal diagonal), 1 = visited
    without any masking (every query of the block sees every key of the tile),
    2 = visited with masking (on the causal diagonal, under an explicit mask on the last
    ``n_mask`` keys, or holding padding keys past Nk). kind: ``"fwd"`` and ``"dq"`` (one
    program per query block sweeping along its row, :func:`lib.attention_kernels._key_range`)
    or ``"dkdv"`` (one program per key block sweeping down its column,
    :func:`lib.attention_kernels._query_range`), run on the host; :func:`attention_tiled`
    and :func:`attention_tiled_backward` visit the same tiles.
    """
    for name, value in (("n_q", n_q), ("n_k", n_k), ("block_m", block_m),
                        ("block_n", block_n)):
        check_positive_int(value, name)
    check_bool(causal, "causal")
    check_int(n_mask, "n_mask", minimum=0, maximum=n_k)
    check_choice(kind, "kind", ("fwd", "dq", "dkdv"))
    plan = torch.zeros(math.ceil(n_q / block_m), math.ceil(n_k / block_n), dtype=torch.int8)
    if kind == "dkdv":
        for j in range(plan.shape[1]):
            lo, m_full = _query_range_on_host(j * block_n, n_q, n_k, n_mask, block_m,
                                              block_n, causal, n_mask > 0)
            for i in range(plan.shape[0]):
                plan[i, j] = 0 if i * block_m < lo else 2 if i * block_m < m_full else 1
        return plan
    for i in range(plan.shape[0]):
        n_full, hi = _key_range_on_host(i * block_m, n_q, n_k, n_mask, block_m, block_n,
                                        causal, n_mask > 0)
        for j in range(plan.shape[1]):
            plan[i, j] = 1 if j * block_n < n_full else 2 if j * block_n < hi else 0
    return plan


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        check_positive_int(value, name)


def standard_attention_io(n: int, d: int, itemsize: int = 2) -> int:
    """HBM bytes of standard attention (Algorithm 0 of Dao et al. 2022), per head: eq. 2.

    Read Q, K (2Nd), write S (N^2); read S, write P (2N^2); read P, V, write O
    (N^2 + 2Nd): 4Nd + 4N^2 elements, Theta(Nd + N^2).
    """
    _check_sizes(n=n, d=d, itemsize=itemsize)
    return (4 * n * d + 4 * n * n) * itemsize


def flash_attention_io(n: int, d: int, block_m: int, itemsize: int = 2) -> int:
    """HBM bytes of the tiled forward, per head, exactly as :func:`attention_tiled` counts.

    Q read once and O written once (2Nd), K and V read once per query block
    (2 ceil(N / block_m) N d), plus the fp32 log-sum-exp (4N bytes): eq. 11.
    """
    _check_sizes(n=n, d=d, block_m=block_m, itemsize=itemsize)
    return (2 * n * d + 2 * math.ceil(n / block_m) * n * d) * itemsize + 4 * n


def standard_attention_backward_io(n: int, d: int, itemsize: int = 2) -> int:
    """HBM bytes of standard attention's backward (Algorithm 3 of Dao et al. 2022), per
    head, as :func:`attention_standard_backward` counts: eq. 13.

    dV = P^T dO reads P, dO and writes dV (N^2 + 2Nd); dP = dO V^T reads dO, V and writes
    dP (2Nd + N^2); dS reads P, dP and writes dS (3N^2); dQ = dS K and dK = dS^T Q each
    read dS and an N x d input and write an N x d gradient (2N^2 + 4Nd):
    8Nd + 7N^2 elements.
    """
    _check_sizes(n=n, d=d, itemsize=itemsize)
    return (8 * n * d + 7 * n * n) * itemsize


def flash_attention_backward_io(n: int, d: int, block_m: int, block_n: int,
                                itemsize: int = 2) -> int:
    """HBM bytes of the tiled backward without a mask, per head, exactly as
    :func:`attention_tiled_backward` counts (and the kernels load and store): eq. 14.

    With T_r = ceil(N / block_m) query blocks and T_c = ceil(N / block_n) key blocks:
    D reads O, dO and writes D (2Nd + N fp32); the dK, dV kernel reads K, V once, Q, dO
    (and L, D in fp32) once per key block, and writes dK, dV (4Nd + T_c (2Nd + 2N fp32));
    the dQ kernel reads Q, dO, L, D once, K, V once per query block, and writes dQ
    (3Nd + 2N fp32 + 2 T_r Nd). In all: (9 + 2 T_c + 2 T_r) Nd elements of the inputs'
    dtype and (3 + 2 T_c) N in fp32.
    """
    _check_sizes(n=n, d=d, block_m=block_m, block_n=block_n, itemsize=itemsize)
    t_r, t_c = math.ceil(n / block_m), math.ceil(n / block_n)
    return (9 + 2 * t_c + 2 * t_r) * n * d * itemsize + 4 * (3 + 2 * t_c) * n


def sram_block(sram_bytes: int, d: int, itemsize: int = 2) -> int:
    """The block of the outer loop that fills an SRAM of M = sram_bytes / itemsize
    elements: floor(M / 4d).

    Four block x d tiles share the SRAM: the outer loop's block of one input and its
    partner (Q_i and the accumulator O_i, or K_j and V_j), and the inner loop's two.
    Algorithm 1 of Dao et al. (2022) loops over key blocks outside and sets
    B_c = ceil(M / 4d), B_r = min(ceil(M / 4d), d); our kernels loop over query blocks
    outside (FlashAttention-2's order), so this is the query block B_r that
    :func:`flash_attention_io` takes, with which it is 2Nd + 8 N^2 d^2 / M elements,
    Theta(N^2 d^2 / M) (eq. 12). (The floor keeps the four tiles within M.)
    """
    _check_sizes(sram_bytes=sram_bytes, d=d, itemsize=itemsize)
    return max(1, sram_bytes // itemsize // (4 * d))
