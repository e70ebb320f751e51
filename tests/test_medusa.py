"""lib/medusa.py, lib/medusa_tree.py, lib/medusa_accept.py: tree buffers written by hand,
trees grown from accuracies against simulation, head training and its shifted targets,
greedy Medusa equal to plain greedy decoding, the speculative rule against the target
distribution (chi-square), typical acceptance, bad input."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lib.corpus import Vocabulary, load_text
from lib.medusa import (
    MedusaHeads,
    head_accuracy,
    medusa_generate,
    medusa_loss,
    train_medusa_heads,
)
from lib.medusa_accept import (
    greedy_accept,
    speculative_sample,
    typical_accept,
    typical_threshold,
)
from lib.medusa_tree import (
    DEFAULT_CHOICES,
    build_tree,
    check_choices,
    expected_tokens_per_step,
    grow_tree,
    prune_tree,
    rank_probabilities,
)
from lib.training import train_lm
from lib.transformer import TinyLM, TinyLMConfig

T, F = True, False


# ----------------------------------------------------------------------- build_tree


def test_build_tree_by_hand():
    """Root, (0,), (1,), (0, 0), (0, 1) with topk 2: every buffer written out."""
    tree = build_tree([(0, 1), (1,), (0,), (0, 0)], topk=2)  # order of the input is free
    assert tree.choices == ((0,), (1,), (0, 0), (0, 1))
    assert tree.attn_mask.tolist() == [
        [T, F, F, F, F],  # root
        [T, T, F, F, F],  # (0,)
        [T, F, T, F, F],  # (1,)
        [T, T, F, T, F],  # (0, 0): root, (0,), itself
        [T, T, F, F, T],  # (0, 1)
    ]
    # candidates = [root, head1 rank0, head1 rank1, head2 rank0, head2 rank1]
    assert tree.tree_indices.tolist() == [0, 1, 2, 3, 4]
    assert tree.position_ids.tolist() == [0, 1, 1, 2, 2]
    assert tree.retrieve_indices.tolist() == [[0, 2, -1], [0, 1, 3], [0, 1, 4]]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1]
    assert tree.size == 5 and tree.depth == 2 and tree.topk == 2


def test_build_tree_by_hand_deeper():
    """A chain of three behind (1,) and a branch, topk 3 (indices 1 + (depth-1)*3 + rank)."""
    tree = build_tree([(0,), (1,), (2,), (1, 0), (1, 2), (1, 0, 1)], topk=3)
    assert tree.attn_mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 0, 0, 1, 0, 0, 0],
        [1, 0, 1, 0, 1, 0, 0],  # (1, 0)
        [1, 0, 1, 0, 0, 1, 0],  # (1, 2)
        [1, 0, 1, 0, 1, 0, 1],  # (1, 0, 1): root, (1,), (1, 0), itself
    ]
    assert tree.tree_indices.tolist() == [0, 1, 2, 3, 4, 6, 8]
    assert tree.position_ids.tolist() == [0, 1, 1, 1, 2, 2, 3]
    assert tree.retrieve_indices.tolist() == [
        [0, 1, -1, -1], [0, 3, -1, -1], [0, 2, 5, -1], [0, 2, 4, 6]]


def test_build_tree_docstring_example_and_root_only():
    tree = build_tree([(0,), (1,), (0, 0)], topk=2)
    assert tree.attn_mask.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0],
                                             [1, 1, 0, 1]]
    assert tree.retrieve_indices.tolist() == [[0, 2, -1], [0, 1, 3]]
    root = build_tree([], topk=1)
    assert root.attn_mask.tolist() == [[True]] and root.retrieve_indices.tolist() == [[0]]
    assert root.size == 1 and root.depth == 0


@st.composite
def trees(draw):
    """A random valid choice list: each new path extends an existing node by a free rank."""
    topk = draw(st.integers(1, 4))
    paths = [()]
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(paths))
        free = [r for r in range(topk) if parent + (r,) not in paths]
        if len(parent) < 5 and free:
            paths.append(parent + (draw(st.sampled_from(free)),))
    return paths[1:], topk


@settings(max_examples=60, deadline=None)
@given(trees())
def test_build_tree_properties(case):
    """The mask is 'ancestor or self' (via parents), positions are depths, the retrieve rows
    are exactly the root-to-leaf paths, every node's token index names its head and rank."""
    choices, topk = case
    tree = build_tree(choices, topk)
    n = tree.size
    ancestors = []
    for i in range(n):
        chain, j = {i}, i
        while tree.parents[j] >= 0:
            j = int(tree.parents[j])
            chain.add(j)
        ancestors.append(chain)
    expected = [[j in ancestors[i] for j in range(n)] for i in range(n)]
    assert tree.attn_mask.tolist() == expected
    assert all(tree.parents[i] < i for i in range(1, n))  # topological order
    for i, path in enumerate(tree.choices, start=1):
        assert tree.position_ids[i] == len(path) == len(ancestors[i]) - 1
        assert tree.tree_indices[i] == 1 + (len(path) - 1) * topk + path[-1]
    rows = {tuple(r for r in row if r >= 0) for row in tree.retrieve_indices.tolist()}
    leaves = set(range(n)) - {int(p) for p in tree.parents[1:]} if n > 1 else {0}
    assert rows == {tuple(sorted(ancestors[leaf])) for leaf in leaves}


