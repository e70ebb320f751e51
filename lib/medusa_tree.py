"""Medusa's tree of candidates: choices, the buffers that verify them in one pass, trees grown
from measured head accuracies.

Chapter 9 (equation numbers refer to it). Cai et al. (2024), "Medusa: simple LLM inference
acceleration framework with multiple decoding heads"; the tree attention of Miao et al.
(2023), "SpecInfer".

A tree is a list of *choices*, each a path of top-k ranks, one per depth: ``(0,)`` is head
1's most likely token, ``(0, 1)`` is head 2's second most likely token placed after it,
``(1,)`` head 1's second choice. Every prefix of a path must itself be a choice (a node's
parent is in the tree). Node 0 is the *root*, the base model's own next token; the choices
become nodes 1..n sorted by (depth, path), so that every node comes after its ancestors
(the order a causal mask needs).

* :func:`build_tree` (eqs. 9-10): the :class:`TreeBuffers` of a choice list: the tree
  attention mask, where each candidate token sits in the flattened top-k predictions, the
  position ids (depths) and the root-to-leaf paths.
* :data:`DEFAULT_CHOICES`: a small tree for four heads.
* :func:`grow_tree` (eq. 12): the ``size`` most probable paths, given each head's top-k
  accuracies, added best first; :func:`expected_tokens_per_step` (eq. 11) is the mean
  number of tokens one verification step yields if the heads' errors are independent.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .validate import check_positive_int, check_tensor

Path = tuple[int, ...]

# Four heads, 20 nodes: the top-3 of head 1, the top-2 of head 2 after each, and chains of
# top-1 guesses behind the most likely paths (the shape of Medusa's trees, but small).
DEFAULT_CHOICES: tuple[Path, ...] = (
    (0,), (1,), (2,),
    (0, 0), (0, 1), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 2), (2, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0), (0, 0, 0, 2),
)


def check_choices(choices, topk: int, name: str = "choices") -> list[Path]:
    """Validate a list of paths of top-k ranks; return them as tuples sorted by (depth, path).

    Raises TypeError for a non-sequence, a path that is not a tuple/list of ints; ValueError
    for an empty path, a rank outside [0, topk), a duplicate path, or a path whose parent
    (the path without its last rank) is missing.
    """
    check_positive_int(topk, "topk")
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise TypeError(f"{name} must be a list of paths (tuples of top-k ranks), "
                        f"got {type(choices).__name__}")
    paths: dict[Path, int] = {}
    for i, path in enumerate(choices):
        if not isinstance(path, (tuple, list)):
            raise TypeError(f"{name}[{i}] must be a tuple of ints, got {type(path).__name__}")
        if not path:
            raise ValueError(f"{name}[{i}] is an empty path: every choice needs at least one "
                             f"rank (the root, node 0, is always in the tree)")
        for rank in path:
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise TypeError(f"{name}[{i}] = {path!r} must hold ints, "
                                f"got {type(rank).__name__}")
            if not 0 <= rank < topk:
                raise ValueError(f"{name}[{i}] = {tuple(path)} has rank {rank}, outside "
                                 f"[0, topk) = [0, {topk})")
        key = tuple(path)
        if key in paths:
            raise ValueError(f"{name}[{i}] = {key} duplicates {name}[{paths[key]}]")
        paths[key] = i
    for key, i in paths.items():
        if len(key) > 1 and key[:-1] not in paths:
            raise ValueError(f"{name}[{i}] = {key} has no parent: {key[:-1]} is not in {name}")
    return sorted(paths, key=lambda p: (len(p), p))


@dataclass(frozen=True)
class TreeBuffers:
    """The tensors that verify a tree of candidates in one forward pass (T = nodes + 1).

    attn_mask: bool (T, T), True where node i may attend to node j: j is i, an ancestor of
    i, or the root (eq. 10). tree_indices: long (T,), node i's token is
    ``candidates[tree_indices[i]]`` where ``candidates`` is the root token followed by the
    flattened (heads x topk) top-k predictions (eq. 9). position_ids: long (T,), the depth
    (root 0). retrieve_indices: long (leaves, max_depth + 1), each row the node ids of one
    root-to-leaf path, padded with -1. parents: long (T,), the parent node (-1 for the root).
    choices: the paths of nodes 1..T-1, in node order; topk: the ranks per depth.
    """

    choices: tuple[Path, ...]
    topk: int
    attn_mask: torch.Tensor
    tree_indices: torch.Tensor
    position_ids: torch.Tensor
    retrieve_indices: torch.Tensor
    parents: torch.Tensor

    @property
    def size(self) -> int:
        """T, the number of nodes including the root."""
        return len(self.choices) + 1

    @property
    def depth(self) -> int:
        """The longest path (0 for a tree that is only the root)."""
        return self.retrieve_indices.shape[1] - 1

    def to(self, device: torch.device | str) -> TreeBuffers:
        """The same buffers on ``device``."""
        return replace(self, **{name: getattr(self, name).to(device) for name in
                                ("attn_mask", "tree_indices", "position_ids",
                                 "retrieve_indices", "parents")})


def build_tree(choices: Sequence[Sequence[int]], topk: int) -> TreeBuffers:
    """The :class:`TreeBuffers` of ``choices`` (paths of top-k ranks, see the module doc).

    ``build_tree([(0,), (1,), (0, 0)], topk=2)`` has nodes root, (0,), (1,), (0, 0):
    attn_mask rows [1000], [1100], [1010], [1101]; tree_indices [0, 1, 2, 3];
    position_ids [0, 1, 1, 2]; retrieve_indices [[0, 2, -1], [0, 1, 3]].
    An empty list gives the root alone (plain decoding: one token per step).
    As Medusa's ``generate_medusa_buffers``: the same node order, mask, depths and -1
    padding; the stride of tree_indices is ``topk`` (Medusa's is a fixed TOPK = 10) and
    the rows of retrieve_indices list the leaves in node order (Medusa's from the last
    choice backwards), which changes no accepted path.
    """
    paths = check_choices(choices, topk)
    node = {p: i + 1 for i, p in enumerate(paths)}  # node ids; the root is 0
    t = len(paths) + 1
    mask = torch.eye(t, dtype=torch.bool)
    mask[:, 0] = True  # every node sees the root
    parents = torch.full((t,), -1, dtype=torch.long)
    tree_indices = torch.zeros(t, dtype=torch.long)
    position_ids = torch.zeros(t, dtype=torch.long)
    for p, i in node.items():
        depth = len(p)
        for d in range(1, depth):  # the ancestors p[:1], ..., p[:depth - 1]
            mask[i, node[p[:d]]] = True
        parents[i] = node[p[:-1]] if depth > 1 else 0
        tree_indices[i] = 1 + (depth - 1) * topk + p[-1]  # head depth's rank p[-1]
        position_ids[i] = depth
    has_child = {p[:-1] for p in paths if len(p) > 1}
    leaves = [p for p in paths if p not in has_child]
    max_depth = max((len(p) for p in paths), default=0)
    retrieve = torch.full((max(1, len(leaves)), max_depth + 1), -1, dtype=torch.long)
    retrieve[:, 0] = 0
    for row, leaf in enumerate(leaves):
        for d in range(1, len(leaf) + 1):
            retrieve[row, d] = node[leaf[:d]]
    return TreeBuffers(tuple(paths), topk, mask, tree_indices, position_ids, retrieve, parents)


def prune_tree(tree: TreeBuffers, max_depth: int) -> TreeBuffers:
    """The subtree of nodes at depth <= ``max_depth`` (near the end of a generation, where
    deeper candidates could not be used or would pass the model's last position)."""
    check_positive_int(max_depth, "max_depth", minimum=0)
    if max_depth >= tree.depth:
        return tree
    kept = [p for p in tree.choices if len(p) <= max_depth]
    return build_tree(kept, tree.topk).to(tree.attn_mask.device)


def _check_accuracy(accuracy) -> torch.Tensor:
    """(heads, topk) cumulative top-k accuracies: finite, in [0, 1], non-decreasing in k."""
    accuracy = torch.as_tensor(accuracy, dtype=torch.float64) if isinstance(
        accuracy, (list, tuple)) else accuracy
    check_tensor(accuracy, "accuracy", ndim=2)
    if not accuracy.is_floating_point():
        raise TypeError(f"accuracy must be floating point, got {accuracy.dtype}")
    if accuracy.numel() == 0:
        raise ValueError(f"accuracy must hold at least one head and one rank, "
                         f"got shape {tuple(accuracy.shape)}")
    a = accuracy.detach().double().cpu()
    if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
        raise ValueError("accuracy must hold finite values in [0, 1]")
    if (a.diff(dim=1) < -1e-12).any():
        raise ValueError("accuracy[k, j] is the top-(j+1) accuracy of head k+1: it must not "
                         "decrease along j")
    return a


def rank_probabilities(accuracy) -> torch.Tensor:
    """P(head k's rank-j token is the right one) from cumulative top-k accuracies (K, topk):
    top-(j+1) minus top-j accuracy."""
    a = _check_accuracy(accuracy)
    return torch.cat([a[:, :1], a.diff(dim=1)], dim=1).clamp_min(0.0)


def expected_tokens_per_step(choices: Sequence[Sequence[int]], accuracy) -> float:
    """Mean tokens one verification step yields (eq. 11), if the heads' hits are independent:
    1 (the root) + the sum over nodes of the product of their ranks' probabilities.

    accuracy: (K, topk) cumulative top-k accuracies of heads 1..K; choices deeper than K or
    with ranks >= topk are refused.
    """
    r = rank_probabilities(accuracy)
    paths = check_choices(choices, r.shape[1])
    total = 1.0
    for p in paths:
        if len(p) > r.shape[0]:
            raise ValueError(f"choices hold a path of depth {len(p)}, deeper than the "
                             f"{r.shape[0]} heads of accuracy")
        total += float(torch.prod(r[torch.arange(len(p)), torch.tensor(p)]))
    return total


def grow_tree(accuracy, size: int) -> list[Path]:
    """The ``size`` most probable paths (eq. 12), added best first; a valid tree at every size.

    accuracy: (K, topk) cumulative top-k accuracies (row k: head k+1; column j: top-(j+1)).
    A path's probability is the product of its ranks' probabilities (independent heads);
    a child is never more probable than its parent, so adding the most probable path not yet
    in the tree, among the children of the tree's nodes, keeps every parent in the tree and
    maximises :func:`expected_tokens_per_step` for each size. Ties go to the smaller path.
    """
    r = rank_probabilities(accuracy)
    check_positive_int(size, "size", minimum=0)
    n_heads, topk = r.shape
    frontier = [(-float(r[0, j]), (j,)) for j in range(topk)]
    heapq.heapify(frontier)
    chosen: list[Path] = []
    while frontier and len(chosen) < size:
        neg_prob, path = heapq.heappop(frontier)
        chosen.append(path)
        if len(path) < n_heads:
            for j in range(topk):
                heapq.heappush(frontier, (neg_prob * float(r[len(path), j]), path + (j,)))
    if len(chosen) < size:
        raise ValueError(f"size={size} exceeds the {len(chosen)} paths that {n_heads} heads "
                         f"with top-{topk} can form")
    return chosen
