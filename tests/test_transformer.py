"""lib/transformer.py: positions, MHA vs torch.nn.MultiheadAttention, the KV cache, tree
verification in one pass, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lib.transformer as tr
from lib.attention import attention_reference
from lib.transformer import (
    POS_INIT_STD,
    MultiHeadAttention,
    TinyLM,
    TinyLMConfig,
    TransformerBlock,
    position_rotation,
    select_cache,
    sinusoidal_positions,
)

ATOL = 1e-5  # fp32 everywhere: differences are summation order only


def tiny(seed=0, backend="auto", **kw):
    torch.manual_seed(seed)
    sizes = dict(vocab_size=11, d_model=16, n_heads=2, n_layers=2, max_len=40) | kw
    return TinyLM(TinyLMConfig(**sizes), backend=backend).eval()


# ------------------------------------------------------------------------- positions


def test_sinusoidal_positions_formula():
    n, d = 50, 12
    pe = sinusoidal_positions(n, d)
    assert pe.shape == (n, d) and pe.dtype == torch.float32
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            w = 10000.0 ** (-2 * i / d)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p * w), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(-60, 60), half_d=st.integers(1, 16), base=st.sampled_from([100.0, 1e4]))
def test_relative_position_is_a_rotation(k, half_d, base):
    """PE[p + k] = M_k PE[p] for every p, and M_k is orthogonal (eq. 8)."""
    d = 2 * half_d
    pe = sinusoidal_positions(200, d, base)
    m = position_rotation(k, d, base)
    p = torch.arange(max(0, -k), min(200, 200 - k))
    torch.testing.assert_close(pe[p] @ m.T, pe[p + k], atol=1e-4, rtol=0)
    torch.testing.assert_close(m @ m.T, torch.eye(d), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- multi-head attention


def copy_to_torch_mha(mha: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    ref = torch.nn.MultiheadAttention(mha.d_model, mha.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.qkv.weight)
        ref.in_proj_bias.copy_(mha.qkv.bias)
        ref.out_proj.weight.copy_(mha.proj.weight)
        ref.out_proj.bias.copy_(mha.proj.bias)
    return ref


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 20),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([1, 3, 8]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mha_equals_torch_multihead_attention(b, t, heads, head_dim, causal, seed):
    """The oracle: torch.nn.MultiheadAttention with the same weights."""
    torch.manual_seed(seed)
    mha = MultiHeadAttention(heads * head_dim, heads)
    ref = copy_to_torch_mha(mha)
    x = torch.randn(b, t, heads * head_dim)
    y, (k, v) = mha(x, causal=causal)
    attn_mask = torch.ones(t, t, dtype=torch.bool).triu(1) if causal else None  # True = blocked
    expected, _ = ref(x, x, x, attn_mask=attn_mask, need_weights=False)
    torch.testing.assert_close(y, expected, atol=ATOL, rtol=1e-4)
    assert k.shape == v.shape == (b, heads, t, head_dim)


def test_mha_gradients_equal_torch():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3)
    ref = copy_to_torch_mha(mha)
    x = torch.randn(2, 9, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    mha(x, causal=True)[0].square().sum().backward()
    mask = torch.ones(9, 9, dtype=torch.bool).triu(1)
    ref(x2, x2, x2, attn_mask=mask, need_weights=False)[0].square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mha.qkv.weight.grad, ref.in_proj_weight.grad, atol=1e-5, rtol=1e-4)


def test_mha_with_cache_equals_full_sequence():
    torch.manual_seed(2)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 13, 16)
    full, _ = mha(x, causal=True)
    head, past = mha(x[:, :8], causal=True)
    tail, (k, v) = mha(x[:, 8:], past=past, causal=True)  # 5 queries, 13 keys, bottom-right
    torch.testing.assert_close(torch.cat([head, tail], 1), full, atol=ATOL, rtol=0)
    assert k.shape == (2, 4, 13, 4)


def test_mha_passes_backend_to_flash_attention(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["backend"])
        return attention_reference(*args[:3], causal=kwargs["causal"], mask=kwargs["mask"])

    monkeypatch.setattr(tr, "flash_attention", spy)
    x = torch.randn(1, 3, 8)
    MultiHeadAttention(8, 2)(x)
    MultiHeadAttention(8, 2, backend="torch")(x)
    TinyLM(TinyLMConfig(5, 8, 2, 1, 8), backend="triton")(torch.zeros(1, 3, dtype=torch.long))
    assert seen == ["auto", "torch", "triton"]


def test_triton_backend_matches_torch():
    torch.manual_seed(3)
    model = tiny()
    idx = torch.randint(0, 11, (2, 9))
    expected = model(idx).logits
    for block in model.blocks:
        block.attn.backend = "triton"
    got = model(idx).logits  # chapter 7's kernel, through Triton's interpreter on a CPU
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_block_in_half_precision_is_close_to_fp32(dtype, atol):
    torch.manual_seed(4)
    block = TransformerBlock(16, 4)
    x = torch.randn(2, 10, 16)
    expected, _ = block(x)
    got, (k, _) = block.to(dtype)(x.to(dtype))
    assert got.dtype == k.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=atol, rtol=0)


def test_pre_norm_residual_block_is_identity_plus_branches():
    """eq. 11 spelled out: x + attn(LN1(x)), then + mlp(LN2(.))."""
    torch.manual_seed(5)
    block = TransformerBlock(8, 2)
    x = torch.randn(1, 6, 8)
    h = x + block.attn(block.ln1(x), causal=True)[0]
    torch.testing.assert_close(block(x)[0], h + block.mlp(block.ln2(h)))


# ------------------------------------------------------------------- TinyLM, KV cache


def test_forward_with_cache_equals_forward_without():
    model = tiny()
    idx = torch.randint(0, 11, (3, 17))
    full = model(idx, return_hidden=True)
    out1 = model(idx[:, :10])
    out2 = model(idx[:, 10:], past=out1.past, return_hidden=True)
    torch.testing.assert_close(out2.logits, full.logits[:, 10:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out2.hidden, full.hidden[:, 10:], atol=ATOL, rtol=0)
    assert out1.hidden is None and full.hidden.shape == (3, 17, 16)
    assert len(out2.past) == 2 and out2.past[0][0].shape == (3, 2, 17, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_generation_with_cache_equals_without(seed):
    model = tiny(seed, vocab_size=7)
    prompt = torch.randint(0, 7, (2, 4), generator=torch.Generator().manual_seed(seed))
    with_cache = model.generate(prompt, 30)
    without = model.generate(prompt, 30, use_cache=False)
    assert with_cache.shape == (2, 34) and torch.equal(with_cache[:, :4], prompt)
    assert torch.equal(with_cache, without)


def test_generation_beyond_max_len_slides_a_window():
    """Past max_len the model sees the last max_len tokens, with or without the cache."""
    model = tiny(2, max_len=12)
    prompt = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, 20)
    assert out.shape == (2, 25) and torch.equal(out, model.generate(prompt, 20, use_cache=False))
    # the token after position 24 is the greedy choice given the last 12 tokens
    last = model(out[:, -13:-1]).logits[:, -1].argmax(-1)
    assert torch.equal(last, out[:, -1])
    long_prompt = torch.randint(0, 11, (1, 30))  # longer than max_len: cropped, not refused
    assert model.generate(long_prompt, 3).shape == (1, 33)


def test_sampled_generation_with_cache_equals_without():
    model = tiny(3)
    prompt = torch.randint(0, 11, (3, 1))
    runs = [
        model.generate(prompt, 25, temperature=1.3, top_k=4, use_cache=c,
                       generator=torch.Generator().manual_seed(7))
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert len(set(runs[0][0, 1:].tolist())) > 1  # it did sample, not repeat one token


def test_top_k_one_is_greedy_and_zero_new_tokens_is_the_prompt():
    model = tiny(4)
    prompt = torch.randint(0, 11, (2, 3))
    sampled = model.generate(prompt, 12, temperature=2.0, top_k=1)
    assert torch.equal(sampled, model.generate(prompt, 12))
    assert torch.equal(model.generate(prompt, 0), prompt)
    model.train()
    model.generate(prompt, 1)
    assert model.training  # generate restores the mode


def tree_case():
    """A prefix and a tree of 7 candidate tokens in topological order (parent before child)."""
    prefix = torch.tensor([[1, 5, 2, 8, 3]])
    parents = [-1, 0, 0, 1, 2, -1, 5]  # -1: a child of the prefix's last token
    tokens = torch.tensor([[4, 9, 6, 0, 7, 2, 10]])
    depth, ancestors = [], []
    for i, p in enumerate(parents):
        depth.append(0 if p < 0 else depth[p] + 1)
        ancestors.append(({i} | ancestors[p]) if p >= 0 else {i})
    n = len(parents)
    mask = torch.tensor([[j in ancestors[i] for j in range(n)] for i in range(n)])
    return prefix, tokens, parents, torch.tensor(depth), ancestors, mask


def test_tree_of_candidates_in_one_pass_equals_each_branch():
    """Chapter 9's verification: one forward over all tree nodes with a mask and position
    ids gives, at every node, the logits of running prefix + that node's path."""
    model = tiny(5)
    prefix, tokens, parents, depth, ancestors, mask = tree_case()
    t_p = prefix.shape[1]
    prefix_out = model(prefix)
    out = model(tokens, past=prefix_out.past, mask=mask, position_ids=t_p + depth,
                return_hidden=True)
    for i in range(tokens.shape[1]):
        path = sorted(ancestors[i])
        branch = model(torch.cat([prefix, tokens[:, path]], 1), return_hidden=True)
        torch.testing.assert_close(out.logits[:, i], branch.logits[:, -1], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.hidden[:, i], branch.hidden[:, -1], atol=ATOL, rtol=0)
    # keep the prefix and the accepted path 0 -> 2 -> 4: the cache of prefix + path
    keep = torch.tensor(list(range(t_p)) + [t_p + 0, t_p + 2, t_p + 4])
    cache = select_cache(out.past, keep)
    plain = model(torch.cat([prefix, tokens[:, [0, 2, 4]]], 1)).past
    for (k, v), (k2, v2) in zip(cache, plain, strict=True):
        torch.testing.assert_close(k, k2, atol=ATOL, rtol=0)
        torch.testing.assert_close(v, v2, atol=ATOL, rtol=0)


