"""lib/embeddings.py: the vocabulary, queries and scores against gensim's KeyedVectors,
co-occurrence counts against a loop, PPMI against its definition, SVD against M M^T."""

import math

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from gensim.test.utils import datapath

from lib.corpus import planted_corpus
from lib.embeddings import (
    Vocab,
    WordVectors,
    cooccurrence,
    neighbour_purity,
    ppmi,
    ppmi_svd,
    word_pair_spearman,
    wordsim353,
)

PLANTED = planted_corpus(400, seed=3).sentences


# ---------------------------------------------------------------- queries, scores


@pytest.fixture(scope="module")
def vectors():
    vocab = Vocab.from_sentences(PLANTED)
    g = torch.Generator().manual_seed(0)
    return WordVectors(vocab, torch.randn(len(vocab), 12, generator=g))


def keyed(vectors):
    kv = KeyedVectors(vectors.vectors.shape[1])
    kv.add_vectors(vectors.vocab.itos, vectors.vectors.numpy())
    return kv


def test_most_similar_and_analogy_are_gensims(vectors):
    kv = keyed(vectors)
    for word in ("cat", "the", "hammer"):
        ours, theirs = vectors.most_similar(word, 7), kv.most_similar(word, topn=7)
        assert [w for w, _ in ours] == [w for w, _ in theirs]
        np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-6)
    ours = vectors.analogy("cat", "dog", "bread", k=5)
    theirs = kv.most_similar(positive=["dog", "bread"], negative=["cat"], topn=5)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-6)
    assert vectors.similarity("cat", "dog") == pytest.approx(kv.similarity("cat", "dog"),
                                                            abs=1e-6)


def test_spearman_is_gensims_evaluate_word_pairs():
    vocab = Vocab({w: 1 for a, b, _ in wordsim353()[:200] for w in (a, b)})
    wv = WordVectors(vocab, torch.randn(len(vocab), 10, generator=torch.Generator()
                                        .manual_seed(0)))
    drop = set(vocab.itos[::3])  # leave a third of the words out of the vocabulary
    kept = Vocab({w: 1 for w in vocab.itos if w not in drop})
    wv = WordVectors(kept, torch.stack([wv[w] for w in kept.itos]))
    rho, used, total = word_pair_spearman(wv, wordsim353())
    _, (their_rho, _), oov_percent = keyed(wv).evaluate_word_pairs(datapath("wordsim353.tsv"))
    assert total == 353 and used < total
    # the cosines agree to float32 rounding; similarities that tie (or nearly) in one
    # implementation can differ by an ulp in the other and trade ranks, which moves rho
    # by O(1/n^2) with n = used pairs (8e-5 here)
    kv = keyed(wv)
    for a, b, _ in wordsim353():
        if a in kept and b in kept:
            assert wv.similarity(a, b) == pytest.approx(float(kv.similarity(a, b)), abs=1e-6)
    assert rho == pytest.approx(their_rho, abs=1e-3)
    assert 100 * (total - used) / total == pytest.approx(oov_percent, abs=1e-9)


def test_neighbour_purity_by_hand():
    vocab = Vocab({"a": 4, "b": 3, "c": 2, "d": 1, "e": 1})
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    wv = WordVectors(vocab, vecs)
    labels = {"a": "x", "b": "x", "c": "y", "d": "y"}  # "e" has no class: left out
    assert neighbour_purity(wv, labels, k=1) == 1.0
    # k = 2: the second neighbour is of the other class for every word
    assert neighbour_purity(wv, labels, k=2) == 0.5


# ---------------------------------------------------------------------- PPMI + SVD


def test_cooccurrence_equals_the_loop():
    sentences = [["a", "b", "a", "c"], ["c", "b"], ["a"]]
    vocab = Vocab.from_sentences(sentences)
    ids, sentence = vocab.encode_sentences(sentences)
    for dynamic in (True, False):
        counts = cooccurrence(ids, sentence, len(vocab), 2, dynamic=dynamic)
        expected = torch.zeros(len(vocab), len(vocab), dtype=torch.float64)
        for s in sentences:
            for i, wi in enumerate(s):
                for j, wj in enumerate(s):
                    d = abs(i - j)
                    if 0 < d <= 2:
                        w = (2 - d + 1) / 2 if dynamic else 1.0
                        expected[vocab.stoi[wj], vocab.stoi[wi]] += w
        torch.testing.assert_close(counts, expected, rtol=0, atol=1e-12)