@pytest.mark.parametrize(
    "choices, error, match",
    [
        ([(0,), ()], ValueError, r"choices\[1\] is an empty path"),
        ([(0,), (2,)], ValueError, r"choices\[1\] = \(2,\) has rank 2, outside \[0, topk\)"),
        ([(0,), (0, -1)], ValueError, "has rank -1"),
        ([(0,), (1,), (0,)], ValueError, r"choices\[2\] = \(0,\) duplicates choices\[0\]"),
        ([(0,), [0]], ValueError, "duplicates"),
        ([(0,), (1, 0)], ValueError, r"\(1, 0\) has no parent: \(1,\) is not in choices"),
        ([(0, 0, 0), (0,)], ValueError, r"\(0, 0, 0\) has no parent"),
        ("0,1", TypeError, "choices must be a list of paths"),
        ([0, 1], TypeError, r"choices\[0\] must be a tuple of ints"),
        ([(0.0,)], TypeError, "must hold ints"),
        ([(True,)], TypeError, "must hold ints"),
        ([("0",)], TypeError, "must hold ints"),
    ],
)
def test_bad_choices_are_named(choices, error, match):
    with pytest.raises(error, match=match):
        build_tree(choices, topk=2)


def test_default_tree_and_pruning():
    tree = build_tree(DEFAULT_CHOICES, topk=3)
    assert tree.size == len(DEFAULT_CHOICES) + 1 and tree.depth == 4
    pruned = prune_tree(tree, 2)
    assert pruned.choices == tuple(p for p in tree.choices if len(p) <= 2)
    assert torch.equal(pruned.attn_mask, tree.attn_mask[: pruned.size, : pruned.size])
    assert prune_tree(tree, 9) is tree and prune_tree(tree, 0).size == 1


# ------------------------------------------------------------------ growing a tree


ACC = torch.tensor([[0.6, 0.75, 0.8], [0.35, 0.45, 0.5], [0.2, 0.3, 0.34]])


def test_rank_probabilities_and_grow_tree_by_hand():
    r = rank_probabilities(ACC)
    torch.testing.assert_close(r, torch.tensor([[0.6, 0.15, 0.05], [0.35, 0.1, 0.05],
                                                [0.2, 0.1, 0.04]], dtype=torch.float64))
    # path probabilities: (0,) .6, (0,0) .21, (1,) .15, (0,1) .06, (0,0,0) .042, (2,) .05,
    # (1,0) .0525: best first
    assert grow_tree(ACC, 5) == [(0,), (0, 0), (1,), (0, 1), (1, 0)]
    assert grow_tree(ACC, 0) == []


def test_grown_tree_is_the_most_probable_paths():
    """Brute force: the grown tree is the set of the n most probable paths of all paths."""
    r = rank_probabilities(ACC)
    every = [p for d in range(1, 4) for p in itertools.product(range(3), repeat=d)]
    prob = {p: math.prod(float(r[i, j]) for i, j in enumerate(p)) for p in every}
    ranked = sorted(every, key=lambda p: (-prob[p], p))
    for n in (1, 3, 8, 20, len(every)):
        grown = grow_tree(ACC, n)
        assert sorted(grown) == sorted(ranked[:n])
        check_choices(grown, 3)  # every prefix of a grown tree is a valid tree
    # ... and no other tree of the same size promises more tokens per step (eq. 11)
    gen = np.random.default_rng(0)
    for _ in range(200):
        paths, frontier = [], [(j,) for j in range(3)]
        while len(paths) < 8:
            p = frontier.pop(gen.integers(len(frontier)))
            paths.append(p)
            frontier += [p + (j,) for j in range(3)] if len(p) < 3 else []
        assert expected_tokens_per_step(paths, ACC) <= expected_tokens_per_step(
            grow_tree(ACC, 8), ACC) + 1e-12