def test_tree_masks_per_batch_row():
    """A (B, T, Nm) mask: row 0 a chain, row 1 two siblings, in one batch."""
    model = tiny(6)
    prefix = torch.tensor([[3, 1, 4], [1, 5, 9]])
    tokens = torch.tensor([[2, 6], [5, 3]])
    chain = torch.tensor([[True, False], [True, True]])
    siblings = torch.tensor([[True, False], [False, True]])
    out = model(tokens, past=model(prefix).past, mask=torch.stack([chain, siblings]),
                position_ids=torch.tensor([[3, 4], [3, 3]]))
    row0 = model(torch.cat([prefix[:1], tokens[:1]], 1)).logits[0, -2:]
    row1 = [model(torch.cat([prefix[1:], tokens[1:, i : i + 1]], 1)).logits[0, -1]
            for i in range(2)]
    torch.testing.assert_close(out.logits[0], row0, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.logits[1], torch.stack(row1), atol=ATOL, rtol=0)


# ---------------------------------------------------------- initialisation, host syncs


def test_weights_initialised_by_module_type():
    torch.manual_seed(0)
    config = TinyLMConfig(vocab_size=300, d_model=64, n_heads=4, n_layers=8, max_len=16)
    model = TinyLM(config)
    assert model.config is config and model.lm_head.weight is model.tok_emb.weight
    assert (model.max_len, model.vocab_size, model.n_layers) == (16, 300, 8)
    residual = {id(m) for b in model.blocks for m in b.residual_projections}
    assert len(residual) == 16  # attn.proj and the MLP's output layer, in each of 8 blocks
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        elif isinstance(module, torch.nn.Linear) and module is not model.lm_head:
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            std = 0.02 / math.sqrt(2 * 8) if id(module) in residual else 0.02
            # a sample std of n >= 4096 normal draws is within 5% of sigma (~3.5 std errors)
            assert module.weight.std().item() == pytest.approx(std, rel=0.05), name
    emb_std = model.tok_emb.weight.std().item()
    assert emb_std == pytest.approx(64**-0.5, rel=0.05)  # sqrt(C) x embedding ~ N(0, 1)


