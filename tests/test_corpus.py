"""lib/corpus.py: named corpora, the vocabulary round trip, the deterministic split, bad input."""

import importlib.util
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.corpus import (
    CORPORA,
    Vocabulary,
    load_text,
    package_text,
    register_corpus,
    train_val_split,
    words,
)


def test_python_docs_is_real_english_text():
    from pydoc_data.topics import topics

    text = load_text("python-docs")
    assert text == load_text()  # the default corpus
    assert len(text) > 100_000
    # every topic is in it, each once, separated by blank lines
    assert all(topics[k].strip() in text for k in topics)
    assert len(text) == sum(len(t.strip()) + 2 for t in topics.values()) - 1
    common = {w for w, _ in Counter(words(text)).most_common(20)}
    assert {"the", "a", "is", "of"} <= common


@pytest.mark.parametrize("name", ["lee", "lee-test"])
def test_gensim_corpora_load_or_name_the_package(name):
    assert CORPORA[name].requires == "gensim"
    if importlib.util.find_spec("gensim") is None:
        with pytest.raises(ModuleNotFoundError, match="pip install gensim"):
            load_text(name)
    else:
        text = load_text(name)
        assert len(text.splitlines()) >= 50


def test_package_text_reads_a_shipped_file():
    import pydoc_data.topics

    source = package_text("pydoc_data", "topics.py")  # a package of the standard library
    with open(pydoc_data.topics.__file__, encoding="utf-8") as f:
        assert source == f.read()
    with pytest.raises(ModuleNotFoundError, match="pip install no_such_package"):
        package_text("no_such_package.sub", "data.txt")


def test_register_corpus():
    register_corpus("tiny-test-corpus", lambda: "abc", "three letters")
    try:
        assert load_text("tiny-test-corpus") == "abc"
        assert CORPORA["tiny-test-corpus"].requires is None
    finally:
        del CORPORA["tiny-test-corpus"]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_char_vocabulary_round_trip(text):
    vocab = Vocabulary.chars(text)
    ids = vocab.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text
    assert vocab.itos == sorted(set(text)) and len(vocab) == len(set(text))


def test_word_vocabulary_orders_by_frequency_and_maps_unknowns():
    tokens = words("The cat saw the dog; the DOG saw a cat's toy.")
    assert tokens == ["the", "cat", "saw", "the", "dog", "the", "dog", "saw", "a", "cat's", "toy"]
    vocab = Vocabulary.from_tokens(tokens, min_count=2)
    assert vocab.itos == ["the", "dog", "saw", "<unk>"]  # ties broken alphabetically
    ids = vocab.encode(["the", "zebra", "dog"])
    assert vocab.decode(ids) == "the <unk> dog"


def test_split_is_contiguous_and_deterministic():
    tokens = torch.arange(1000)
    train, val = train_val_split(tokens, 0.1)
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    train2, val2 = train_val_split(torch.arange(3), 0.01)  # each part keeps a token
    assert train2.tolist() == [0, 1] and val2.tolist() == [2]


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5000), st.floats(0.001, 0.999))
def test_split_partitions(n, fraction):
    train, val = train_val_split(torch.arange(n), fraction)
    assert train.numel() >= 1 and val.numel() >= 1
    assert torch.equal(torch.cat([train, val]), torch.arange(n))
    assert abs(val.numel() - n * fraction) <= 1 or val.numel() in (1, n - 1)


# ------------------------------------------------------------------------ bad input


def test_unknown_corpus_name():
    with pytest.raises(ValueError, match="name must be one of"):
        load_text("shakespeare")


def test_register_bad_input():
    with pytest.raises(ValueError, match="name"):
        register_corpus("", lambda: "", "empty")
    with pytest.raises(TypeError, match="loader"):
        register_corpus("x", "not callable", "bad")


def test_unknown_symbol_without_unk():
    with pytest.raises(ValueError, match="'z'"):
        Vocabulary.chars("abc").encode("abz")


def test_empty_vocabulary():
    with pytest.raises(ValueError, match="symbols"):
        Vocabulary([])


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (torch.tensor([0, 5]), ValueError, r"ids must lie in \[0, 3\)"),
        ([0, -1], ValueError, "ids must lie"),
        (torch.tensor([[0, 1]]), ValueError, "ids must have 1 dimensions"),
        (torch.tensor([0.0]), TypeError, "integers"),
    ],
)
def test_decode_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        Vocabulary.chars("abc").decode(ids)


def test_text_must_be_str():
    with pytest.raises(TypeError, match="text"):
        Vocabulary.chars(b"abc")
    with pytest.raises(TypeError, match="text"):
        words(None)


@pytest.mark.parametrize(
    "tokens, fraction, error, match",
    [
        ([1, 2, 3], 0.1, TypeError, "tokens must be a torch.Tensor"),
        (torch.zeros(2, 3), 0.1, ValueError, "tokens must have 1 dimensions"),
        (torch.arange(10), 0.0, ValueError, "val_fraction"),
        (torch.arange(10), 1.0, ValueError, "val_fraction"),
        (torch.arange(10), "0.1", TypeError, "val_fraction"),
        (torch.arange(1), 0.5, ValueError, "at least 2"),
    ],
)
def test_split_bad_input(tokens, fraction, error, match):
    with pytest.raises(error, match=match):
        train_val_split(tokens, fraction)
