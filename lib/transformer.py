"""A small decoder-only Transformer: positions, multi-head attention, pre-norm blocks, TinyLM.

Chapter 6 (equation numbers refer to it). Vaswani et al. (2017), "Attention is all you
need"; the pre-norm block of Xiong et al. (2020); the code layout of nanoGPT.

Shapes: B batch, T new tokens, Tp tokens already in the KV cache, C = d_model,
H heads of size hd = C / H, V vocabulary size.

* :func:`sinusoidal_positions` (eq. 7) and :func:`position_rotation` (eq. 8): the table
  PE[p] and the rotation M_k with PE[p + k] = M_k PE[p] for every p.
* :class:`MultiHeadAttention` (eq. 6): project, split heads, attend with
  :func:`lib.attention.flash_attention` (the core, chapter 7), merge heads, project.
  Same parameter layout as ``torch.nn.MultiheadAttention`` (``in_proj`` = ``qkv``).
* :class:`TransformerBlock` (eq. 11): x + MHA(LN(x)), then x + MLP(LN(x)).
* :class:`TinyLMConfig` (sizes, as nanoGPT's ``GPTConfig``) and :class:`TinyLM`:
  embedding + positions (sinusoidal, or a learned table: Table 3 row (E) of Vaswani
  et al.), n blocks, final LayerNorm, tied output layer.
  ``forward(idx, past, mask, position_ids, return_hidden)`` serves training, decoding with
  a KV cache, and chapter 9's Medusa (hidden states; a tree of candidates scored in one
  pass with an attention mask and explicit position ids). ``generate`` decodes greedily
  or by sampling, with or without the cache; :func:`select_cache` keeps chosen cached
  positions.

The KV cache ("past") is a list with one ``(k, v)`` pair per block, each (B, H, Tp, hd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .attention import flash_attention
from .backend import check_backend
from .training import train_mode
from .validate import (
    FLOAT_DTYPES,
    check_bool,
    check_choice,
    check_int,
    check_long_tensor,
    check_positive_int,
    check_real,
    check_tensor,
)

Past = list[tuple[torch.Tensor, torch.Tensor]]

# ----------------------------------------------------------------- positional encodings


def _check_frequencies(d, base) -> float:
    """d even and positive; base a finite number > 1, so that w_i = base^(-2i/d) decreases."""
    check_positive_int(d, "d")
    if d % 2:
        raise ValueError(f"d must be even (sin and cos come in pairs), got {d}")
    return check_real(base, "base", minimum=1.0, strict=True)


def sinusoidal_positions(
    n: int, d: int, base: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """The sinusoidal position table of Vaswani et al. (eq. 7), shape (n, d), fp32.

    PE[p, 2i] = sin(p w_i), PE[p, 2i + 1] = cos(p w_i), w_i = base^(-2i / d); d even.
    """
    check_positive_int(n, "n")
    base = _check_frequencies(d, base)
    p = torch.arange(n, dtype=torch.float64, device=device)[:, None]  # (n, 1)
    w = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # (d/2,)
    pe = torch.empty(n, d, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(p * w)
    pe[:, 1::2] = torch.cos(p * w)
    return pe.float()


def position_rotation(k: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The (d, d) matrix M_k with PE[p + k] = M_k PE[p] for every position p (eq. 8).

    Block diagonal: each (sin, cos) pair of frequency w_i turns by the angle k w_i.
    """
    check_int(k, "k")
    base = _check_frequencies(d, base)
    w = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    c, s = torch.cos(k * w), torch.sin(k * w)
    m = torch.zeros(d, d, dtype=torch.float64)
    i = torch.arange(0, d, 2)
    # [sin(a + b), cos(a + b)] = [[cos b, sin b], [-sin b, cos b]] [sin a, cos a]
    m[i, i], m[i, i + 1], m[i + 1, i], m[i + 1, i + 1] = c, s, -s, c
    return m.float()


# ------------------------------------------------------------------------ the modules


