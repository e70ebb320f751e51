"""The IO model of attention: a tiled forward that counts its memory traffic, the tiles
the kernel visits, and the bytes of standard and flash attention.

Chapter 7 (equation numbers refer to it); Dao, Fu, Ermon, Rudra & Ré (2022), Section 3.2
and Theorem 2. :func:`attention_tiled` is FlashAttention's forward written in PyTorch,
one tile at a time, with every load and store counted; :func:`flash_attention_io` is
the formula those counts obey, :func:`standard_attention_io` the one of standard
attention, and :func:`tile_plan` shows which tiles the Triton kernel visits, computed
by the kernel's own rule (:func:`lib.attention_kernels._key_range`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .attention import _check_inputs
from .attention_kernels import _key_range, _keys_end, on_host
from .validate import check_bool, check_callable, check_int, check_positive_int

_key_range_on_host = on_host(_key_range)  # the kernel's tile rule, as plain Python
_keys_end_on_host = on_host(_keys_end)  # the kernel's causal rule, as plain Python


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
    diagonal are skipped and the diagonal tiles masked, by the kernel's own rules. Only
    small (B, H, block_m, block_n) score tiles ever exist: the extra memory is
    O(B H block_m (block_n + d)), not O(B H Nq Nk).

    on_tile: optional callback ``on_tile(i, j, m, l, traffic)`` after each tile, with the
    block indices, the running state m, l (B, H, block_m) fp32 and the traffic so far.
    """
    scale, _ = _check_inputs(q, k, v, causal, scale, None)
    check_positive_int(block_m, "block_m")
    check_positive_int(block_n, "block_n")
    if on_tile is not None:
        check_callable(on_tile, "on_tile")
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
        _, hi = _key_range_on_host(q0, n_q, n_k, 0, block_m, block_n, causal, False)
        for j, k0 in enumerate(range(0, hi, block_n)):
            k_j = traffic.read("k", k[..., k0 : k0 + block_n, :]).float()
            v_j = traffic.read("v", v[..., k0 : k0 + block_n, :]).float()
            s = scale * (q_i @ k_j.transpose(-2, -1))  # (B, H, bm, bn): one score tile
            if causal:
                cols = torch.arange(k0, k0 + k_j.shape[-2], device=q.device)
                hidden = cols[None, :] >= _keys_end_on_host(rows[:, None], n_q, n_k)
                s = s.masked_fill(hidden, -math.inf)
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
    explicit mask on the last ``n_mask`` keys, or holding padding keys past Nk). It runs
    the kernel's own rule, :func:`lib.attention_kernels._key_range`, on the host;
    :func:`attention_tiled` visits the same tiles.
    """
    for name, value in (("n_q", n_q), ("n_k", n_k), ("block_m", block_m),
                        ("block_n", block_n)):
        check_positive_int(value, name)
    check_bool(causal, "causal")
    check_int(n_mask, "n_mask", minimum=0, maximum=n_k)
    plan = torch.zeros(math.ceil(n_q / block_m), math.ceil(n_k / block_n), dtype=torch.int8)
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


def sram_block(sram_bytes: int, d: int, itemsize: int = 2) -> int:
    """The query block that fills an SRAM of M = sram_bytes / itemsize elements: M / (4d).

    The Q, K and V tiles and the output accumulator, each block x d, share the SRAM
    (the choice B_c = M / 4d of Dao et al. 2022); with it :func:`flash_attention_io` is
    2Nd + 8 N^2 d^2 / M elements, Theta(N^2 d^2 / M) (eq. 12).
    """
    _check_sizes(sram_bytes=sram_bytes, d=d, itemsize=itemsize)
    return max(1, sram_bytes // itemsize // (4 * d))