def test_expected_tokens_per_step_against_simulation():
    """Eq. 11 against a simulation of independent heads: at depth d the right token has
    rank j with probability r[d, j] (or no rank at all); a step keeps the root and the
    deepest node of the tree whose path is right all the way."""
    choices = [(0,), (1,), (2,), (0, 0), (0, 2), (1, 1), (0, 0, 0), (0, 2, 1), (1, 1, 2)]
    r = rank_probabilities(ACC).numpy()
    gen = np.random.default_rng(1)
    n = 200_000
    ranks = np.stack([gen.choice(4, size=n, p=np.append(r[d], 1 - r[d].sum()))
                      for d in range(3)], axis=1)  # rank 3 = missed
    tree = set(choices)
    tokens = np.ones(n)
    for depth in (1, 2, 3):
        inside = np.array([tuple(row[:depth]) in tree for row in ranks.tolist()])
        tokens += inside
    expected = expected_tokens_per_step(choices, ACC)
    sigma = tokens.std() / math.sqrt(n)
    assert abs(tokens.mean() - expected) < 4 * sigma  # 4 standard errors of the mean


# --------------------------------------------------------------- heads and training


def test_new_heads_are_the_base_output_layer():
    """ResBlock starts at zero, the linear layer is a copy: head logits = base logits."""
    torch.manual_seed(0)
    base = TinyLM(TinyLMConfig(13, 16, 2, 1, 20)).eval()
    heads = MedusaHeads.from_base(base, num_heads=3, num_layers=2)
    out = base(torch.randint(0, 13, (2, 7)), return_hidden=True)
    logits = heads(out.hidden)
    assert logits.shape == (3, 2, 7, 13)
    for k in range(3):
        torch.testing.assert_close(logits[k], out.logits, rtol=0, atol=0)


def test_medusa_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 3, 5)
    targets = torch.randint(0, 5, (1, 2, 3))
    manual = sum(0.8 ** (k + 1) * -torch.log_softmax(logits[k, 0], -1)[
        torch.arange(3), targets[0, k]].mean() for k in range(2))
    torch.testing.assert_close(medusa_loss(logits, targets), manual, rtol=1e-6, atol=1e-6)


def test_heads_learn_their_own_shift_and_base_stays_frozen():
    """On a cycle 0, 1, ..., V-1, 0, ... head k must learn x + k + 1 (mod V); checked by an
    explicit loop over positions, not by the library's own target code. A head trained on
    the wrong shift would score 0 here."""
    v = 7
    torch.manual_seed(0)
    base = TinyLM(TinyLMConfig(v, 16, 2, 1, 24)).eval()
    before = {k: p.clone() for k, p in base.state_dict().items()}
    heads = MedusaHeads.from_base(base, num_heads=3)
    stream = torch.arange(400) % v
    losses = train_medusa_heads(base, heads, stream, steps=150, batch_size=8, seq_len=16,
                                lr=3e-2, progress=False)
    assert losses[-1] < 0.05 * losses[0]
    assert all(torch.equal(before[k], p) for k, p in base.state_dict().items())
    assert not base.training
    x = stream[:16][None]
    logits = heads(base(x, return_hidden=True).hidden)  # (K, 1, 16, V)
    for k in range(3):
        for t in range(16):
            assert int(logits[k, 0, t].argmax()) == (int(x[0, t]) + k + 2) % v
    acc = head_accuracy(base, heads, stream, topk=2, seq_len=16)
    assert acc.shape == (4, 2)
    torch.testing.assert_close(acc[1:], torch.ones(3, 2, dtype=torch.float64))


