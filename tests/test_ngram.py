"""lib/ngram.py: counting, every smoothing against a dict reference and against NLTK.

Oracles: ``collections.Counter`` for counting; a dict-based Kneser-Ney written from the
definitions (``reference_prob`` below) for the model; NLTK's ``nltk.lm`` (MLE, Laplace,
KneserNeyInterpolated) as the external oracle. Where NLTK differs, the test shows the
difference on a minimal example and checks the exact size of it:

* Laplace: NLTK counts ``<s>`` in the vocabulary, so it keeps ``1 / (C + V)`` for a
  token that never follows anything; ours is NLTK's renormalised without ``<s>``. NLTK
  also counts its unknown label twice in ``V`` when the text already contains it.
* MLE: NLTK returns 0 for every word of an unseen context; ours uses the longest seen
  suffix of the context.
* Kneser-Ney, unigram level: NLTK uses the undiscounted continuation distribution, so a
  word never seen after another word (``<unk>`` when training has none) gets 0 and the
  perplexity of any text with it is infinite (nltk/nltk#3211, #3065). Ours discounts
  the unigrams too and interpolates with the uniform distribution (Chen & Goodman,
  KenLM). With a zero unigram discount ours *is* NLTK's, to rounding.
* Kneser-Ney with NLTK's ``padded_everygram_pipeline``: the pipeline also counts the
  n-grams inside the padding (``<s> <s>``, ``</s> </s>``), so ``<s>`` looks like a
  word that follows ``<s>`` and the distribution after ``<s> <s>`` sums to more than 1.
* Kneser-Ney of order 1: NLTK divides by zero (no bigrams to take continuations from).
"""

import itertools
import math
from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.corpus import BOS, EOS, UNK, Vocabulary, load_text, pad_sentence, replace_unknown
from lib.corpus import sentences as split_sentences
from lib.ngram import (
    SMOOTHINGS,
    NGramLM,
    count_ngrams,
    kn_discount,
    modified_kn_discounts,
    pack_ngrams,
)

nltk_lm = pytest.importorskip("nltk.lm", reason="NLTK is the oracle (pip install nltk)")
from nltk.lm.preprocessing import padded_everygram_pipeline  # noqa: E402

CPU = torch.device("cpu")
# The hand-checked corpus of test_modified_discounts_by_hand.
TOY = [["a", "c", "c", "a"], ["a"], ["b", "c", "a"], ["c", "c", "c", "b", "a"]]
# float64 sums of at most a few thousand terms in [0, 1]: rounding below 1e-12
SUM_ATOL = 1e-12


@pytest.fixture(scope="module")
def lee_raw():
    """40 training and 15 test sentences of the Lee corpus, as they are."""
    sents = split_sentences(load_text("lee"))
    return sents[:40], sents[40:55]


@pytest.fixture(scope="module")
def lee_small():
    """40 training and 15 test sentences of the Lee corpus, words seen once -> <unk>."""
    sents = split_sentences(load_text("lee"))
    train, test = sents[:40], sents[40:55]
    vocab = Vocabulary.from_tokens(itertools.chain.from_iterable(train), min_count=2)
    return replace_unknown(train, vocab), replace_unknown(test, vocab)


def target_grams(sentences, order):
    """Per sentence: for every predicted token, its k-grams for k = 1..order (the suffixes)."""
    out = []
    for s in sentences:
        padded = pad_sentence(s, order)
        out.append([tuple(padded[t - k + 1 : t + 1]) for t in range(order - 1, len(padded))
                    for k in range(1, order + 1)])
    return out