def test_ppmi_by_definition():
    c = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 4.0], [1.0, 4.0, 6.0]], dtype=torch.float64)
    m = ppmi(c, power=1.0, shift=2.0)
    total = c.sum()
    for x in range(3):
        for y in range(3):
            pmi = (math.log(c[x, y] * total / (c[x].sum() * c[:, y].sum()))
                   if c[x, y] > 0 else -math.inf)
            assert m[x, y].item() == pytest.approx(max(0.0, pmi - math.log(2.0)), abs=1e-12)


def test_ppmi_svd_factorises_ppmi():
    vocab = Vocab.from_sentences(PLANTED)
    V = len(vocab)
    wv = ppmi_svd(PLANTED, dim=V, eig=1.0)
    ids, sentence = vocab.encode_sentences(PLANTED)
    m = ppmi(cooccurrence(ids, sentence, V, 5)).float()
    # with every singular value kept, (U S)(U S)^T = M M^T; randomised SVD in float32
    torch.testing.assert_close(wv.vectors @ wv.vectors.T, m @ m.T, rtol=1e-3, atol=1e-2)


def test_ppmi_svd_finds_the_planted_classes():
    pc = planted_corpus(3000, seed=0)
    assert neighbour_purity(ppmi_svd(pc.sentences, dim=30), pc.labels) > 0.8


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: Vocab({"a": 1}, min_count=0), ValueError, "min_count must be at least 1"),
        (lambda: Vocab({"a": 1}, min_count=2), ValueError, "min_count=2"),
        (lambda: Vocab.from_sentences("a b c"), TypeError, "corpus must be a list of token"),
        (lambda: Vocab.from_sentences(["a b", "c"]), TypeError, r"corpus\[0\] must be a list"),
        (lambda: Vocab.from_sentences([["a", 1]]), TypeError, r"corpus\[0\] must hold str"),
        (lambda: Vocab.from_sentences([]), ValueError, "corpus must not be empty"),
        (lambda: WordVectors({"a": 0}, torch.zeros(1, 2)), TypeError, "vocab must be a Vocab"),
        (lambda: WordVectors(Vocab({"a": 1}), torch.zeros(2, 2)), ValueError, "one row per"),
        (lambda: WordVectors(Vocab({"a": 1}), torch.zeros(2)), ValueError, "vectors must have 2"),
        (lambda: neighbour_purity("vectors", {}), TypeError, "vectors must be WordVectors"),
        (lambda: word_pair_spearman(None, []), TypeError, "vectors must be WordVectors"),
        (lambda: cooccurrence(torch.tensor([0, 5]), torch.tensor([0, 0]), 3, 2), ValueError,
         "ids must hold values in"),
        (lambda: ppmi(torch.ones(2, 3)), ValueError, "square"),
        (lambda: ppmi(-torch.ones(2, 2)), ValueError, "non-negative"),
        (lambda: ppmi(torch.ones(2, 2), shift=0), ValueError, "shift must be greater than 0"),
        (lambda: ppmi_svd(PLANTED, dim=10**4), ValueError, "dim must be at most"),
        (lambda: ppmi_svd(PLANTED, eig=2.0), ValueError, "eig must be at most 1"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "query, match",
    [
        (lambda wv: wv.most_similar("zebra"), "word='zebra' is not in the vocabulary"),
        (lambda wv: wv.most_similar(3), "word must be a str"),
        (lambda wv: wv.most_similar("cat", k=0), "k must be at least 1"),
        (lambda wv: wv.analogy("cat", "zebra", "dog"), "b='zebra'"),
        (lambda wv: wv.similarity("cat", "unicorn"), "b='unicorn'"),
        (lambda wv: neighbour_purity(wv, {"cat": "animal"}, k=5), "labels must cover"),
        (lambda wv: neighbour_purity(wv, ["cat"]), "labels must be a mapping"),
        (lambda wv: word_pair_spearman(wv, [("cat", "dog", 1.0)]), "at least 3 pairs"),
    ],
)
def test_bad_queries(vectors, query, match):
    with pytest.raises((ValueError, TypeError), match=match):
        query(vectors)