def test_head_accuracy_against_a_loop():
    torch.manual_seed(0)
    base = TinyLM(TinyLMConfig(9, 16, 2, 1, 12)).eval()
    heads = MedusaHeads.from_base(base, num_heads=2)
    with torch.no_grad():
        for h in heads.heads:
            h[0].linear.weight.normal_(0, 0.5)
    stream = torch.randint(0, 9, (100,), generator=torch.Generator().manual_seed(1))
    acc = head_accuracy(base, heads, stream, topk=3, seq_len=12, batch_size=2)
    hits, count = torch.zeros(3, 3, dtype=torch.float64), 0
    for start in range(0, 100 - 12 - 2, 12):
        x = stream[start : start + 12][None]
        out = base(x, return_hidden=True)
        rows = torch.cat([out.logits[None], heads(out.hidden)])  # (3, 1, 12, V)
        for t in range(12):
            count += 1
            for k in range(3):
                rank = (rows[k, 0, t] > rows[k, 0, t, stream[start + t + k + 1]]).sum()
                hits[k] += (torch.arange(3) >= rank).double()
    torch.testing.assert_close(acc, hits / count, rtol=0, atol=1e-12)
    # a batch of sequences gives the same as one window each
    windows = torch.stack([stream[s : s + 15] for s in range(0, 85, 12)])
    torch.testing.assert_close(head_accuracy(base, heads, windows, topk=3), acc,
                               rtol=0, atol=1e-12)
    # start=5 counts positions 5..11 of every window only: the loop's hits there
    hits, count = torch.zeros(3, 3, dtype=torch.float64), 0
    for x in windows:
        out = base(x[None, :12], return_hidden=True)
        rows = torch.cat([out.logits[None], heads(out.hidden)])
        for t in range(5, 12):
            count += 1
            for k in range(3):
                rank = (rows[k, 0, t] > rows[k, 0, t, x[t + k + 1]]).sum()
                hits[k] += (torch.arange(3) >= rank).double()
    torch.testing.assert_close(head_accuracy(base, heads, windows, topk=3, start=5),
                               hits / count, rtol=0, atol=1e-12)


# ------------------------------------------------ greedy Medusa equals greedy decoding


def perturbed(seed=0, vocab=11):
    """A random TinyLM and heads with weights large enough for varied argmaxes."""
    torch.manual_seed(seed)
    base = TinyLM(TinyLMConfig(vocab, 32, 4, 2, 80)).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 2.0 if "emb" in name else 0.5)
    heads = MedusaHeads.from_base(base, num_heads=3)
    with torch.no_grad():
        for h in heads.heads:
            h[0].linear.weight.normal_(0, 0.3)
    return base, heads


@pytest.fixture(scope="module")
def trained():
    """A small TinyLM trained on Python's docs (a few seconds) and its heads."""
    torch.manual_seed(0)
    text = load_text("python-docs")[:60000]
    tokens = Vocabulary.chars(text).encode(text)
    base = TinyLM(TinyLMConfig(int(tokens.max()) + 1, 32, 2, 2, 96))
    train_lm(base, tokens, 250, batch_size=16, seq_len=48, lr=1e-2, progress=False)
    heads = MedusaHeads.from_base(base, num_heads=3)
    train_medusa_heads(base, heads, tokens, 60, batch_size=16, seq_len=48, lr=1e-2,
                       progress=False)
    return base.eval(), heads, tokens


TREES = [[(0,), (1,), (0, 0), (1, 0), (0, 1), (0, 0, 0)], [(0,), (0, 0), (0, 0, 0)],
         [(0,), (1,), (2,), (3,)], []]


@pytest.mark.parametrize("choices", TREES)
def test_greedy_medusa_is_greedy_decoding_random_model(choices):
    base, heads = perturbed()
    accepted = []
    for s in range(20):
        prompt = torch.randint(0, 11, (1, 1 + s % 9), generator=torch.Generator().manual_seed(s))
        n = 40 + s
        out = medusa_generate(base, heads, prompt, n, choices, trace=True)
        assert torch.equal(out.tokens, base.generate(prompt, n)), f"prompt {s}"
        assert out.forward_passes == 1 + len(out.accepted) == 1 + len(out.steps)
        # each step yields its root and its accepted candidates; a last root may follow
        assert sum(a + 1 for a in out.accepted) in (n - 1, n)
        accepted += out.accepted
    depth = max((len(c) for c in choices), default=0)
    # the test means something: every accepted length from 0 to the depth occurs
    assert set(accepted) == set(range(depth + 1))


def test_greedy_medusa_is_greedy_decoding_trained_model(trained):
    base, heads, tokens = trained
    seen = set()
    for s in range(24):
        prompt = tokens[s * 2000 : s * 2000 + 1 + s % 9][None]
        for choices in (TREES[0], DEFAULT_CHOICES[:14]):
            out = medusa_generate(base, heads, prompt, 60, choices)
            assert torch.equal(out.tokens, base.generate(prompt, 60)), f"prompt {s}"
            seen |= set(out.accepted)
    assert seen == {0, 1, 2, 3}
    out = medusa_generate(base, heads, tokens[:5][None], 90, TREES[0])  # pruned near max_len
    assert torch.equal(out.tokens, base.generate(tokens[:5][None], 90))
    assert out.tokens_per_forward > 1.0 and medusa_generate(base, heads, tokens[:5][None],
                                                            0).tokens.shape == (1, 5)