def reference_prob(sentences, order, smoothing, word, context, discounts=None, k=1.0):
    """p(word | context) from the definitions, with dicts: the spec the tensors must meet.

    discounts: per order, a float (KN) or a triple (modified KN).
    """
    grams = Counter(g for s in target_grams(sentences, order) for g in s)
    counts = {n: Counter({g: c for g, c in grams.items() if len(g) == n})
              for n in range(1, order + 1)}
    if smoothing in ("kneser_ney", "modified_kneser_ney"):  # continuation counts, eq. 9
        for n in range(1, order):
            counts[n] = Counter(g[1:] for g in counts[n + 1])
    predicted = {t for s in sentences for t in s} | {EOS, UNK}
    known = predicted | {BOS}
    word = word if word in known else UNK
    context = tuple(t if t in known else UNK for t in context)
    if word == BOS:
        return 0.0  # never predicted
    p = 1.0 / len(predicted)
    for n in range(1, order + 1):
        if smoothing == "laplace" and n < order:
            continue
        h = context[len(context) - (n - 1):] if n > 1 else ()
        followers = {g[-1]: c for g, c in counts[n].items() if g[:-1] == h}
        total = sum(followers.values())
        if total == 0:
            continue  # unseen context: keep the lower order
        c = followers.get(word, 0)
        if smoothing == "laplace":
            p = (c + k) / (total + k * len(predicted))
            continue
        if smoothing == "mle":
            def disc(_):
                return 0.0
        elif smoothing == "kneser_ney":
            def disc(_, d=discounts[n - 1]):
                return d
        else:
            def disc(x, d=discounts[n - 1]):
                return d[min(x, 3) - 1]
        gamma = sum(disc(x) for x in followers.values()) / total
        p = (c - disc(c) if c else 0.0) / total + gamma * p
    return p


# ------------------------------------------------------------------------ counting


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=40), st.integers(1, 4))
def test_count_ngrams_equals_counter(ids, n):
    ngrams, counts = count_ngrams(torch.tensor(ids, dtype=torch.long), n)
    expected = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    assert ngrams.shape == (len(expected), n) and counts.dtype == torch.long
    found = {tuple(r): c for r, c in zip(ngrams.tolist(), counts.tolist(), strict=True)}
    assert found == expected
    assert ngrams.tolist() == sorted(map(list, expected))  # lexicographic order


def test_count_ngrams_without_packing_when_keys_would_overflow():
    big = 2**40  # base**2 = 2**80 does not fit in int64: the rows are sorted instead
    ids = torch.tensor([big, 1, big, 1, big, 0], dtype=torch.long)
    ngrams, counts = count_ngrams(ids, 2)
    assert ngrams.tolist() == [[1, big], [big, 0], [big, 1]] and counts.tolist() == [2, 1, 2]


def test_pack_ngrams_orders_like_the_rows():
    rows = torch.tensor([[2, 0, 1], [0, 4, 4], [2, 0, 0], [0, 4, 3]])
    keys = pack_ngrams(rows, base=5)
    assert keys.tolist() == [2 * 25 + 1, 4 * 5 + 4, 2 * 25, 4 * 5 + 3]
    assert rows[keys.argsort()].tolist() == sorted(rows.tolist())