def test_generate_checks_the_prompt_once_and_never_in_the_loop(monkeypatch):
    """The range check reads the ids back from the device: once per generate, not per step."""
    model = tiny()
    value_checks = []
    original = tr.check_long_tensor

    def counting(x, name, **kw):
        if kw.get("low") is not None or kw.get("high") is not None:
            value_checks.append(name)
        return original(x, name, **kw)

    monkeypatch.setattr(tr, "check_long_tensor", counting)
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 15)
    assert out.shape == (2, 18) and value_checks == ["prompt"]
    model(out[:, :5])  # a user's own call is checked
    assert value_checks == ["prompt", "idx"]


def test_unchecked_forward_equals_checked():
    model = tiny()
    idx = torch.randint(0, 11, (2, 7))
    pos = torch.tensor([0, 1, 2, 2, 3, 3, 4])
    a = model(idx, position_ids=pos).logits
    b = model(idx, position_ids=pos, check_ids=False).logits
    assert torch.equal(a, b)


# -------------------------------------------------------------- learned positions (row E)


def test_learned_positions_are_a_trained_table_of_the_sinusoids_scale():
    model = tiny(positions="learned", d_model=64, n_heads=4, max_len=128)
    assert not hasattr(model, "pos_table") and model.pos_emb.weight.shape == (128, 64)
    assert "pos_emb.weight" in model.state_dict()
    # initialised N(0, 1/2): the mean square of the sinusoid table (sin^2 + cos^2 = 1 per
    # pair); a sample std of 8192 normal draws is within 3% of sigma (~4 std errors)
    mean_square = sinusoidal_positions(128, 64).square().mean().item()
    assert mean_square == pytest.approx(0.5, abs=1e-3)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.5**0.5, rel=0.03)
    # the table enters the forward pass: position p reads row p, and it gets a gradient
    idx = torch.randint(0, 11, (2, 9))
    model.train()
    model(idx).logits.square().sum().backward()
    grad_rows = model.pos_emb.weight.grad.abs().sum(-1)
    assert (grad_rows[:9] > 0).all() and (grad_rows[9:] == 0).all()


