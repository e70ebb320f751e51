"""lib/corpus.py: named corpora, the vocabulary round trip, the deterministic split, bad input."""

import importlib.util
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.corpus import (
    BOS,
    CORPORA,
    EOS,
    UNK,
    Vocabulary,
    load_text,
    package_text,
    pad_sentence,
    register_corpus,
    replace_unknown,
    sentences,
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

ABC = Vocabulary.chars("abc")


@pytest.mark.parametrize(
    "call, error, match",
    [
        # names: unknown, unhashable, empty, not callable, not a str
        (lambda: load_text("shakespeare"), ValueError, "name must be one of"),
        (lambda: load_text(["lee"]), ValueError, "name must be one of"),
        (lambda: register_corpus("", lambda: "", "empty"), ValueError, "name must be a non-empty"),
        (lambda: register_corpus("x", "not callable", "bad"), TypeError, "loader must be callable"),
        (lambda: register_corpus("x", lambda: "", None), TypeError, "source must be a str"),
        (lambda: register_corpus("x", lambda: "", "s", requires=3), TypeError,
         "requires must be a str"),
        (lambda: package_text(None, "x"), TypeError, "package must be a str"),
        (lambda: package_text("gensim", 3), TypeError, "path must be a str"),
        # text and tokens: a str where a list of tokens belongs, non-str symbols, not iterable
        (lambda: Vocabulary.from_tokens("the cat sat"), TypeError,
         "tokens must be a list of str tokens, got a str"),
        (lambda: Vocabulary.from_tokens([1, 2]), TypeError, "tokens must hold str symbols"),
        (lambda: Vocabulary.from_tokens(7), TypeError, "tokens must be an iterable of str"),
        (lambda: Vocabulary.from_tokens(["a"], min_count=0), ValueError,
         "min_count must be at least 1"),
        (lambda: Vocabulary.from_tokens(["a"], min_count="2"), TypeError,
         "min_count must be an int"),
        (lambda: Vocabulary.from_tokens(["a"], unk=0), TypeError, "unk must be a str"),
        (lambda: Vocabulary([]), ValueError, "symbols must not be empty"),
        (lambda: Vocabulary(None), TypeError, "symbols must be an iterable of str"),
        (lambda: Vocabulary(["a", None]), TypeError, "symbols must hold str symbols"),
        (lambda: Vocabulary(["a"], sep=None), TypeError, "sep must be a str"),
        (lambda: Vocabulary.chars(b"abc"), TypeError, "text must be a str"),
        (lambda: words(None), TypeError, "text must be a str"),
        # encode and decode: unknown symbols, wrong types, out-of-range and non-integer ids
        (lambda: ABC.encode("abz"), ValueError, "'z'"),
        (lambda: ABC.encode(5), TypeError, "symbols must be an iterable of str"),
        (lambda: ABC.encode([97, 98]), TypeError, "symbols must hold str symbols"),
        (lambda: ABC.decode(torch.tensor([0, 5])), ValueError, r"ids must lie in \[0, 3\)"),
        (lambda: ABC.decode([0, -1]), ValueError, "ids must lie"),
        (lambda: ABC.decode(torch.tensor([[0, 1]])), ValueError, "ids must have 1 dimensions"),
        (lambda: ABC.decode(torch.tensor([0.0])), TypeError, "ids must hold integers"),
        (lambda: ABC.decode([0, 1.5]), TypeError, "ids must hold ints, got float"),
        (lambda: ABC.decode(["a"]), TypeError, "ids must hold ints, got str"),
        (lambda: ABC.decode("ab"), TypeError, "ids must be a 1-D tensor or a list"),
        (lambda: ABC.decode(3), TypeError, "ids must be a 1-D tensor or a list"),
        # the split: type, rank, sizes, strings, NaN
        (lambda: train_val_split([1, 2, 3]), TypeError, "tokens must be a torch.Tensor"),
        (lambda: train_val_split(torch.zeros(2, 3)), ValueError, "tokens must have 1 dim"),
        (lambda: train_val_split(torch.arange(10), 0.0), ValueError,
         "val_fraction must be greater than 0"),
        (lambda: train_val_split(torch.arange(10), 1.0), ValueError,
         "val_fraction must be less than 1"),
        (lambda: train_val_split(torch.arange(10), "0.1"), TypeError,
         "val_fraction must be a real number"),
        (lambda: train_val_split(torch.arange(10), float("nan")), ValueError,
         "val_fraction must be finite"),
        (lambda: train_val_split(torch.arange(1), 0.5), ValueError, "at least 2"),
    ],
)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_string_is_read_as_characters_where_the_docstring_says_so():
    """Vocabulary(symbols) and encode(symbols) take any iterable of str: a str is its
    characters (documented); from_tokens refuses one (it counts words)."""
    assert Vocabulary("abca").itos == ["a", "b", "c"]
    assert ABC.encode("cab").tolist() == [2, 0, 1] == ABC.encode(["c", "a", "b"]).tolist()
    assert Vocabulary.from_tokens(words("the cat sat the")).itos[:1] == ["the"]


# ------------------------------------------------------- sentences (chapters 4 and 5)


def test_sentences_split_at_ends_not_at_abbreviations():
    text = ('Mr. Howard met U.S. officials on Dec. 13. "We will win," he said. Is it 5? '
            "Yes!\nA new line starts a sentence. 2001 was a year. J. Smith agreed.")
    assert sentences(text) == [
        ["mr", "howard", "met", "u", "s", "officials", "on", "dec", "13"],
        ["we", "will", "win", "he", "said"],
        ["is", "it", "5"],
        ["yes"],
        ["a", "new", "line", "starts", "a", "sentence"],
        ["2001", "was", "a", "year"],
        ["j", "smith", "agreed"],
    ]
    assert sentences("") == [] and sentences(" . !\n\n") == []


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="ab AB1.!?'\"\n", max_size=80))
def test_sentences_keep_every_word_in_order(text):
    found = sentences(text)
    assert [w for s in found for w in s] == words(text)
    assert all(s for s in found)


