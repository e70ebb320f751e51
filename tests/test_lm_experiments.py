"""lib/lm_experiments.py: loss by position against evaluate_lm and a per-window loop,
paired and repeatable runs, training windows shorter than max_len, bad input."""

import pytest
import torch
import torch.nn.functional as F

from lib.lm_experiments import position_losses, train_variants
from lib.training import evaluate_lm
from lib.transformer import TinyLM, TinyLMConfig

V = 13
TOKENS = torch.randint(0, V, (801,), generator=torch.Generator().manual_seed(0))
VAL = torch.randint(0, V, (161,), generator=torch.Generator().manual_seed(1))


def config(**kw):
    sizes = dict(vocab_size=V, d_model=16, n_heads=2, n_layers=1, max_len=16) | kw
    return TinyLMConfig(**sizes)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyLM(config(**kw))


def test_position_losses_mean_is_evaluate_lm():
    model = tiny()
    tokens = TOKENS[: 16 * 37 + 1]  # N - 1 a multiple of seq_len: the same windows
    losses = position_losses(model, tokens, batch_size=5)
    assert losses.shape == (16,) and losses.dtype == torch.float32
    # both sum the same fp32 cross-entropies, in a different order: fp32 rounding
    assert losses.double().mean().item() == pytest.approx(evaluate_lm(model, tokens),
                                                          rel=1e-6, abs=0)


def test_position_losses_equal_a_loop_over_windows():
    model = tiny(seed=1).eval()
    seq_len, n = 10, 17
    expected = torch.zeros(seq_len, dtype=torch.float64)
    with torch.no_grad():
        for w in range(n):
            window = TOKENS[w * seq_len : (w + 1) * seq_len + 1]
            logits = model(window[None, :-1]).logits[0]  # (seq_len, V)
            expected += F.cross_entropy(logits, window[1:], reduction="none").double()
    tail = 7  # tokens that fill no window are left out
    got = position_losses(model, TOKENS[: n * seq_len + 1 + tail], seq_len, batch_size=4)
    torch.testing.assert_close(got, (expected / n).float(), rtol=1e-6, atol=0)


def test_train_variants_pairs_repeats_and_scores_every_position():
    kwargs = dict(seeds=[0, 3], steps=6, batch_size=4, lr=1e-2, train_len=8,
                  eval_len=16, device="cpu", progress=False)
    configs = {"sin": config(), "learned": config(positions="learned")}
    runs = train_variants(configs, TOKENS, VAL, **kwargs)
    assert list(runs) == ["sin", "learned"]
    for name, group in runs.items():
        assert [r.seed for r in group] == [0, 3] and all(r.name == name for r in group)
        for r in group:
            assert len(r.history) == 6 and r.position_loss.shape == (16,)
            torch.testing.assert_close(r.position_loss, position_losses(r.model, VAL, 16),
                                       rtol=0, atol=0)
    assert runs["sin"][0].history != runs["sin"][1].history  # seeds differ
    again = train_variants({"sin": configs["sin"]}, TOKENS, VAL, **kwargs)
    assert again["sin"][1].history == runs["sin"][1].history  # and repeat exactly
    # training windows of 8 tokens: rows 8..15 of the learned table get no gradient, so
    # AdamW only shrinks them (weight decay): each stays parallel to its initial value
    run = runs["learned"][1]
    init = tiny(seed=3, positions="learned").pos_emb.weight.detach()
    cos = F.cosine_similarity(run.model.pos_emb.weight.detach(), init, dim=-1)
    assert (cos[8:] > 1 - 1e-6).all() and (cos[:8] < 1 - 1e-4).all()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: position_losses("model", TOKENS), TypeError, "model must be a torch.nn"),
        (lambda: position_losses(tiny(), TOKENS.float()), TypeError, "tokens must be a Long"),
        (lambda: position_losses(tiny(), TOKENS[:10]), ValueError, "at least 17 tokens"),
        (lambda: position_losses(tiny(), TOKENS + V), ValueError, "tokens must hold values"),
        (lambda: position_losses(tiny(), TOKENS, 0), ValueError, "seq_len must be at least"),
        (lambda: position_losses(tiny(), TOKENS, 4.0), TypeError, "seq_len must be an int"),
        (lambda: position_losses(tiny(), TOKENS, batch_size="8"), TypeError, "batch_size"),
        (lambda: train_variants([config()], TOKENS, VAL, seeds=[0], steps=1, batch_size=1,
                                lr=1e-2), TypeError, "configs must be a mapping"),
        (lambda: train_variants({}, TOKENS, VAL, seeds=[0], steps=1, batch_size=1,
                                lr=1e-2), ValueError, "at least one variant"),
        (lambda: train_variants({"a": {"d_model": 8}}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2), TypeError, "must be a TinyLMConfig"),
        (lambda: train_variants({1: config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2), TypeError, "keys must be str"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[], steps=1,
                                batch_size=1, lr=1e-2), ValueError, "at least one seed"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[1, 1], steps=1,
                                batch_size=1, lr=1e-2), ValueError, "distinct"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=0, steps=1,
                                batch_size=1, lr=1e-2), TypeError, "seeds must be a seq"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[-1], steps=1,
                                batch_size=1, lr=1e-2), ValueError, "seeds must be at least"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=0,
                                batch_size=1, lr=1e-2), ValueError, "steps must be at least"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=float("nan")), ValueError, "lr must be"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr="fast"), TypeError, "lr must be"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2, train_len=17), ValueError,
         "train_len must be at most 16"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2, eval_len=0), ValueError,
         "eval_len must be at least 1"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL[:10], seeds=[0], steps=1,
                                batch_size=1, lr=1e-2), ValueError, "val_tokens must hold"),
        (lambda: train_variants({"a": config()}, TOKENS + V, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2), ValueError, "train_tokens must"),
        (lambda: train_variants({"a": config()}, TOKENS, VAL, seeds=[0], steps=1,
                                batch_size=1, lr=1e-2, progress=1), TypeError, "progress"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
