"""Medusa: extra decoding heads on a frozen base model, and decoding that verifies a tree of
their guesses in one forward pass.

Chapter 9 (equation numbers refer to it). Cai et al. (2024), "Medusa: simple LLM inference
acceleration framework with multiple decoding heads" (the layout follows its reference
code: ``generate_candidates``, ``tree_decoding``, ``evaluate_posterior``,
``update_inference_inputs``). The tree is :mod:`lib.medusa_tree`, the acceptance rules
(and the exact speculative sampling rule they are compared with) :mod:`lib.medusa_accept`.

Shapes: B batch, T tokens, C hidden size, V vocabulary, K heads, L root-to-leaf paths of
the tree, D its depth.

* :class:`MedusaHeads` (eq. 7): K heads on the base model's last hidden state h_t; head k
  (1-based, as in the paper) predicts token t + k + 1, the base itself token t + 1.
  Each head is ``num_layers`` residual SiLU blocks and a linear layer to the vocabulary.
* :func:`train_medusa_heads` (eq. 8, Medusa-1): the base frozen, the heads trained with
  :func:`lib.training.train` on the sum of their cross-entropies weighted by 0.8^k;
  :func:`head_accuracy` measures their top-k accuracies.
* :func:`medusa_generate`: decoding with the KV cache, the tree mask (eq. 10) and depth
  position ids, greedy (lossless) or typical acceptance (eqs. 13-14), returning the tokens
  and the statistics (accepted candidates per step, forward passes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .medusa_accept import greedy_accept, speculative_sample, typical_accept
from .medusa_tree import DEFAULT_CHOICES, TreeBuffers, build_tree, grow_tree, prune_tree
from .training import check_tokens, train, train_mode
from .transformer import TinyLM, select_cache
from .validate import (
    FLOAT_DTYPES,
    check_bool,
    check_int,
    check_long_tensor,
    check_positive_int,
    check_real,
    check_tensor,
)

# the chapter's API in one place: the tree and the acceptance rules live in their own modules
__all__ = [
    "DEFAULT_CHOICES", "MedusaHeads", "MedusaOutput", "MedusaStep", "ResBlock", "TreeBuffers",
    "build_tree", "greedy_accept", "grow_tree", "head_accuracy", "medusa_generate",
    "medusa_loss", "speculative_sample", "train_medusa_heads", "typical_accept",
]

# ------------------------------------------------------------------------------ the heads


class ResBlock(nn.Module):
    """x + SiLU(W x + b) (eq. 7), (..., C) -> (..., C). W and b start at zero, so a new block
    is the identity and a new head starts as the base model's own output layer (Medusa's
    code zeroes W only; SiLU(0) = 0 makes the zero bias exact)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """K Medusa heads (eq. 7): hidden (..., C) -> logits (K, ..., V).

    ``heads[k - 1]`` is head k, predicting the token k + 1 places after the one the base
    model predicts from the same hidden state; ``num_layers`` residual blocks, then a
    linear layer C -> V without bias. :meth:`from_base` copies a base model's output layer
    into every head, as Medusa does.
    """

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int = 4,
                 num_layers: int = 1):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("vocab_size", vocab_size),
                            ("num_heads", num_heads)):
            check_positive_int(value, name)
        check_int(num_layers, "num_layers", minimum=0)
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.num_heads, self.num_layers = num_heads, num_layers
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden_size) for _ in range(num_layers)],
                          nn.Linear(hidden_size, vocab_size, bias=False))
            for _ in range(num_heads)
        )

    @classmethod
    def from_base(cls, base: TinyLM, num_heads: int = 4, num_layers: int = 1) -> MedusaHeads:
        """Heads sized for ``base``, each output layer a copy of the base's, on its device."""
        _check_base(base)
        heads = cls(base.d_model, base.vocab_size, num_heads, num_layers)
        heads.to(base.lm_head.weight.device)
        with torch.no_grad():
            for head in heads.heads:
                head[-1].weight.copy_(base.lm_head.weight)
        return heads

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., C) -> logits (K, ..., V)."""
        check_tensor(hidden, "hidden", min_ndim=1, dtypes=FLOAT_DTYPES)
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"hidden must have last dim hidden_size={self.hidden_size}, "
                             f"got {hidden.shape[-1]}")
        return torch.stack([head(hidden) for head in self.heads])


def _check_base(base) -> TinyLM:
    if not isinstance(base, TinyLM):
        raise TypeError(f"base must be a lib.transformer.TinyLM, got {type(base).__name__}")
    return base


def _check_pair(base, heads) -> None:
    _check_base(base)
    if not isinstance(heads, MedusaHeads):
        raise TypeError(f"heads must be MedusaHeads, got {type(heads).__name__}")
    if heads.hidden_size != base.d_model or heads.vocab_size != base.vocab_size:
        raise ValueError(f"heads (hidden_size={heads.hidden_size}, vocab_size="
                         f"{heads.vocab_size}) do not fit base (d_model={base.d_model}, "
                         f"vocab_size={base.vocab_size})")
    device = base.lm_head.weight.device
    if next(heads.parameters()).device != device:
        raise ValueError(f"heads must be on base's device {device}, "
                         f"got {next(heads.parameters()).device}")


# -------------------------------------------------------------------------- training


def medusa_loss(head_logits: torch.Tensor, targets: torch.Tensor,
                decay: float = 0.8) -> torch.Tensor:
    """Medusa-1's loss (eq. 8): sum over heads k = 1..K of decay^k x cross-entropy of head k.

    head_logits (K, B, T, V); targets (B, K, T): row k - 1 holds, for each position t, the
    token t + k + 1 that head k must predict.
    """
    check_tensor(head_logits, "head_logits", ndim=4, dtypes=FLOAT_DTYPES)
    check_long_tensor(targets, "targets", ndim=3)
    k, b, t, _ = head_logits.shape
    if targets.shape != (b, k, t):
        raise ValueError(f"targets must have shape (B, K, T) = {(b, k, t)}, "
                         f"got {tuple(targets.shape)}")
    decay = check_real(decay, "decay", minimum=0.0, strict=True)
    losses = [F.cross_entropy(head_logits[i].flatten(0, 1).float(), targets[:, i].flatten())
              for i in range(k)]
    return sum(decay ** (i + 1) * loss for i, loss in enumerate(losses))


def _split_window(window: torch.Tensor, k: int):
    """window (B, S) -> inputs x (B, S - K - 1) and targets (B, K + 1, S - K - 1) with
    targets[:, j, t] = window[:, t + j + 1]: row 0 is the base's next token, row k the token
    head k must predict (t + k + 1)."""
    n = window.shape[1] - k - 1
    targets = torch.stack([window[:, j + 1 : j + 1 + n] for j in range(k + 1)], dim=1)
    return window[:, :n], targets


def _shifted_windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int, k: int):
    """The windows of seq_len + K + 1 tokens of ``tokens`` (1-D) at ``starts``, split."""
    return _split_window(tokens[starts[:, None] + torch.arange(seq_len + k + 1)], k)


def train_medusa_heads(
    base: TinyLM,
    heads: MedusaHeads,
    tokens: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    seq_len: int | None = None,
    decay: float = 0.8,
    **kwargs,
) -> list[float]:
    """Train ``heads`` on random windows of ``tokens`` (1-D) with ``base`` frozen (Medusa-1).

    Each step draws ``batch_size`` windows of ``seq_len + K + 1`` tokens (``seq_len``
    defaults to ``base.max_len``), runs the base on the first ``seq_len`` without gradients
    and in eval mode, and minimises :func:`medusa_loss` of the heads on its final hidden
    states. Other keyword arguments (``lr``, ``warmup``, ``seed``, ``progress``, ...) go to
    :func:`lib.training.train`. Returns the loss of every step; the base is left unchanged.
    """
    _check_pair(base, heads)
    seq_len = base.max_len if seq_len is None else seq_len
    check_positive_int(seq_len, "seq_len")
    if seq_len > base.max_len:
        raise ValueError(f"seq_len={seq_len} exceeds base.max_len={base.max_len}")
    k = heads.num_heads
    check_tokens(tokens, min_len=seq_len + k + 1, vocab_size=base.vocab_size)
    check_positive_int(batch_size, "batch_size")
    decay = check_real(decay, "decay", minimum=0.0, strict=True)
    device = base.lm_head.weight.device

    def windows(g: torch.Generator):
        starts = torch.randint(0, tokens.numel() - seq_len - k, (batch_size,), generator=g)
        x, targets = _shifted_windows(tokens, starts, seq_len, k)
        return x.to(device), targets[:, 1:].to(device)  # heads 1..K

    def loss_fn(model, x, targets):
        with torch.no_grad():  # the base is frozen: no graph through it
            hidden = base(x, return_hidden=True, check_ids=False).hidden  # (B, T, C)
        return medusa_loss(model(hidden), targets, decay)

    kwargs.setdefault("desc", "Medusa heads")
    with train_mode(base, False):
        return train(heads, windows, loss_fn, steps, **kwargs)


@torch.no_grad()
def head_accuracy(base: TinyLM, heads: MedusaHeads, tokens: torch.Tensor, topk: int = 5,
                  seq_len: int | None = None, batch_size: int = 64,
                  start: int = 0) -> torch.Tensor:
    """Top-1..top-``topk`` accuracies of the base (row 0) and of heads 1..K (rows 1..K).

    (K + 1, topk) float64: entry [k, j] is the fraction of positions t where the token
    t + k + 1 of ``tokens`` is among row k's j + 1 most likely tokens, every row on the same
    positions. ``tokens`` is a stream (1-D), cut into consecutive windows of ``seq_len``
    inputs (default ``base.max_len``) so that each position counts once, or a batch of
    sequences (B, S), each one window of S - K - 1 inputs (e.g. the model's own
    generations). ``start`` skips the first positions of every window: for generations
    after a prompt of P tokens, ``start = P - 1`` counts only generated targets.
    """
    _check_pair(base, heads)
    check_positive_int(topk, "topk")
    if topk > base.vocab_size:
        raise ValueError(f"topk={topk} exceeds the vocabulary ({base.vocab_size})")
    check_positive_int(batch_size, "batch_size")
    k = heads.num_heads
    check_long_tensor(tokens, "tokens", ndim=(1, 2))
    if tokens.dim() == 2:
        seq_len = tokens.shape[1] - k - 1
        if seq_len < 1 or seq_len > base.max_len:
            raise ValueError(f"tokens (B, S) needs K + 2 <= S <= base.max_len + K + 1 = "
                             f"{base.max_len + k + 1}, got shape {tuple(tokens.shape)}")
        check_long_tensor(tokens, "tokens", low=0, high=base.vocab_size)
        windows = tokens
    else:
        seq_len = base.max_len if seq_len is None else seq_len
        check_positive_int(seq_len, "seq_len")
        if seq_len > base.max_len:
            raise ValueError(f"seq_len={seq_len} exceeds base.max_len={base.max_len}")
        check_tokens(tokens, min_len=seq_len + k + 1, vocab_size=base.vocab_size)
        starts = torch.arange(0, tokens.numel() - seq_len - k, seq_len)
        windows = tokens[starts[:, None] + torch.arange(seq_len + k + 1)]
    check_int(start, "start", minimum=0)
    if start >= seq_len:
        raise ValueError(f"start={start} must be below the {seq_len} positions of a window")
    device = base.lm_head.weight.device
    hits = torch.zeros(k + 1, topk, dtype=torch.float64)
    with train_mode(base, False), train_mode(heads, False):
        for i in range(0, len(windows), batch_size):
            x, targets = _split_window(windows[i : i + batch_size].to(device), k)
            out = base(x, return_hidden=True, check_ids=False)
            logits = torch.cat([out.logits[None], heads(out.hidden)])  # (K + 1, B, T, V)
            top = logits.topk(topk, dim=-1).indices  # (K + 1, B, T, topk)
            found = (top == targets.transpose(0, 1)[..., None]).cumsum(-1).clamp_max(1)
            hits += found[:, :, start:].sum((1, 2)).double().cpu()
    return hits / (len(windows) * (seq_len - start))


# ------------------------------------------------------------------------- decoding


@dataclass
class MedusaStep:
    """One verification step, for drawing: the prefix length before it, the tree's tokens
    (T,), the chosen path's node ids (root first), and how many candidates it accepted."""

    prefix_len: int
    tree: TreeBuffers
    tree_tokens: list[int]
    path: list[int]
    accepted: int