def test_pos_init_std_scales_the_learned_table_and_nothing_else():
    """pos_init_std=0.02 (nanoGPT's): the same normal draws times 0.02 / sqrt(1/2)."""
    sizes = dict(positions="learned", d_model=64, n_heads=4, max_len=128)
    default, small = tiny(seed=5, **sizes), tiny(seed=5, pos_init_std=0.02, **sizes)
    assert TinyLMConfig(11, 16, 2, 2, 40).pos_init_std == 0.5**0.5 == POS_INIT_STD
    # a sample std of 8192 normal draws is within 3% of sigma (~4 std errors)
    assert small.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    # N(0, s^2) is s times a standard normal draw z; each side rounds z s to fp32 and the
    # rescaled side rounds once more (and its factor once): 4 roundings of 2^-24 at most
    torch.testing.assert_close(small.pos_emb.weight,
                               default.pos_emb.weight * (0.02 / POS_INIT_STD),
                               rtol=2**-22, atol=0)
    others = small.state_dict()
    for name, w in default.state_dict().items():  # the same RNG stream for the rest
        if name != "pos_emb.weight":
            assert torch.equal(others[name], w), name


def test_learned_positions_equal_sinusoidal_when_given_the_same_table():
    """Copy the sinusoid table into the learned one: the two models are the same function."""
    sin_model = tiny(seed=3)
    learned = TinyLM(TinyLMConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2,
                                  max_len=40, positions="learned")).eval()
    learned.load_state_dict(sin_model.state_dict() | {"pos_emb.weight": sin_model.pos_table})
    idx = torch.randint(0, 11, (3, 40))
    torch.testing.assert_close(learned(idx).logits, sin_model(idx).logits, rtol=0, atol=0)