def test_profile_sums_the_phases_of_the_same_decoding():
    """profile=True changes no token and times every phase of the loop; its phases add up
    to the process CPU time of the whole call (the clock is read between phases only)."""
    base, heads = perturbed(seed=2)
    prompt = torch.tensor([[1, 2, 3, 4]])
    plain = medusa_generate(base, heads, prompt, 30, TREES[0])
    start = time.process_time()
    out = medusa_generate(base, heads, prompt, 30, TREES[0], profile=True)
    total = time.process_time() - start
    assert torch.equal(out.tokens, plain.tokens) and plain.cpu_seconds is None
    assert set(out.cpu_seconds) == {"prefill", "draft", "tree pass", "acceptance",
                                    "cache update", "bookkeeping"}
    assert all(v >= 0 for v in out.cpu_seconds.values())
    # the validation before the first lap is the only part outside the phases
    assert sum(out.cpu_seconds.values()) <= total
    assert sum(out.cpu_seconds.values()) > 0.5 * total
    assert medusa_generate(base, heads, prompt, 0, profile=True).cpu_seconds == {}


def test_greedy_medusa_with_the_triton_attention():
    """The same tokens when TinyLM's attention runs the Triton kernel (tree mask included),
    through the interpreter on a CPU."""
    base, heads = perturbed(seed=3)
    tri = TinyLM(base.config, backend="triton").eval()
    tri.load_state_dict(base.state_dict())
    prompt = torch.tensor([[1, 2, 3]])
    out = medusa_generate(tri, heads, prompt, 8, [(0,), (1,), (0, 0)])
    assert torch.equal(out.tokens, base.generate(prompt, 8))


def test_typical_acceptance_decodes_and_accepts_at_least_greedy(trained):
    base, heads, tokens = trained
    prompt = tokens[100:110][None]
    greedy = medusa_generate(base, heads, prompt, 60, TREES[0])
    for temperature in (0.5, 1.0):
        typical = medusa_generate(base, heads, prompt, 60, TREES[0], temperature=temperature)
        assert typical.tokens.shape == (1, 70)
        assert typical.tokens[0, 10] == greedy.tokens[0, 10]  # the root is the argmax
        # same first state: the typical step accepts at least the greedy one
        assert typical.accepted[0] >= greedy.accepted[0]