@dataclass
class MedusaOutput:
    """What :func:`medusa_generate` returns.

    tokens (1, P + N); accepted[i]: candidates accepted at step i (the step yields
    accepted[i] + 1 tokens with its root); forward_passes: base forward passes, the prefill
    included; steps: a :class:`MedusaStep` per step when traced; cpu_seconds: when
    profiled, the process CPU seconds spent in each phase (see :func:`medusa_generate`).
    """

    tokens: torch.Tensor
    accepted: list[int]
    forward_passes: int
    new_tokens: int
    steps: list[MedusaStep] | None = None
    cpu_seconds: dict[str, float] | None = None

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per base forward pass (plain decoding: exactly 1)."""
        return self.new_tokens / max(1, self.forward_passes)

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens per verification step, Medusa's 'acceleration rate'."""
        return 1 + sum(self.accepted) / max(1, len(self.accepted))


class _Laps:
    """Process CPU seconds per phase, summed over the steps (does nothing when off)."""

    def __init__(self, on: bool):
        self.seconds: dict[str, float] | None = {} if on else None
        self.last = time.process_time() if on else 0.0

    def lap(self, phase: str) -> None:
        if self.seconds is not None:
            now = time.process_time()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
            self.last = now


def _resolve_tree(choices, heads: MedusaHeads, base: TinyLM) -> TreeBuffers:
    if choices is None:  # the default tree, cut to the depth the heads can fill
        choices = [p for p in DEFAULT_CHOICES if len(p) <= heads.num_heads]
    if isinstance(choices, TreeBuffers):
        tree = choices
    else:
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise TypeError(f"choices must be a list of paths or TreeBuffers, "
                            f"got {type(choices).__name__}")
        ranks = [r for path in choices if isinstance(path, (tuple, list)) for r in path
                 if isinstance(r, int)]
        tree = build_tree(choices, max(ranks, default=0) + 1)
    if tree.depth > heads.num_heads:
        raise ValueError(f"choices reach depth {tree.depth}, but there are only "
                         f"{heads.num_heads} heads")
    if tree.topk > heads.vocab_size:
        raise ValueError(f"choices use rank {tree.topk - 1}, beyond the vocabulary")
    if tree.size > 128:  # lib.attention's explicit mask covers at most 128 keys
        raise ValueError(f"the tree has {tree.size} nodes; at most 128 fit the attention mask")
    return tree.to(base.lm_head.weight.device)