def test_model_counts_are_count_ngrams_of_the_padded_text():
    lm = NGramLM(3, "mle", device=CPU).fit(TOY)
    top = lm.levels[-1]
    ids = torch.cat([lm.encode(pad_sentence(s, 3)) for s in TOY])
    ngrams, counts = count_ngrams(ids, 3)
    keep = ngrams[:, -1] != lm.vocabulary.stoi[BOS]  # windows ending in the padding
    expected = Counter()
    for row, c in zip(ngrams[keep].tolist(), counts[keep].tolist(), strict=True):
        expected[tuple(row)] += c
    # the model keys a trigram by (index of its bigram suffix) * V + first token: decode
    V = len(lm.vocab)
    bigram_keys, unigram_keys = lm.levels[1].gram_keys, lm.levels[0].gram_keys
    decoded = Counter()
    for key, c in zip(top.gram_keys.tolist(), top.counts.tolist(), strict=True):
        b = bigram_keys[key // V].item()
        decoded[(key % V, b % V, unigram_keys[b // V].item())] += c
    assert decoded == expected


def test_lower_order_ngrams_after_the_padding_have_continuation_count_one():
    # With n - 1 = 2 start markers, "<s> a" (seen twice in TOY) is only ever preceded by
    # "<s>": its continuation count is 1, where KenLM (one <s>) keeps the raw count 2.
    lm = NGramLM(3, "kneser_ney", discount=0.5, device=CPU).fit(TOY)
    V, bos = len(lm.vocab), lm.vocabulary.stoi[BOS]
    bigrams = lm.levels[1]
    starts = bigrams.gram_keys % V == bos  # first token <s>
    assert starts.sum().item() == 3  # <s> a, <s> b, <s> c
    assert bigrams.counts[starts].tolist() == [1, 1, 1]
    raw = Counter(g for s in target_grams(TOY, 3) for g in s if len(g) == 2)
    assert raw[(BOS, "a")] == 2


# ------------------------------------------------------------------ sums to one


def contexts_to_try(sentences, order, rng_seed=0):
    """Seen contexts (from the training windows), unseen and unknown ones, short ones."""
    seen = {g[:-1] for s in target_grams(sentences, order) for g in s if len(g) == order}
    words = sorted({t for s in sentences for t in s})
    gen = torch.Generator().manual_seed(rng_seed)
    unseen = [tuple(words[i] for i in torch.randint(len(words), (order - 1,),
                                                   generator=gen).tolist()) for _ in range(5)]
    return sorted(seen)[:25] + unseen + [("zebra",) * (order - 1), (), (EOS,) * (order - 1)]


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_sum_to_one_over_the_vocabulary(lee_small, smoothing, order):
    train, _ = lee_small
    discount = {"kneser_ney": 0.75, "modified_kneser_ney": (0.6, 1.1, 1.4)}.get(smoothing)
    lm = NGramLM(order, smoothing, discount=discount, device=CPU).fit(train)
    for context in contexts_to_try(train, order):
        p = lm.next_probs(context)
        assert p.dtype == torch.float64 and (p >= 0).all() and p[0] == 0  # <s> never follows
        assert abs(p.sum().item() - 1) < SUM_ATOL, (context, p.sum().item())


@pytest.mark.parametrize("smoothing", ["kneser_ney", "modified_kneser_ney"])
def test_estimated_discounts_sum_to_one_on_lee(smoothing):
    sents = split_sentences(load_text("lee"))[:400]
    lm = NGramLM(3, smoothing, device=CPU).fit(sents)
    for context in contexts_to_try(sents, 3, rng_seed=1):
        assert abs(lm.next_probs(context).sum().item() - 1) < SUM_ATOL


# ---------------------------------------------------- against the dict reference


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from("abcd"), min_size=0, max_size=6), min_size=1, max_size=6),
    st.integers(1, 4),
    st.sampled_from(SMOOTHINGS),
    st.floats(0.05, 1.0),
)
def test_model_equals_the_dict_reference(sents, order, smoothing, d):
    discounts = {"kneser_ney": [d] * order,
                 "modified_kneser_ney": [(d, 1 + d, 1 + 2 * d)] * order}.get(smoothing)
    lm = NGramLM(order, smoothing, k=0.5, discount=discounts, device=CPU).fit(sents)
    for context in itertools.product(["a", "b", BOS], repeat=order - 1):
        probs = lm.next_probs(context)
        for w, p in zip(lm.vocab, probs.tolist(), strict=True):
            ref = reference_prob(sents, order, smoothing, w, context, discounts, k=0.5)
            assert math.isclose(p, ref, rel_tol=1e-12, abs_tol=1e-15), (w, context)


def test_estimated_discounts_are_the_closed_forms(lee_small):
    train, _ = lee_small
    for smoothing, closed_form in (("kneser_ney", kn_discount),
                                   ("modified_kneser_ney", modified_kn_discounts)):
        lm = NGramLM(3, smoothing, device=CPU).fit(train)
        for n, used in enumerate(lm.discounts, start=1):
            grams = Counter(g for s in target_grams(train, 3) for g in s if len(g) == n + 1)
            level = Counter(g for s in target_grams(train, 3) for g in s if len(g) == n)
            counts = level if n == 3 else Counter(g[1:] for g in grams)
            coc = [sum(1 for c in counts.values() if c == r) for r in (1, 2, 3, 4)]
            assert used == pytest.approx(closed_form(coc), rel=1e-12)


def test_modified_discounts_by_hand():
    # Bigrams of TOY with <s> and </s> (checked by hand):
    #   a </s> 4 | c c 3 | <s> a 2, c a 2 | a c, <s> b, b c, <s> c, c b, b a: 1 each
    # n1..n4 = 6, 2, 1, 1 -> Y = 6/10 = 3/5
    #   D1 = 1 - 2 * 3/5 * 2/6 = 3/5, D2 = 2 - 3 * 3/5 * 1/2 = 11/10, D3+ = 3 - 4 * 3/5 * 1/1 = 3/5
    # Unigram continuation counts (distinct left neighbours):
    #   c 4 {a c b <s>} | a 3 {<s> c b} | b 2 {<s> c} | </s> 1 {a}
    # n1..n4 = 1, 1, 1, 1 -> Y = 1/3: D1 = 1/3, D2 = 1, D3+ = 5/3
    assert modified_kn_discounts([6, 2, 1, 1]) == pytest.approx([3 / 5, 11 / 10, 3 / 5])
    lm = NGramLM(2, "modified_kneser_ney", device=CPU).fit(TOY)
    expected = [(Fraction(1, 3), Fraction(1), Fraction(5, 3)),
                (Fraction(3, 5), Fraction(11, 10), Fraction(3, 5))]
    for used, exact in zip(lm.discounts, expected, strict=True):
        assert used == pytest.approx([float(x) for x in exact], rel=1e-15)
    # and a probability that uses them, by hand: p(a | c) = alpha + gamma * p1(a), with
    #   c(c .) = c c 3 + c a 2 + c b 1 = 6, alpha = (c(c a) - D2) / 6,
    #   gamma = (D3+ + D2 + D1) / 6 (what the three followers give up)
    top_total = 3 + 2 + 1
    gamma = (Fraction(3, 5) * 1 + Fraction(11, 10) * 1 + Fraction(3, 5) * 1) / top_total
    # p1(a) = (3 - D3+) / 10 + (D3+ + D3+ + D2 + D1) / 10 * 1/5: continuation counts
    # c 4, a 3, b 2, </s> 1 (total 10), uniform over a b c </s> <unk>
    uni_total = 4 + 3 + 2 + 1
    d1, d2, d3 = expected[0]
    p1 = (3 - d3) / uni_total + (d1 + d2 + d3 + d3) / uni_total * Fraction(1, 5)
    p = (2 - Fraction(11, 10)) / top_total + gamma * p1
    assert lm.prob("a", ("c",)) == pytest.approx(float(p), rel=1e-14)


def test_discounts_fall_back_when_counts_of_counts_are_missing():
    with pytest.warns(UserWarning, match="KenLM's fallback"):
        lm = NGramLM(2, "modified_kneser_ney", device=CPU).fit([["a", "b"]])
    assert lm.discounts == [(0.5, 1.0, 1.5)] * 2
    with pytest.warns(UserWarning, match="Kneser-Ney discount; using 0.75"):
        lm = NGramLM(2, "kneser_ney", device=CPU).fit([["a", "b"]])
    assert abs(lm.next_probs(("a",)).sum().item() - 1) < SUM_ATOL


# ------------------------------------------------------------------- against NLTK


def nltk_model(cls, order, train, pipeline=False, **kwargs):
    """An NLTK model fitted on our n-grams (the suffixes at every predicted token), or on
    those of NLTK's own padded_everygram_pipeline; <unk> is NLTK's unknown label too."""
    if pipeline:
        data, vocab = padded_everygram_pipeline(order, train)
    else:
        data = target_grams(train, order)
        vocab = [t for s in train for t in pad_sentence(s, order)]
    lm = cls(order=order, vocabulary=nltk_lm.Vocabulary(unk_label=UNK), **kwargs)
    lm.fit(data, vocab)
    return lm


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_mle_equals_nltk_on_seen_contexts(lee_small, order):
    train, test = lee_small
    ours = NGramLM(order, "mle", device=CPU).fit(train)
    theirs = nltk_model(nltk_lm.MLE, order, train)
    for s in train[:5] + test[:5]:
        padded = pad_sentence(s, order)
        for t in range(order - 1, len(padded)):
            w, h = padded[t], tuple(padded[t - order + 1 : t])
            if order > 1 and theirs.counts[h].N() == 0:  # unseen context: see the next test
                continue
            assert ours.prob(w, h) == pytest.approx(theirs.score(w, h), rel=1e-12, abs=0)


def test_mle_unseen_context_nltk_gives_zero_we_back_off():
    train = [["a", "b"], ["b", "a", "b"]]
    ours = NGramLM(2, "mle", device=CPU).fit(train)
    theirs = nltk_model(nltk_lm.MLE, 2, train)
    # </s> never precedes anything: NLTK scores 0 for every word, not a distribution
    assert sum(theirs.score(w, (EOS,)) for w in theirs.vocab) == 0
    # ours falls back to the unigram MLE: p(b) = 3 of 7 predicted tokens
    assert ours.prob("b", (EOS,)) == pytest.approx(3 / 7, rel=1e-15)
    assert abs(ours.next_probs((EOS,)).sum().item() - 1) < SUM_ATOL


@pytest.mark.parametrize("order", [1, 2, 3])
def test_laplace_is_nltk_renormalised_without_start_marker(lee_raw, order):
    # raw text: an <unk> token in it would be counted twice by NLTK (next test but one)
    train, test = lee_raw
    ours = NGramLM(order, "laplace", device=CPU).fit(train)
    theirs = nltk_model(nltk_lm.Laplace, order, train)
    # the same tokens; at order 1 there is no padding and NLTK has no <s> at all
    assert len(theirs.vocab) == len(ours.vocab) - (order == 1)
    for s in train[:3] + test[:3]:
        padded = pad_sentence(s, order)
        for t in range(order - 1, len(padded)):
            w, h = padded[t], tuple(padded[t - order + 1 : t])
            if order == 1:
                assert ours.prob(w) == pytest.approx(theirs.score(w), rel=1e-12)
                continue
            nltk_p, nltk_bos = theirs.score(w, h), theirs.score(BOS, h)
            assert nltk_bos > 0  # NLTK keeps 1 / (C + V) for <s>, which never follows
            assert ours.prob(w, h) == pytest.approx(nltk_p / (1 - nltk_bos), rel=1e-12)


def test_nltk_counts_its_unknown_label_twice_when_the_text_has_it():
    vocab = nltk_lm.Vocabulary(["a", UNK, "a"], unk_label=UNK)
    assert list(vocab) == ["a", UNK, UNK] and len(vocab) == 3  # Laplace's V is one too big
    theirs = nltk_model(nltk_lm.Laplace, 1, [["a", UNK]])
    ours = NGramLM(1, "laplace", device=CPU).fit([["a", UNK]])
    # a, <unk>, </s> once each; NLTK's V: <s>? no (order 1), </s> a <unk> <unk> -> 4
    assert theirs.score("a") == pytest.approx((1 + 1) / (3 + 4))
    assert ours.prob("a") == pytest.approx((1 + 1) / (3 + 3))


def test_laplace_start_marker_quirk_minimal():
    train = [["a"]]
    theirs = nltk_model(nltk_lm.Laplace, 2, train)
    ours = NGramLM(2, "laplace", device=CPU).fit(train)
    # vocabulary <s> </s> a <unk>: context <s> seen once (followed by a)
    assert theirs.score(BOS, (BOS,)) == pytest.approx(1 / (1 + 4))
    assert theirs.score("a", (BOS,)) == pytest.approx(2 / (1 + 4))
    assert ours.prob(BOS, (BOS,)) == 0 and ours.prob("a", (BOS,)) == pytest.approx(2 / (1 + 3))


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("d", [0.1, 0.75, 1.0])
def test_kneser_ney_equals_nltk_with_an_undiscounted_unigram_level(lee_small, order, d):
    """NLTK fitted on exactly our n-grams; ours with discount 0 at order 1, d above."""
    train, test = lee_small
    vocab_text = [t for s in train for t in pad_sentence(s, order)]
    theirs = nltk_lm.KneserNeyInterpolated(order, discount=d,
                                           vocabulary=nltk_lm.Vocabulary(unk_label=UNK))
    theirs.fit(target_grams(train, order), vocab_text)
    ours = NGramLM(order, "kneser_ney", discount=[0.0] + [d] * (order - 1),
                   device=CPU).fit(train)
    checked = 0
    for s in train[:4] + test[:4]:
        padded = pad_sentence(s, order)
        for t in range(order - 1, len(padded)):
            w, h = padded[t], tuple(padded[t - order + 1 : t])
            assert ours.prob(w, h) == pytest.approx(theirs.score(w, h), rel=1e-12, abs=1e-15)
            checked += 1
    assert checked > 100


def test_kneser_ney_nltk_unigram_quirk_minimal():
    """NLTK's unigram level is undiscounted: a word with no left neighbour gets 0."""
    train = [["a", "b"], ["b", "a"]]
    order, d = 2, 0.5
    theirs = nltk_lm.KneserNeyInterpolated(order, discount=d,
                                           vocabulary=nltk_lm.Vocabulary(unk_label=UNK))
    theirs.fit(target_grams(train, order), [t for s in train for t in pad_sentence(s, order)])
    ours = NGramLM(order, "kneser_ney", discount=d, device=CPU).fit(train)
    # <unk> (any new word) never follows anything in training: NLTK gives it 0 everywhere,
    # so every text with a new word has infinite perplexity
    assert theirs.score("zebra", ("a",)) == 0 and theirs.score("zebra", ("zebra",)) == 0
    # ours: the unigram level gives up D per type to the uniform distribution over the
    # 4 predicted tokens a b </s> <unk>: continuation counts a 2, b 2, </s> 2 (3 types,
    # total 6), so p1(<unk>) = D * 3 / 6 * 1/4
    p1_unk = d * 3 / 6 * (1 / 4)
    assert ours.prob("zebra", ("zebra",)) == pytest.approx(p1_unk, rel=1e-14)
    # after "a" (followed by b once, by </s> once): gamma = D * 2 / 2
    assert ours.prob("zebra", ("a",)) == pytest.approx(d * 2 / 2 * p1_unk, rel=1e-14)
    assert math.isinf(NGramLM(order, "kneser_ney", discount=[0.0, d], device=CPU)
                      .fit(train).perplexity([["zebra"]]))
    assert math.isfinite(ours.perplexity([["zebra"]]))


def test_kneser_ney_nltk_pipeline_quirk_minimal():
    """padded_everygram_pipeline counts <s> <s> as a bigram: p(. | <s> <s>) sums to > 1."""
    train, order, d = TOY, 3, 0.5
    theirs = nltk_model(nltk_lm.KneserNeyInterpolated, order, train, pipeline=True,
                        discount=d)
    total = sum(theirs.score(w, (BOS, BOS)) for w in theirs.vocab)
    # At order 2, context <s> has the followers a, b, c and, from the padding, <s>: NLTK's
    # gamma counts 4 types, its alpha only the 3 with continuation counts. The excess is
    # D / N1+(. <s> .), with N1+(. <s> .) = 3 trigram types (<s> <s> a|b|c), passed up by
    # the top order's gamma = D * 3 types / 4 sentences.
    excess = (d * 3 / 4) * (d / 3)
    assert total == pytest.approx(1 + excess, rel=1e-12)
    ours = NGramLM(order, "kneser_ney", discount=d, device=CPU).fit(train)
    assert abs(ours.next_probs((BOS, BOS)).sum().item() - 1) < SUM_ATOL


def test_kneser_ney_order_one_nltk_divides_by_zero():
    theirs = nltk_model(nltk_lm.KneserNeyInterpolated, 1, TOY, discount=0.5)
    with pytest.raises(ZeroDivisionError):
        theirs.score("a")
    ours = NGramLM(1, "kneser_ney", discount=0.5, device=CPU).fit(TOY)
    # order 1 is the top order: raw counts, absolute discounting, then uniform
    # a 5, c 6, b 2, </s> 4 of 17; 4 types give up 0.5 each to 5 tokens (<unk> included)
    assert ours.prob("a") == pytest.approx((5 - 0.5) / 17 + 0.5 * 4 / 17 / 5, rel=1e-14)


# ----------------------------------------------------- scoring, OOV, generation


def test_unknown_words_map_to_unk(lee_small):
    train, _ = lee_small
    lm = NGramLM(3, "kneser_ney", device=CPU).fit(train)
    assert lm.prob("qwertyuiop", ("the", "minister")) == lm.prob(UNK, ("the", "minister"))
    assert lm.prob("the", ("qwerty", "zzz")) == lm.prob("the", (UNK, UNK))
    assert lm.encode(["qwerty"]).tolist() == [lm.vocab.index(UNK)]
    assert lm.vocab[:3] == [BOS, EOS, UNK]


def test_vectorised_scoring_equals_one_at_a_time(lee_small):
    train, test = lee_small
    lm = NGramLM(3, "modified_kneser_ney", device=CPU).fit(train)
    s = test[0]
    logps = lm.sentence_logprobs(s)
    padded = pad_sentence(s, 3)
    one_by_one = [lm.logprob(padded[t], tuple(padded[t - 2 : t])) for t in range(2, len(padded))]
    assert logps.tolist() == pytest.approx(one_by_one, rel=1e-14)
    assert lm.score_sentence(s) == pytest.approx(sum(one_by_one), rel=1e-12)
    n_predicted = sum(len(x) + 1 for x in test)
    total = sum(lm.score_sentence(x) for x in test)
    assert lm.perplexity(test) == pytest.approx(math.exp(-total / n_predicted), rel=1e-12)


def test_short_context_uses_the_lower_orders():
    lm = NGramLM(3, "kneser_ney", discount=0.5, device=CPU).fit(TOY)
    # one context token: the trigram model's bigram level (continuation counts), as NLTK
    ref = reference_prob(TOY, 3, "kneser_ney", "a", ("c",), [0.5] * 3)
    assert lm.prob("a", ("c",)) == pytest.approx(ref, rel=1e-14)
    assert lm.prob("a", ("x", "y", "c", "c")) == lm.prob("a", ("c", "c"))  # last two count


def test_mle_infinite_perplexity_and_kneser_ney_finite(lee_small):
    train, test = lee_small
    assert math.isinf(NGramLM(2, "mle", device=CPU).fit(train).perplexity(test))
    assert math.isfinite(NGramLM(2, "kneser_ney", device=CPU).fit(train).perplexity(test))


def test_generate_is_deterministic_and_uses_seen_tokens(lee_small):
    train, _ = lee_small
    lm = NGramLM(3, "kneser_ney", device=CPU).fit(train)
    a, b = lm.generate(25, seed=3), lm.generate(25, seed=3)
    assert a == b and len(a) <= 25 and set(a) <= set(lm.vocab) - {BOS, EOS}
    assert lm.generate(0) == []
    # MLE from a sentence start only produces n-grams seen in training
    mle = NGramLM(3, "mle", device=CPU).fit(train)
    seen = {g for s in target_grams(train, 3) for g in s if len(g) == 3}
    for seed in range(5):
        padded = [BOS, BOS] + mle.generate(30, seed=seed)
        assert all(tuple(padded[i : i + 3]) in seen for i in range(len(padded) - 2))


def test_fit_on_the_device_of_choice_and_empty_sentences():
    lm = NGramLM(2, "laplace", device="cpu").fit([[], ["a"]])
    assert lm.levels[0].gram_keys.device == CPU
    assert lm.prob(EOS, (BOS,)) == pytest.approx((1 + 1) / (2 + 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(lee_small):
    train, test = lee_small
    cpu = NGramLM(3, "modified_kneser_ney", device="cpu").fit(train)
    gpu = NGramLM(3, "modified_kneser_ney", device="cuda").fit(train)
    assert gpu.perplexity(test) == pytest.approx(cpu.perplexity(test), rel=1e-12)


# ------------------------------------------------------------------------ bad input


def fitted():
    return NGramLM(2, "kneser_ney", discount=0.5, device=CPU).fit(TOY)


BAD = [
    (lambda: NGramLM(0), ValueError, "order must be at least 1"),
    (lambda: NGramLM(2.0), TypeError, "order must be an int"),
    (lambda: NGramLM("3"), TypeError, "order must be an int"),
    (lambda: NGramLM(2, "good_turing"), ValueError, "smoothing must be one of"),
    (lambda: NGramLM(2, None), ValueError, "smoothing must be one of"),
    (lambda: NGramLM(2, "laplace", k=0), ValueError, "k must be greater than 0"),
    (lambda: NGramLM(2, "laplace", k=math.nan), ValueError, "k must be finite"),
    (lambda: NGramLM(2, "laplace", k="1"), TypeError, "k must be a real number"),
    (lambda: NGramLM(2, "kneser_ney", discount=1.5), ValueError, "discount must be at most 1"),
    (lambda: NGramLM(2, "kneser_ney", discount=-0.1), ValueError, "discount must be at least"),
    (lambda: NGramLM(2, "kneser_ney", discount=math.inf), ValueError, "discount must be finite"),
    (lambda: NGramLM(2, "kneser_ney", discount="0.5"), TypeError, "discount must be a real"),
    (lambda: NGramLM(2, "kneser_ney", discount=[0.5] * 3), ValueError, "one value per order"),
    (lambda: NGramLM(2, "modified_kneser_ney", discount=0.5), TypeError, "triple"),
    (lambda: NGramLM(2, "modified_kneser_ney", discount=(0.5, 2.5, 1)), ValueError,
     r"discount\[1\] must be at most 2"),
    (lambda: NGramLM(2, "mle", discount=0.5), ValueError, "Kneser-Ney smoothing only"),
    (lambda: NGramLM(2).fit([]), ValueError, "sentences must not be empty"),
    (lambda: NGramLM(2).fit("a b c"), TypeError, "sentences must be a list"),
    (lambda: NGramLM(2).fit(["a b", "c"]), TypeError, r"sentences\[0\] must be a list"),
    (lambda: NGramLM(2).fit([["a", 3]]), TypeError, r"sentences\[0\] must hold str"),
    (lambda: NGramLM(2).fit([["a"], [BOS, "b"]]), ValueError, r"sentences\[1\] holds the marker"),
    (lambda: NGramLM(2).prob("a"), RuntimeError, "call fit"),
    (lambda: NGramLM(2).perplexity([["a"]]), RuntimeError, "call fit"),
    (lambda: NGramLM(2).generate(3), RuntimeError, "call fit"),
    (lambda: fitted().prob(3), TypeError, "word must be a str"),
    (lambda: fitted().prob("a", "c"), TypeError, "context must be a tuple"),
    (lambda: fitted().prob("a", (3,)), TypeError, "context must hold str"),
    (lambda: fitted().perplexity([]), ValueError, "sentences must not be empty"),
    (lambda: fitted().score_sentence("a c"), TypeError, "tokens must be a list"),
    (lambda: fitted().ngram_probs(torch.zeros(3, 2)), TypeError, "LongTensor"),
    (lambda: fitted().ngram_probs([[1, 2]]), TypeError, "torch.Tensor"),
    (lambda: fitted().ngram_probs(torch.zeros(3, dtype=torch.long)), ValueError, "2 dim"),
    (lambda: fitted().ngram_probs(torch.zeros(3, 3, dtype=torch.long)), ValueError,
     "2 columns"),
    (lambda: fitted().ngram_probs(torch.full((1, 2), 99)), ValueError, r"values in \[0, 6\)"),
    (lambda: fitted().ngram_probs(torch.full((1, 2), -1)), ValueError, "values in"),
    (lambda: fitted().generate(-1), ValueError, "n must be at least 0"),
    (lambda: fitted().generate(2.5), TypeError, "n must be an int"),
    (lambda: fitted().generate(2, seed="x"), TypeError, "seed must be an int"),
    (lambda: count_ngrams(torch.zeros(4), 2), TypeError, "LongTensor"),
    (lambda: count_ngrams([1, 2, 3], 2), TypeError, "torch.Tensor"),
    (lambda: count_ngrams(torch.zeros(2, 2, dtype=torch.long), 2), ValueError, "1 dim"),
    (lambda: count_ngrams(torch.tensor([1, -2]), 1), ValueError, "values in"),
    (lambda: count_ngrams(torch.tensor([1, 2]), 0), ValueError, "n must be at least 1"),
    (lambda: count_ngrams(torch.tensor([1, 2]), 1.0), TypeError, "n must be an int"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------ benchmark


def test_bench_compares_the_same_model_as_nltk(lee_small):
    from lib.bench import commands
    from lib.bench.ngram import compare_with_nltk

    assert "ngram" in commands()
    train, test = lee_small
    r = compare_with_nltk(train, test, order=3, repeats=2, sample=6, batch=1000)
    assert r["max_rel_diff"] < 1e-12  # the same probabilities, so the same perplexity
    assert r["ppl_sample_lib"] == pytest.approx(r["ppl_sample_nltk"], rel=1e-12)
    assert r["n_sample"] == 6 and r["n_batch"] == 1000
    assert all(len(r[k]) == 2 and min(r[k]) > 0 for k in ("fit_lib", "fit_nltk", "score_nltk"))