def test_typical_accept_rules():
    """Threshold against SciPy's entropy; the argmax always passes, so along any path
    typical acceptance keeps at least what greedy acceptance keeps."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 9, generator=gen) * 3  # L = 6 paths, depth 3
    probs = torch.softmax(logits, -1)
    h = torch.tensor(stats.entropy(probs.double().numpy(), axis=-1))
    expected = torch.minimum(torch.full_like(h, 0.09), 0.3 * torch.exp(-h))
    torch.testing.assert_close(typical_threshold(probs).double(), expected, rtol=1e-5, atol=1e-7)
    candidates = torch.randint(0, 9, (6, 4), generator=gen)
    candidates[:3, 1:] = logits[:3, :-1].argmax(-1)  # three paths of argmaxes
    candidates[0, 3] = (candidates[0, 3] + 1) % 9
    valid = torch.ones(6, 4, dtype=torch.bool)
    valid[5, 2:] = False
    g = greedy_accept(logits.argmax(-1), candidates, valid)
    assert g[:3].tolist() == [2, 3, 3] and g[5] <= 1
    for temperature in (0.3, 1.0, 3.0):
        t, loglik = typical_accept(logits, candidates, valid, temperature)
        assert (t >= g).all() and (t[5] <= 1) and torch.isfinite(loglik).all()


# ------------------------------------------------------------- speculative sampling


def chain(v, seed):
    gen = torch.Generator().manual_seed(seed)
    p1 = torch.softmax(torch.randn(v, generator=gen, dtype=torch.float64) * 1.5, -1)
    p2 = torch.softmax(torch.randn(v, v, generator=gen, dtype=torch.float64) * 1.5, -1)
    return p1, p2


def two_tokens(rule, n=200_000, v=4, seed=0):
    """Sample the first two tokens of a sequence: a draft chain (q) proposes two tokens,
    ``rule`` verifies them against the target chain (p), and a sequence that got only one
    token takes its second from the target, as the next round would."""
    p1, p2 = chain(v, 1)
    q1, q2 = chain(v, 2)
    q1[0] = 0.0  # the draft never proposes a token the target likes
    q1 /= q1.sum()
    gen = torch.Generator().manual_seed(seed)
    d1 = torch.multinomial(q1.expand(n, v), 1, generator=gen)[:, 0]
    d2 = torch.multinomial(q2[d1], 1, generator=gen)[:, 0]
    p = torch.stack([p1.expand(n, v), p2[d1], p2[d2]], dim=1)  # (n, 3, V)
    q = torch.stack([q1.expand(n, v), q2[d1]], dim=1)
    tokens, count = rule(p, q, torch.stack([d1, d2], 1), gen)
    second = torch.where(count >= 2, tokens[:, 1],
                         torch.multinomial(p2[tokens[:, 0]], 1, generator=gen)[:, 0])
    observed = torch.bincount(tokens[:, 0] * v + second, minlength=v * v).double()
    return observed, (p1[:, None] * p2).flatten() * n


def exact_rule(p, q, draft, gen):
    out = speculative_sample(p, q, draft, gen)
    return out.tokens, out.num_tokens


def test_speculative_sampling_keeps_the_target_distribution():
    """Chi-square goodness of fit of the first two tokens (16 cells, 15 degrees of freedom)
    over 200,000 sequences. Under the null, p < 1e-3 happens for one seed in a thousand; the
    seed is fixed, so the test is deterministic."""
    observed, expected = two_tokens(exact_rule)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_chi_square_catches_a_wrong_rule():
    """The same test rejects two plausible-looking mistakes: accepting every draft token the
    target finds plausible (p > 0.1, a threshold rule like typical acceptance) and sampling
    afresh otherwise, and resampling from p instead of the residual max(0, p - q) after a
    rejection."""

    def accept_if_plausible(p, q, draft, gen):
        ok = p[:, :2].gather(-1, draft[..., None])[..., 0] > 0.1
        n_acc = ok.long().cumprod(1).sum(1)
        nxt = torch.multinomial(p[torch.arange(len(p)), n_acc], 1, generator=gen)[:, 0]
        tokens = torch.cat([draft, nxt[:, None]], 1)
        tokens[torch.arange(len(p)), n_acc] = nxt
        return tokens, n_acc + 1

    def resample_from_p(p, q, draft, gen):
        n = p.shape[0]
        out = speculative_sample(p, q, draft, gen)
        rejected = out.num_tokens <= 2
        rows = torch.arange(n)
        fresh = torch.multinomial(p[rows, out.num_tokens - 1], 1, generator=gen)[:, 0]
        tokens = out.tokens.clone()
        tokens[rows[rejected], (out.num_tokens - 1)[rejected]] = fresh[rejected]
        return tokens, out.num_tokens

    for rule in (accept_if_plausible, resample_from_p):
        observed, expected = two_tokens(rule)
        assert stats.chisquare(observed, expected).pvalue < 1e-10, rule.__name__


def test_speculative_acceptance_rate_is_sum_of_min():
    """Leviathan et al.: a draft token is accepted with probability sum_x min(p(x), q(x))."""
    p1, _ = chain(6, 3)
    q1, _ = chain(6, 4)
    n = 100_000
    gen = torch.Generator().manual_seed(0)
    draft = torch.multinomial(q1.expand(n, 6), 1, generator=gen)
    p = torch.stack([p1, p1], 0).expand(n, 2, 6)
    out = speculative_sample(p, q1.expand(n, 1, 6), draft, gen)
    alpha = torch.minimum(p1, q1).sum().item()
    rate = (out.num_tokens == 2).double().mean().item()
    assert abs(rate - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / n)  # 4 binomial sigmas
    assert ((out.tokens[:, 0] == draft[:, 0]) | (out.num_tokens == 1)).all()


# ------------------------------------------------------------------------- bad input

BASE, HEADS = perturbed()
P = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], dtype=torch.float64)
Q = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64)
D = torch.tensor([[0]])
PROMPT = torch.tensor([[1, 2]])
STREAM = torch.arange(200) % 11


@pytest.mark.parametrize(
    "call, error, match",
    [
        # heads: sizes, types, the hidden state
        (lambda: MedusaHeads(0, 5), ValueError, "hidden_size must be at least 1"),
        (lambda: MedusaHeads(8, 5.0), TypeError, "vocab_size must be an int"),
        (lambda: MedusaHeads(8, 5, num_heads="4"), TypeError, "num_heads must be an int"),
        (lambda: MedusaHeads(8, 5, num_layers=-1), ValueError, "num_layers must be at least 0"),
        (lambda: MedusaHeads.from_base("base"), TypeError, "base must be a lib.transformer"),
        (lambda: HEADS(torch.randn(2, 31)), ValueError, "last dim hidden_size=32"),
        (lambda: HEADS(torch.zeros(2, 32, dtype=torch.long)), TypeError, "hidden must have"),
        (lambda: HEADS([0.0] * 32), TypeError, "hidden must be a torch.Tensor"),
        # loss and training: shapes, sizes, frozen base, mismatched heads, token ranges
        (lambda: medusa_loss(torch.randn(2, 1, 3, 5), torch.zeros(1, 3, 3, dtype=torch.long)),
         ValueError, r"targets must have shape \(B, K, T\) = \(1, 2, 3\)"),
        (lambda: medusa_loss(torch.randn(2, 1, 3, 5), torch.zeros(1, 2, 3, dtype=torch.long),
                             decay=0), ValueError, "decay must be greater than 0"),
        (lambda: train_medusa_heads(BASE, MedusaHeads(16, 11), STREAM, 1), ValueError,
         "do not fit base"),
        (lambda: train_medusa_heads(BASE, MedusaHeads(32, 11).to("meta"), STREAM, 1), ValueError,
         "heads must be on base's device"),
        (lambda: train_medusa_heads(BASE, "heads", STREAM, 1), TypeError, "heads must be"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM[:19], 1, seq_len=16), ValueError,
         "tokens must hold at least 20"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM.float(), 1), TypeError,
         "tokens must be a LongTensor"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM + 5, 1), ValueError,
         r"tokens must hold values in \[0, 11\)"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM, 1, seq_len=81), ValueError,
         "seq_len=81 exceeds base.max_len=80"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM, 0), ValueError, "steps must be"),
        (lambda: train_medusa_heads(BASE, HEADS, STREAM, 1, decay=math.nan), ValueError,
         "decay must be finite"),
        (lambda: head_accuracy(BASE, HEADS, STREAM, topk=12), ValueError, "topk=12 exceeds"),
        (lambda: head_accuracy(BASE, HEADS, STREAM, topk=0), ValueError, "topk must be at"),
        (lambda: head_accuracy(BASE, HEADS, STREAM[None, :4]), ValueError, r"tokens \(B, S\)"),
        (lambda: head_accuracy(BASE, HEADS, STREAM[None, None]), ValueError,
         "tokens must have 1 or 2 dimensions"),
        (lambda: head_accuracy(BASE, HEADS, STREAM[None, :20], start=16), ValueError,
         "start=16 must be below the 16 positions"),
        (lambda: head_accuracy(BASE, HEADS, STREAM, start=-1), ValueError,
         "start must be at least 0"),
        (lambda: head_accuracy(BASE, HEADS, STREAM, start=1.5), TypeError,
         "start must be an int"),
        # generation: the prompt, lengths, temperature, thresholds, trees, trace
        (lambda: medusa_generate(BASE, HEADS, PROMPT.repeat(2, 1), 3), ValueError,
         r"prompt must hold one sequence \(1, P\)"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT.float(), 3), TypeError,
         "prompt must be a LongTensor"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT + 10, 3), ValueError,
         r"prompt must hold values in \[0, 11\)"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT[:, :0], 3), ValueError,
         "prompt must hold at least one"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 79), ValueError, "exceeds base.max_len"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, -1), ValueError, "max_new_tokens must"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3.0), TypeError, "max_new_tokens must"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, temperature=-1.0), ValueError,
         "temperature must be at least 0"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, temperature=math.inf), ValueError,
         "temperature must be finite"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, temperature="0"), TypeError,
         "temperature must be a real"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, posterior_threshold=1.5), ValueError,
         "posterior_threshold must be at most 1"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, posterior_alpha=math.nan), ValueError,
         "posterior_alpha must be finite"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, [(0,), (0, 0), (0, 0, 0),
                                                          (0, 0, 0, 0)]),
         ValueError, "depth 4, but there are only 3 heads"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, [(0,), (1, 0)]), ValueError,
         "has no parent"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, [(11,)] + [(j,) for j in range(11)]),
         ValueError, "duplicates|beyond the vocabulary"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, "tree"), TypeError,
         "choices must be a list of paths"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, grow_tree(torch.full((3, 11), 0.5),
                                                                   128)),
         ValueError, "at most 128 fit"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, trace=1), TypeError,
         "trace must be a bool"),
        (lambda: medusa_generate(BASE, HEADS, PROMPT, 3, profile="yes"), TypeError,
         "profile must be a bool"),
        (lambda: medusa_generate(TinyLM(TinyLMConfig(5, 32, 4, 1, 8)), HEADS, PROMPT, 3),
         ValueError, "do not fit base"),
        # trees from accuracies: rank, range, order, NaN, sizes
        (lambda: grow_tree(torch.tensor([0.5, 0.6]), 2), ValueError,
         "accuracy must have 2 dimensions"),
        (lambda: grow_tree(torch.tensor([[0.6, 0.5]]), 1), ValueError, "must not decrease"),
        (lambda: grow_tree(torch.tensor([[0.5, 1.2]]), 1), ValueError, r"in \[0, 1\]"),
        (lambda: grow_tree(torch.tensor([[math.nan]]), 1), ValueError, "finite values"),
        (lambda: grow_tree(torch.tensor([[1]]), 1), TypeError, "floating point"),
        (lambda: grow_tree(torch.zeros(1, 0), 1), ValueError, "at least one head"),
        (lambda: grow_tree(ACC, 40), ValueError, "size=40 exceeds the 39 paths"),
        (lambda: grow_tree(ACC, -1), ValueError, "size must be at least 0"),
        (lambda: grow_tree(ACC, 2.5), TypeError, "size must be an int"),
        (lambda: expected_tokens_per_step([(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)], ACC),
         ValueError, "deeper than the 3 heads"),
        (lambda: build_tree([(0,)], topk=0), ValueError, "topk must be at least 1"),
        (lambda: prune_tree(build_tree([(0,)], 1), -1), ValueError, "max_depth must be"),
        # speculative sampling: shapes, probabilities, NaN, tokens, dtypes
        (lambda: speculative_sample(P[:, :1], Q, D), ValueError, r"p must be \(B, n \+ 1, V\)"),
        (lambda: speculative_sample(P, Q, D[:, :0]), ValueError, "draft"),
        (lambda: speculative_sample(P * 2, Q, D), ValueError, "every row of p must sum to 1"),
        (lambda: speculative_sample(P, Q - 0.6, D), ValueError, "q must hold finite non-neg"),
        (lambda: speculative_sample(P * math.nan, Q, D), ValueError, "p must hold finite"),
        (lambda: speculative_sample(P, Q, D + 2), ValueError, r"draft must hold values in \[0"),
        (lambda: speculative_sample(P, Q, D.float()), TypeError, "draft must be a LongTensor"),
        (lambda: speculative_sample(P, torch.tensor([[[1.0, 0.0]]], dtype=torch.float64),
                                    D + 1), ValueError, "q gives probability 0"),
        (lambda: speculative_sample(P.float(), Q, D), ValueError, "share a device"),
        (lambda: speculative_sample(P.long(), Q, D), TypeError, "p must have dtype"),
        (lambda: speculative_sample(P[:, :1], Q[:, :0], D[:, :0]), ValueError,
         "at least one draft"),
        (lambda: speculative_sample(P[0], Q, D), ValueError, "p must have 3 dimensions"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------- lib.bench medusa


def test_lib_medusa_exports_the_chapter_api():
    import lib.medusa
    import lib.medusa_accept
    import lib.medusa_tree

    assert lib.medusa.speculative_sample is lib.medusa_accept.speculative_sample
    assert lib.medusa.build_tree is lib.medusa_tree.build_tree
    assert all(hasattr(lib.medusa, name) for name in lib.medusa.__all__)


def test_bench_medusa_parts():
    """The benchmark's pieces on a small random model (timings are printed, not tested)."""
    from lib.bench import commands
    from lib.bench.medusa import PHASES, acceptance, decode_times, step_profile

    assert "medusa" in commands()
    base, heads = perturbed(seed=1)
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])]
    choices = [(0,), (1,), (0, 0)]
    result = acceptance(base, heads, prompts, 20, choices)
    assert result["lossless"] and result["tokens_per_forward"] >= 1.0
    assert all(0 <= a <= 2 for a in result["accepted"])
    times = decode_times(base, heads, prompts, 10, choices, repeats=2)
    assert set(times) == {"plain", "medusa"}
    assert all(len(t["wall"]) == 2 and len(t["cpu"]) == 2 for t in times.values())
    costs = step_profile(base, heads, prompts, 10, choices, repeats=2)
    assert set(costs) == {"plain step", "medusa step", "prefill", *PHASES}
    assert costs["medusa step"] == pytest.approx(sum(costs[p] for p in PHASES))
    assert all(v > 0 for k, v in costs.items() if k in ("plain step", "tree pass"))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        step_profile(base, heads, prompts, 10, choices, repeats=0)