def _evaluate_posterior(logits: torch.Tensor, tree_tokens: torch.Tensor,
                        retrieve: torch.Tensor, temperature: float, posterior_threshold: float,
                        posterior_alpha: float) -> tuple[int, int]:
    """The best root-to-leaf path and its accepted candidates (eqs. 13-14), as Medusa's
    ``evaluate_posterior``. logits (T, V) of the tree pass, tree_tokens (T,), retrieve
    (L, D + 1) node ids padded with -1. Typical acceptance breaks ties by likelihood."""
    safe, valid = retrieve.clamp_min(0), retrieve >= 0
    paths = tree_tokens[safe]  # (L, D + 1): the candidates along every path
    if temperature == 0:
        lengths = greedy_accept(logits.argmax(-1)[safe], paths, valid)
        best = int(lengths.argmax())
    else:
        lengths, loglik = typical_accept(logits[safe], paths, valid, temperature,
                                         posterior_threshold, posterior_alpha)
        best = int(torch.where(lengths == lengths.max(), loglik, -math.inf).argmax())
    return best, int(lengths[best])


@torch.no_grad()
def medusa_generate(
    base: TinyLM,
    heads: MedusaHeads,
    prompt: torch.Tensor,
    max_new_tokens: int,
    choices: Sequence[Sequence[int]] | TreeBuffers | None = None,
    temperature: float = 0.0,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
    trace: bool = False,
    profile: bool = False,
) -> MedusaOutput:
    """Continue ``prompt`` (1, P) by ``max_new_tokens`` tokens with Medusa.

    Each step: the root (the base's argmax after the accepted text), the heads' top-k
    candidates arranged as the tree ``choices`` (default: :data:`DEFAULT_CHOICES` down to
    depth K), one base forward pass over the tree with the KV cache, the tree mask and
    positions prefix + depth, then acceptance: greedy (``temperature=0``, eq. 13: the
    output equals plain greedy decoding) or typical (eq. 14 at ``temperature``, with
    Medusa's ``posterior_threshold`` epsilon and ``posterior_alpha`` delta; the root is
    still the argmax, as in Medusa's own ``medusa_generate``, so the decoder is deterministic).
    The cache then keeps the prefix and the accepted path. P + max_new_tokens must not
    exceed ``base.max_len`` (positions are absolute). ``trace`` records every step
    (:class:`MedusaStep`) for drawing. ``profile`` sums the process CPU seconds of each
    phase into ``cpu_seconds``: "prefill", "draft" (root, heads, top-k, tree tokens),
    "tree pass", "acceptance", "cache update" (``select_cache``, reading the accepted
    tokens back) and "bookkeeping" (the rest of the loop). On a GPU, kernels run
    asynchronously and their time lands in the phase that next waits for them.
    """
    _check_pair(base, heads)
    base.check_token_ids(prompt, "prompt")
    if prompt.shape[0] != 1:
        raise ValueError(f"prompt must hold one sequence (1, P), got shape {tuple(prompt.shape)}")
    check_int(max_new_tokens, "max_new_tokens", minimum=0)
    if prompt.shape[1] + max_new_tokens > base.max_len:
        raise ValueError(f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} "
                         f"exceeds base.max_len={base.max_len}")
    temperature = check_real(temperature, "temperature", minimum=0.0)
    posterior_threshold = check_real(posterior_threshold, "posterior_threshold",
                                     minimum=0.0, maximum=1.0)
    posterior_alpha = check_real(posterior_alpha, "posterior_alpha", minimum=0.0, maximum=1.0)
    check_bool(trace, "trace")
    check_bool(profile, "profile")
    full_tree = _resolve_tree(choices, heads, base)
    pruned: dict[int, TreeBuffers] = {}  # the tree cut at each depth
    seq = prompt[0].tolist()
    out = MedusaOutput(prompt, [], 0, 0, [] if trace else None, {} if profile else None)
    if max_new_tokens == 0:
        return out
    laps = _Laps(profile)
    with train_mode(base, False), train_mode(heads, False):
        first = base(prompt, return_hidden=True, check_ids=False)  # the prefill
        out.forward_passes = 1
        past, logits, hidden = first.past, first.logits[0, -1], first.hidden[0, -1]
        new: list[int] = []
        laps.lap("prefill")
        while True:
            root = int(logits.argmax())
            remaining = max_new_tokens - len(new)
            if remaining == 1:  # the root is the last token: no pass needed
                new.append(root)
                break
            # deeper candidates could not be kept, or would run past the last position
            depth = min(full_tree.depth, remaining - 1, base.max_len - 1 - len(seq))
            if depth not in pruned:
                pruned[depth] = prune_tree(full_tree, depth)
            tree = pruned[depth]
            # generate_candidates: root + the heads' top-k, placed on the tree
            top = heads(hidden).topk(tree.topk, dim=-1).indices  # (K, topk)
            flat = torch.cat([logits.new_tensor([root], dtype=torch.long), top.flatten()])
            tree_tokens = flat[tree.tree_indices]  # (T,)
            laps.lap("draft")
            # tree_decoding: one pass, each node attending to the prefix and its ancestors
            step = base(tree_tokens[None], past=past, mask=tree.attn_mask,
                        position_ids=tree.position_ids + len(seq), return_hidden=True,
                        check_ids=False)
            out.forward_passes += 1
            laps.lap("tree pass")
            # evaluate_posterior: the longest accepted path
            best, accepted = _evaluate_posterior(step.logits[0], tree_tokens,
                                                 tree.retrieve_indices, temperature,
                                                 posterior_threshold, posterior_alpha)
            laps.lap("acceptance")
            # update_inference_inputs: keep the prefix and the accepted path in the cache
            nodes = tree.retrieve_indices[best, : accepted + 1]  # root first
            keep = torch.cat([torch.arange(len(seq), device=nodes.device), nodes + len(seq)])
            past = select_cache(step.past, keep)
            accepted_tokens = tree_tokens[nodes].tolist()
            laps.lap("cache update")
            if trace:
                out.steps.append(MedusaStep(len(seq), tree, tree_tokens.tolist(),
                                            nodes.tolist(), accepted))
            out.accepted.append(accepted)
            new += accepted_tokens
            seq += accepted_tokens
            logits, hidden = step.logits[0, nodes[-1]], step.hidden[0, nodes[-1]]
            laps.lap("bookkeeping")
            if len(new) >= max_new_tokens:
                break
    laps.lap("bookkeeping")  # the last root, when it needs no pass
    out.cpu_seconds = laps.seconds
    out.new_tokens = max_new_tokens
    out.tokens = torch.cat([prompt, prompt.new_tensor(new[:max_new_tokens])[None]], dim=1)
    return out