def test_learned_positions_generate_with_cache_equals_without():
    model = tiny(seed=4, positions="learned")
    prompt = torch.randint(0, 11, (2, 3))
    a = model.generate(prompt, 30, use_cache=True)
    b = model.generate(prompt, 30, use_cache=False)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ bad input

MODEL = tiny()
IDX = torch.zeros(1, 4, dtype=torch.long)
PAST = MODEL(IDX).past


@pytest.mark.parametrize(
    "call, error, match",
    [
        # positions: sizes, strings, NaN/inf, a base that makes the frequencies grow
        (lambda: sinusoidal_positions(4, 5), ValueError, "d must be even"),
        (lambda: sinusoidal_positions(0, 4), ValueError, "n must be at least 1"),
        (lambda: sinusoidal_positions(4, 4, base=1.0), ValueError, "base must be greater than 1"),
        (lambda: sinusoidal_positions(4, 4, base="1e4"), TypeError, "base must be a real"),
        (lambda: sinusoidal_positions(4, 4, base=math.inf), ValueError, "base must be finite"),
        (lambda: sinusoidal_positions(4.0, 4), TypeError, "n must be an int"),
        (lambda: position_rotation(1.5, 4), TypeError, "k must be an int"),
        (lambda: position_rotation("1", 4), TypeError, "k must be an int"),
        (lambda: position_rotation(1, 3), ValueError, "d must be even"),
        (lambda: position_rotation(1, 0), ValueError, "d must be at least 1"),
        (lambda: position_rotation(1, 4, base=-10000.0), ValueError,
         "base must be greater than 1"),
        (lambda: position_rotation(1, 4, base=math.nan), ValueError, "base must be finite"),
        # modules and config: sizes, divisibility, strings, unknown backend
        (lambda: MultiHeadAttention(10, 3), ValueError, "divisible by n_heads"),
        (lambda: MultiHeadAttention(8, 0), ValueError, "n_heads must be at least 1"),
        (lambda: MultiHeadAttention(8, 2, bias="no"), TypeError, "bias must be a bool"),
        (lambda: MultiHeadAttention(8, 2, backend="cuda"), ValueError, "backend must be one of"),
        (lambda: TransformerBlock(8, 2, mlp_ratio=0), ValueError, "mlp_ratio must be at least"),
        (lambda: TransformerBlock(None, 2), TypeError, "d_model must be an int"),
        (lambda: TinyLMConfig(0, 8, 2, 1, 8), ValueError, "vocab_size must be at least 1"),
        (lambda: TinyLMConfig(5, 9, 3, 1, 8), ValueError, "d_model must be even"),
        (lambda: TinyLMConfig(5, 10, 4, 1, 8), ValueError, "divisible by n_heads=4"),
        (lambda: TinyLMConfig(5, 8, 2, -1, 8), ValueError, "n_layers must be at least 1"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8.0), TypeError, "max_len must be an int"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="rotary"), ValueError,
         "positions must be one of"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions=None), ValueError,
         "positions must be one of"),
        (lambda: TinyLMConfig("5", 8, 2, 1, 8), TypeError, "vocab_size must be an int"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std=0.0),
         ValueError, "pos_init_std must be greater than 0"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std=-0.02),
         ValueError, "pos_init_std must be greater than 0"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std=math.nan),
         ValueError, "pos_init_std must be finite"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std=math.inf),
         ValueError, "pos_init_std must be finite"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std="0.02"),
         TypeError, "pos_init_std must be a real number"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, positions="learned", pos_init_std=True),
         TypeError, "pos_init_std must be a real number"),
        (lambda: TinyLMConfig(5, 8, 2, 1, 8, pos_init_std=0.02), ValueError,
         "pos_init_std initialises a learned position table"),
        (lambda: TinyLM({"vocab_size": 5}), TypeError, "config must be a TinyLMConfig"),
        (lambda: TinyLM(TinyLMConfig(5, 8, 2, 1, 8), backend="gpu"), ValueError,
         "backend must be one of"),
        # forward: type, rank, dtype, empty, values, lengths, past, position ids, mask
        (lambda: MODEL(torch.zeros(1, 2)), TypeError, "idx must be a LongTensor"),
        (lambda: MODEL([[1, 2]]), TypeError, "idx must be a torch.Tensor"),
        (lambda: MODEL(torch.zeros(4, dtype=torch.long)), ValueError, "idx must have 2 dim"),
        (lambda: MODEL(torch.zeros(1, 0, dtype=torch.long)), ValueError, "at least one token"),
        (lambda: MODEL(IDX.to("meta")), ValueError, "idx must be on the model's device cpu"),
        (lambda: MODEL(IDX.to("meta"), check_ids=False), ValueError, "idx must be on the model"),
        (lambda: MODEL(IDX, position_ids=torch.arange(4, device="meta")), ValueError,
         "position_ids must be on idx's device"),
        (lambda: MODEL.generate(IDX.to("meta"), 2), ValueError, "prompt must be on the model"),
        (lambda: MODEL.blocks[0].attn(torch.randn(1, 3, 16, device="meta")), ValueError,
         "x must be on the module's device"),
        (lambda: MODEL(torch.zeros(0, 3, dtype=torch.long)), ValueError, "at least one sequence"),
        (lambda: MODEL(torch.zeros(0, 3, dtype=torch.long), check_ids=False), ValueError,
         "at least one sequence"),
        (lambda: MODEL(torch.full((1, 2), 11)), ValueError, r"idx must hold values in \[0, 11\)"),
        (lambda: MODEL(torch.full((1, 2), -1)), ValueError, "idx must hold values in"),
        (lambda: MODEL(torch.zeros(1, 41, dtype=torch.long)), ValueError,
         "longer than max_len=40"),
        (lambda: MODEL(IDX, past=PAST[:1]), ValueError, r"one \(k, v\) per block \(2\)"),
        (lambda: MODEL(IDX, past=PAST[0][0]), TypeError, "past must be a list of"),
        (lambda: MODEL(IDX, past=[PAST[0][0], PAST[1][0]]), TypeError,
         r"past\[0\] must be a pair"),
        (lambda: MODEL(IDX, past=[(PAST[0][0][0], PAST[0][1])] * 2), ValueError,
         r"past\[0\] k must have 4 dimensions"),
        (lambda: MODEL(torch.zeros(2, 4, dtype=torch.long), past=PAST), ValueError,
         r"past k must have shape \(B, H, Tp, hd\) = \(2,"),
        (lambda: MODEL(IDX, position_ids=torch.arange(3)), ValueError,
         "position_ids must have shape"),
        (lambda: MODEL(IDX, position_ids=torch.arange(4.0)), TypeError,
         "position_ids must be a LongTensor"),
        (lambda: MODEL(IDX, position_ids=torch.arange(4) + 37), ValueError,
         r"position_ids must hold values in \[0, 40\)"),
        (lambda: MODEL(IDX, mask=torch.ones(3, 2, dtype=torch.bool)), ValueError, "mask must"),
        (lambda: MODEL(IDX, mask=torch.ones(4, 4)), TypeError, "mask must have dtype bool"),
        (lambda: MODEL(IDX, return_hidden="yes"), TypeError, "return_hidden must be a bool"),
        (lambda: MODEL(IDX, check_ids=0), TypeError, "check_ids must be a bool"),
        # generate: the prompt is named prompt; sizes, strings, NaN, generator
        (lambda: MODEL.generate(IDX.float(), 3), TypeError, "prompt must be a LongTensor"),
        (lambda: MODEL.generate(IDX[0], 3), ValueError, "prompt must have 2 dimensions"),
        (lambda: MODEL.generate(IDX[:, :0], 3), ValueError, "prompt must hold at least one"),
        (lambda: MODEL.generate(IDX + 11, 3), ValueError, r"prompt must hold values in \[0, 11"),
        (lambda: MODEL.generate(IDX, -1), ValueError, "max_new_tokens must be at least 0"),
        (lambda: MODEL.generate(IDX, 2.0), TypeError, "max_new_tokens must be an int"),
        (lambda: MODEL.generate(IDX, 3, temperature=-0.5), ValueError, "temperature must be"),
        (lambda: MODEL.generate(IDX, 3, temperature="hot"), TypeError, "temperature must be a"),
        (lambda: MODEL.generate(IDX, 3, temperature=math.nan), ValueError,
         "temperature must be finite"),
        (lambda: MODEL.generate(IDX, 3, temperature=1.0, top_k=0), ValueError,
         "top_k must be at least 1"),
        (lambda: MODEL.generate(IDX, 3, generator=0), TypeError, "generator must be a torch"),
        (lambda: MODEL.generate(IDX, 3, use_cache="no"), TypeError, "use_cache must be a bool"),
        # select_cache: past the cache, negative, wrong dtype, not a cache
        (lambda: select_cache(PAST, torch.tensor([0, 4])), ValueError,
         r"index must hold values in \[0, 4\), got values in \[0, 4\]"),
        (lambda: select_cache(PAST, torch.tensor([-1])), ValueError, "index must hold values"),
        (lambda: select_cache(PAST, torch.tensor([0.0])), TypeError, "index must be a LongTensor"),
        (lambda: select_cache(PAST, torch.tensor([[0]])), ValueError, "index must have 1 dim"),
        (lambda: select_cache([], torch.tensor([0])), ValueError, "past must hold at least one"),
        (lambda: select_cache(PAST[0], torch.tensor([0])), TypeError, r"past\[0\] must be a"),
        (lambda: select_cache("past", torch.tensor([0])), TypeError, "past must be a list"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_mha_bad_input():
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        mha(torch.randn(3, 8))
    with pytest.raises(ValueError, match="last dim d_model=8"):
        mha(torch.randn(1, 3, 6))
    with pytest.raises(TypeError, match="x must have dtype"):
        mha(torch.ones(1, 3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="causal must be a bool"):
        mha(torch.randn(1, 3, 8), causal="yes")
    with pytest.raises(TypeError, match=r"past must be a pair \(k, v\)"):
        mha(torch.randn(1, 3, 8), past=torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"past k must have shape \(B, H, Tp, hd\)"):
        mha(torch.randn(1, 3, 8), past=(torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)))
    with pytest.raises(ValueError, match="past k and v must have the same shape"):
        mha(torch.randn(1, 3, 8), past=(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 5, 4)))
    with pytest.raises(ValueError, match="dtype and device"):
        mha(torch.randn(1, 3, 8), past=(torch.randn(1, 2, 4, 4).double(),) * 2)