def test_lee_sentences():
    found = sentences(load_text("lee"))
    assert sum(map(len, found)) == len(words(load_text("lee")))
    assert len(found) > 2000 and max(map(len, found)) < 150


def test_replace_unknown_and_pad():
    train = [["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat"]]
    vocab = Vocabulary.from_tokens([t for s in train for t in s], min_count=2)
    assert replace_unknown(train, vocab) == [["the", "cat", "sat"], ["the", UNK, "sat"],
                                             [UNK, "cat"]]
    assert replace_unknown([["the", "emu"], []], vocab) == [["the", UNK], []]
    assert pad_sentence(["a", "b"], 3) == [BOS, BOS, "a", "b", EOS]
    assert pad_sentence([], 1) == [EOS]
    assert (BOS, EOS, UNK) == ("<s>", "</s>", "<unk>")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: sentences(None), TypeError, "text must be a str"),
        (lambda: sentences(b"a. B"), TypeError, "text must be a str"),
        (lambda v: replace_unknown("a b", v), TypeError, "sentences must be a list"),
        (lambda v: replace_unknown([], v), ValueError, "sentences must not be empty"),
        (lambda v: replace_unknown(["a b"], v), TypeError, r"sentences\[0\] must be a list"),
        (lambda v: replace_unknown([["a", 1]], v), TypeError, r"sentences\[0\] must hold str"),
        (lambda v: replace_unknown([["a"]], {"a": 0}), TypeError, "vocab must be a Vocabulary"),
        (lambda v: replace_unknown([["a"]], Vocabulary("ab")), ValueError, "unk symbol"),
        (lambda v: pad_sentence(["a"], 0), ValueError, "order must be at least 1"),
        (lambda v: pad_sentence(["a"], 2.0), TypeError, "order must be an int"),
        (lambda v: pad_sentence(["a"], "2"), TypeError, "order must be an int"),
    ],
)
def test_sentence_helpers_bad_input(call, error, match):
    vocab = Vocabulary.from_tokens(["a", "a"], min_count=1)
    with pytest.raises(error, match=match):
        call(vocab) if call.__code__.co_argcount else call()


# ------------------------------------------------------------- planted-class corpus


def test_planted_corpus_follows_its_grammar():
    from lib.corpus import PLANTED_CLASSES, PLANTED_GRAMMAR, planted_corpus

    pc = planted_corpus(2000, seed=1)
    assert len(pc.sentences) == 2000
    assert pc.labels == {w: c for c, ws in PLANTED_CLASSES.items() for w in ws}
    used = set()
    for sentence in pc.sentences:  # every sentence is one template with its slots filled
        fits = [t for t in PLANTED_GRAMMAR if len(t) == len(sentence) and all(
            (pc.labels.get(w) == slot) if slot in PLANTED_CLASSES else w == slot
            for w, slot in zip(sentence, t, strict=True))]
        assert len(fits) == 1, sentence
        used.add(fits[0])
    assert used == set(PLANTED_GRAMMAR)
    assert len(pc.labels) == sum(len(ws) for ws in PLANTED_CLASSES.values())  # no overlaps


def test_planted_corpus_is_deterministic():
    from lib.corpus import planted_corpus

    assert planted_corpus(50, seed=7).sentences == planted_corpus(50, seed=7).sentences
    assert planted_corpus(50, seed=7).sentences != planted_corpus(50, seed=8).sentences


@pytest.mark.parametrize("zipf", [0.0, 1.0, 2.0])
def test_planted_corpus_word_frequencies_follow_zipf(zipf):
    from lib.corpus import PLANTED_CLASSES, planted_corpus

    counts = Counter(w for s in planted_corpus(20000, zipf=zipf, seed=0).sentences for w in s)
    weights = torch.tensor([1.0 / (r + 1) ** zipf for r in range(10)])
    for words_ in PLANTED_CLASSES.values():
        observed = torch.tensor([counts[w] for w in words_], dtype=torch.float64)
        n = observed.sum()
        p = (weights / weights.sum()).double()
        sigma = (n * p * (1 - p)).sqrt()  # binomial spread of each count
        assert ((observed - n * p).abs() < 5 * sigma).all(), (words_, observed)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_sentences": 0}, ValueError, "n_sentences must be at least 1"),
        ({"n_sentences": 2.5}, TypeError, "n_sentences must be an int"),
        ({"n_sentences": "10"}, TypeError, "n_sentences must be an int"),
        ({"n_sentences": 10, "zipf": -1.0}, ValueError, "zipf must be at least 0"),
        ({"n_sentences": 10, "zipf": float("nan")}, ValueError, "zipf must be finite"),
        ({"n_sentences": 10, "seed": -1}, ValueError, "seed must be at least 0"),
        ({"n_sentences": 10, "seed": None}, TypeError, "seed must be an int"),
    ],
)
def test_planted_corpus_bad_input(kwargs, error, match):
    from lib.corpus import planted_corpus

    with pytest.raises(error, match=match):
        planted_corpus(**kwargs)