def _check_past(past_kv, b: int, h: int, hd: int, x: torch.Tensor, name: str = "past"):
    """One block's cache: a pair (k, v) of (B, H, Tp, hd) tensors with x's dtype and device."""
    if not isinstance(past_kv, (tuple, list)) or len(past_kv) != 2:
        raise TypeError(f"{name} must be a pair (k, v) of tensors, got {type(past_kv).__name__}")
    k, v = past_kv
    for part, t in (("k", k), ("v", v)):
        check_tensor(t, f"{name} {part}", ndim=4)
        if t.shape[0] != b or t.shape[1] != h or t.shape[3] != hd:
            raise ValueError(
                f"{name} {part} must have shape (B, H, Tp, hd) = ({b}, {h}, Tp, {hd}), "
                f"got {tuple(t.shape)}"
            )
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name} {part} must match x's dtype and device "
                             f"({x.dtype}, {x.device}), got ({t.dtype}, {t.device})")
    if k.shape != v.shape:
        raise ValueError(f"{name} k and v must have the same shape, got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention (chapter 6, eq. 6); its core is ``lib.attention.flash_attention``.

    x: (B, T, C) -> (B, T, C). Parameters as ``torch.nn.MultiheadAttention``:
    ``qkv`` is its ``in_proj`` (rows: W_Q, W_K, W_V), ``proj`` its ``out_proj``.
    ``backend`` is passed to ``flash_attention`` ("auto": Triton on CUDA, PyTorch elsewhere).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, backend: str = "auto"):
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(n_heads, "n_heads")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        check_bool(bias, "bias")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.backend = check_backend(backend)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from the T new tokens to the Tp cached ones and to themselves.

        x: (B, T, C); past: None or (k, v), each (B, H, Tp, hd); causal:
        bottom-right aligned, new token t sees cache + tokens 0..t; mask: None or
        bool (T, Nm) or (B, T, Nm) on the last Nm keys, ANDed with causal (see
        ``flash_attention``).
        Returns y (B, T, C) and the updated cache (k, v), each (B, H, Tp + T, hd).
        """
        check_tensor(x, "x", ndim=3, dtypes=FLOAT_DTYPES)
        check_bool(causal, "causal")
        b, t, c = x.shape
        if c != self.d_model:
            raise ValueError(f"x must have last dim d_model={self.d_model}, "
                             f"got {c}")
        if x.device != self.qkv.weight.device:
            raise ValueError(f"x must be on the module's device "
                             f"{self.qkv.weight.device}, got {x.device}")
        h, hd = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).split(c, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, T, H, hd) -> (B, H, T, hd)
        q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            _check_past(past, b, h, hd, x)
            k = torch.cat([past[0], k], dim=2)  # (B, H, Tp + T, hd)
            v = torch.cat([past[1], v], dim=2)
        y = flash_attention(q, k, v, causal=causal, mask=mask,
                            backend=self.backend)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, H, hd) -> (B, T, C)
        return self.proj(y), (k, v)


class TransformerBlock(nn.Module):
    """Pre-norm residual block (eq. 11): x + MHA(LN1(x)), then x + MLP(LN2(x)).

    x: (B, T, C) -> (B, T, C). Causal self-attention; the MLP is C -> mlp_ratio C -> C with
    GELU. ``residual_projections`` are the two layers that write into the residual
    stream (``attn.proj`` and the MLP's output layer).
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, backend: str = "auto"):
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(mlp_ratio, "mlp_ratio")
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, backend=backend)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )
        self.residual_projections = (self.attn.proj, self.mlp[2])

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (B, T, C); past, mask as in :class:`MultiHeadAttention`. Returns (x, (k, v))."""
        a, present = self.attn(self.ln1(x), past=past, causal=True, mask=mask)
        x = x + a  # the residual path: gradient 1 straight to the input
        x = x + self.mlp(self.ln2(x))
        return x, present


def _check_cache(past) -> int:
    """A non-empty list of (k, v) pairs of 4-D tensors; returns Tp, the cached length."""
    if not isinstance(past, (list, tuple)):
        raise TypeError(f"past must be a list of (k, v) pairs, one per block, "
                        f"got {type(past).__name__}")
    if not past:
        raise ValueError("past must hold at least one block's (k, v), got an empty list")
    for i, kv in enumerate(past):
        if not isinstance(kv, (tuple, list)) or len(kv) != 2:
            raise TypeError(f"past[{i}] must be a pair (k, v) of tensors, got {type(kv).__name__}")
        for part, t in zip("kv", kv, strict=True):
            check_tensor(t, f"past[{i}] {part}", ndim=4)
    return past[0][0].shape[2]


def _check_idx_shape(idx, name: str) -> None:
    """A (B, T) LongTensor with B, T >= 1 (dtype and shape only: no device sync)."""
    check_long_tensor(idx, name, ndim=2)
    if idx.shape[0] < 1 or idx.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one sequence of at least one token, "
                         f"got shape {tuple(idx.shape)}")


class LMOutput(NamedTuple):
    """What :meth:`TinyLM.forward` returns."""

    logits: torch.Tensor  # (B, T, V)
    past: Past  # one (k, v) per block, each (B, H, Tp + T, hd)
    hidden: torch.Tensor | None  # (B, T, C) after the final LayerNorm, if asked for


POSITIONS = ("sinusoidal", "learned")
#: default std of a learned position table: the sinusoid table's root mean square (eq. 7:
#: each sin/cos pair has sin^2 + cos^2 = 1, so the mean square is 1/2)
POS_INIT_STD = 0.5**0.5


@dataclass(frozen=True)
class TinyLMConfig:
    """The sizes of a :class:`TinyLM` (as nanoGPT's ``GPTConfig``), checked when made.

    vocab_size V, d_model C (even, for the sin/cos pairs of eq. 7, and divisible by
    n_heads), n_heads H, n_layers (blocks), max_len (positions in the table), mlp_ratio
    (the MLP's hidden width over C), positions: ``"sinusoidal"`` (eq. 7, fixed) or
    ``"learned"`` (a trained (max_len, C) table, as in row (E) of the paper's Table 3).
    pos_init_std: the standard deviation of the learned table's N(0, std^2) initial
    values, a positive real; the default sqrt(1/2) is the sinusoid table's root mean
    square (nanoGPT uses 0.02, OpenAI's GPT-2 code 0.01, against token embeddings that
    start at 0.02 where ours start at std 1 once scaled by sqrt(C)). Only a learned
    table has one: with ``positions="sinusoidal"`` a value other than the default is
    refused.
    """

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    max_len: int
    mlp_ratio: int = 4
    positions: str = "sinusoidal"
    pos_init_std: float = POS_INIT_STD

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_len", "mlp_ratio"):
            check_positive_int(getattr(self, name), name)
        check_choice(self.positions, "positions", POSITIONS)
        check_real(self.pos_init_std, "pos_init_std", minimum=0.0, strict=True)
        if self.positions != "learned" and self.pos_init_std != POS_INIT_STD:
            raise ValueError(f"pos_init_std initialises a learned position table; with "
                             f"positions={self.positions!r} there is none, got "
                             f"pos_init_std={self.pos_init_std}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for sinusoidal positions, got {self.d_model}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by "
                             f"n_heads={self.n_heads}")


class TinyLM(nn.Module):
    """A decoder-only character language model: embedding, sinusoidal positions, blocks.

    ``TinyLM(TinyLMConfig(vocab_size=65, d_model=64, n_heads=4, n_layers=2, max_len=64))``.
    Token embeddings are scaled by sqrt(C) and tied to the output layer, as in Vaswani
    et al.; positions come from :func:`sinusoidal_positions` (``pos_table``, a buffer)
    or, with ``config.positions == "learned"``, from a trained table ``pos_emb``
    (initialised N(0, ``config.pos_init_std``^2)). Any
    position below ``max_len`` can be addressed, including the repeated positions of a
    tree of candidates. ``backend`` goes to every block's attention.
    """

    def __init__(self, config: TinyLMConfig, backend: str = "auto"):
        super().__init__()
        if not isinstance(config, TinyLMConfig):
            raise TypeError(f"config must be a TinyLMConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        if c.positions == "learned":
            self.pos_emb = nn.Embedding(c.max_len, c.d_model)
        else:
            self.register_buffer("pos_table", sinusoidal_positions(c.max_len, c.d_model),
                                 persistent=False)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_heads, c.mlp_ratio, backend)
            for _ in range(c.n_layers)
        )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        residual = {id(m) for block in self.blocks for m in block.residual_projections}
        self.apply(lambda module: self._init_weights(module, id(module) in residual))

    # the sizes, read from the config
    vocab_size = property(lambda self: self.config.vocab_size)
    d_model = property(lambda self: self.config.d_model)
    n_heads = property(lambda self: self.config.n_heads)
    n_layers = property(lambda self: self.config.n_layers)
    max_len = property(lambda self: self.config.max_len)

    def _init_weights(self, module: nn.Module, residual: bool) -> None:
        # nanoGPT/GPT-2: N(0, 0.02) weights and zero biases; the residual projections shrunk
        # by 1/sqrt(2 n_layers) so that the residual stream's variance does not grow with
        # depth; token embeddings N(0, 1/C), so that sqrt(C) x embedding is N(0, 1);
        # a learned position table N(0, config.pos_init_std^2): by default the sinusoid
        # table's mean square, so that the two kinds differ in form, not size.
        if module is self.lm_head:
            return  # tied: its weight is the token embedding, initialised as one
        if module is getattr(self, "pos_emb", None):
            nn.init.normal_(module.weight, 0.0, self.config.pos_init_std)
            return
        if isinstance(module, nn.Linear):
            std = 0.02
            if residual:
                std = 0.02 / math.sqrt(2 * self.n_layers)
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, self.d_model ** -0.5)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def check_token_ids(self, idx, name: str = "idx") -> torch.Tensor:
        """Raise unless ``idx`` is a (B, T) LongTensor, B, T >= 1, of ids in [0, vocab_size).

        Reads the values (one device sync): :meth:`generate` calls it once for the prompt;
        call it yourself before a decoding loop of your own that passes ``check_ids=False``.
        """
        return self._check_idx(idx, name, values=True)

    def _check_idx(self, idx, name: str, values: bool) -> torch.Tensor:
        _check_idx_shape(idx, name)
        if idx.device != self.tok_emb.weight.device:
            raise ValueError(f"{name} must be on the model's device {self.tok_emb.weight.device}, "
                             f"got {idx.device}")
        if values:  # reads the ids back: a device sync
            check_long_tensor(idx, name, low=0, high=self.vocab_size)
        return idx

    def forward(
        self,
        idx: torch.Tensor,
        past: Past | None = None,
        mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
        check_ids: bool = True,
    ) -> LMOutput:
        """Next-token logits for the T tokens ``idx`` (B, T), after the cached ``past``.

        past: None or the ``past`` of an earlier call (one (k, v) per block), Tp tokens.
        mask: None or bool (T, Nm) / (B, T, Nm) on the last Nm keys (True = may attend),
        ANDed with the causal mask; e.g. a tree of candidates in topological order (a
        node after its ancestors) with mask[i, j] = "j is i or an ancestor of i".
        position_ids: None (Tp, Tp + 1, ..., Tp + T - 1) or a LongTensor (T,) / (B, T)
        with values below ``max_len``, e.g. prefix length + depth for tree nodes.
        check_ids: check that the values of ``idx`` and ``position_ids`` are in range,
        which reads them (a device sync per call). A decoding loop whose ids come from
        the model itself passes False after checking its prompt once (as :meth:`generate`
        does); shapes and dtypes are always checked.
        Returns :class:`LMOutput` (logits (B, T, V), the new past, hidden (B, T, C) or None).
        """
        check_bool(check_ids, "check_ids")
        check_bool(return_hidden, "return_hidden")
        self._check_idx(idx, "idx", values=check_ids)
        b, t = idx.shape
        t_past = 0
        if past is not None:
            t_past = _check_cache(past)
            if len(past) != self.n_layers:
                raise ValueError(f"past must hold one (k, v) per block ({self.n_layers}), "
                                 f"got {len(past)}")
        if position_ids is None:
            if t_past + t > self.max_len:
                raise ValueError(f"the sequence (Tp + T = {t_past} + {t}) is longer than "
                                 f"max_len={self.max_len}")
            position_ids = torch.arange(t_past, t_past + t, device=idx.device)
        else:
            check_long_tensor(position_ids, "position_ids", ndim=(1, 2))
            if position_ids.device != idx.device:
                raise ValueError(f"position_ids must be on idx's device {idx.device}, "
                                 f"got {position_ids.device}")
            if position_ids.shape[-1] != t or (position_ids.dim() == 2
                                               and position_ids.shape[0] != b):
                raise ValueError(f"position_ids must have shape ({t},) or ({b}, {t}), got "
                                 f"{tuple(position_ids.shape)}")
            if check_ids:
                check_long_tensor(position_ids, "position_ids", low=0, high=self.max_len)
        if self.config.positions == "learned":
            pos = self.pos_emb(position_ids)
        else:
            pos = self.pos_table[position_ids]  # eq. 7
        x = self.tok_emb(idx) * math.sqrt(self.d_model) + pos  # (B, T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past=None if past is None else past[i], mask=mask)
            present.append(kv)
        hidden = self.ln_f(x)  # (B, T, C)
        return LMOutput(self.lm_head(hidden), present, hidden if return_hidden else None)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue ``prompt`` (B, T) by ``max_new_tokens``; returns (B, T + max_new_tokens).

        temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature)
        restricted to the ``top_k`` most likely tokens, drawing from ``generator``.
        With ``use_cache`` each step feeds one token and reuses the KV cache; without it,
        each step reruns the whole sequence (the check that the cache is right).
        The model sees at most the last ``max_len`` tokens. Once the sequence is longer,
        every step reruns that window: positions are absolute, so a cache computed at
        positions 0.. cannot slide along with the window.
        The prompt's ids are checked once; the loop itself reads nothing back from the
        device but the sampled tokens' concatenation (no range checks per step).
        """
        self.check_token_ids(prompt, "prompt")
        check_int(max_new_tokens, "max_new_tokens", minimum=0)
        temperature = check_real(temperature, "temperature", minimum=0.0)
        if top_k is not None:
            check_positive_int(top_k, "top_k")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, "
                            f"got {type(generator).__name__}")
        check_bool(use_cache, "use_cache")
        seq, past = prompt, None
        with train_mode(self, False):
            for _ in range(max_new_tokens):
                if use_cache and past is not None and seq.shape[1] <= self.max_len:
                    out = self(seq[:, -1:], past=past, check_ids=False)  # one token, the cache
                else:
                    out = self(seq[:, -self.max_len :], check_ids=False)  # the whole window
                past = out.past
                logits = out.logits[:, -1, :].float()  # (B, V)
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, -math.inf)
                    probs = torch.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
                seq = torch.cat([seq, nxt], dim=1)
        return seq


def select_cache(past: Past, index: torch.Tensor) -> Past:
    """Keep the cached positions ``index`` (1-D LongTensor) of every block, in that order.

    past: one (k, v) per block, each (B, H, Tp, hd); index: values in [0, Tp) (checked:
    one device sync). Returns one (k, v) per block, each (B, H, len(index), hd).
    After a tree of candidates was verified (chapter 9), the cache holds the prefix and
    every node; keeping the prefix and the accepted path makes it a plain cache again.
    """
    t_past = _check_cache(past)
    check_long_tensor(index, "index", ndim=1, low=0, high=t_past)
    return [(k.index_select(2, index), v.index_select(2, index)) for k, v in past]
