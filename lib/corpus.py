"""The book's text corpora: named loaders, a symbol vocabulary, and a deterministic split.

Every language chapter (4, 5, 6, 9) reads its text through this module and nothing else.
The text never comes from the network: it is a file that Python itself or a pip
dependency ships (design.md, Data). Each corpus is registered under a name:

==================  =====================================================  ===========
name                what it is                                             needs
==================  =====================================================  ===========
``python-docs``     the help texts of Python's ``pydoc`` (``pydoc_data``)   Python only
``lee``             gensim's Lee background corpus (news articles)         ``gensim``
``lee-test``        gensim's Lee test corpus                               ``gensim``
==================  =====================================================  ===========

A chapter that needs another shipped text adds one line with :func:`register_corpus`
(a loader returning a ``str``). The texts belong to whatever version of Python or of
the package is installed, so their sizes, and everything learned from them, can differ
slightly between machines.

Tokens: :class:`Vocabulary` maps symbols (characters, or words) to ids and back;
:meth:`Vocabulary.chars` builds the character vocabulary of a text (chapter 6) and
:func:`words` splits a text into lower-case words (chapters 4 and 5).
:func:`train_val_split` cuts a token sequence into a training head and a validation
tail, the same way every time.

Sentences (chapters 4 and 5): :func:`sentences` splits a text into word-tokenised
sentences, :func:`replace_unknown` maps the words a vocabulary does not know (for
instance those below a minimum count, see :meth:`Vocabulary.from_tokens`) to ``<unk>``,
and :func:`pad_sentence` adds the ``<s>`` and ``</s>`` markers an n-gram model needs.

Synthetic text with a known answer (chapter 5): :func:`planted_corpus` draws sentences
from a small grammar (:data:`PLANTED_GRAMMAR`) whose words fall into planted classes
(:data:`PLANTED_CLASSES`: animals, people, foods, tools, places, three kinds of verbs), so
that word embeddings can be scored against the classes.
"""

from __future__ import annotations

import importlib.resources
import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .validate import check_callable, check_choice, check_int, check_real, check_tensor

# ------------------------------------------------------------------ named corpora


@dataclass(frozen=True)
class CorpusInfo:
    """A registered corpus: its name, where the text comes from, and its loader."""

    name: str
    source: str  # one line for readers: what the text is and which package ships it
    requires: str | None  # the pip package that ships it; None when Python itself does
    loader: Callable[[], str]


CORPORA: dict[str, CorpusInfo] = {}


def _check_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def register_corpus(
    name: str, loader: Callable[[], str], source: str, requires: str | None = None
) -> None:
    """Add a named corpus; ``loader()`` returns its whole text as one string."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    check_callable(loader, "loader")
    _check_str(source, "source")
    if requires is not None:
        _check_str(requires, "requires")
    CORPORA[name] = CorpusInfo(name, source, requires, loader)


def _python_docs() -> str:
    # pydoc_data.topics.topics maps a topic ("assert", "class", ...) to its help text.
    from pydoc_data.topics import topics

    return "\n".join(topics[key].strip() + "\n" for key in sorted(topics))


def package_text(package: str, path: str, encoding: str = "utf-8") -> str:
    """The text of the data file ``path`` inside the installed ``package``.

    Raises ``ModuleNotFoundError`` naming the pip package when it is not installed.
    """
    for value, name in ((package, "package"), (path, "path"), (encoding, "encoding")):
        _check_str(value, name)
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        top = package.split(".")[0]
        raise ModuleNotFoundError(
            f"this corpus ships with the pip package {top!r}, which is not installed "
            f"(`pip install {top}`)"
        ) from err
    return root.joinpath(path).read_text(encoding=encoding)


register_corpus(
    "python-docs",
    _python_docs,
    "the help topics of Python's pydoc (module pydoc_data.topics), in sorted topic order",
)
register_corpus(
    "lee",
    lambda: package_text("gensim", "test/test_data/lee_background.cor"),
    "Lee background corpus: 300 short news articles, one per line (gensim test data)",
    requires="gensim",
)
register_corpus(
    "lee-test",
    # one byte of this file is Latin-1 (a pound sign), so it is not valid UTF-8
    lambda: package_text("gensim", "test/test_data/lee.cor", encoding="latin-1"),
    "Lee corpus: 50 short news articles, one per line (gensim test data)",
    requires="gensim",
)


def load_text(name: str = "python-docs") -> str:
    """The whole text of the corpus called ``name`` (see :data:`CORPORA`)."""
    check_choice(name, "name", sorted(CORPORA))
    return CORPORA[name].loader()


# ------------------------------------------------------------------------ tokens

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _check_symbols(symbols, name: str) -> list[str]:
    """An iterable of str symbols (a str counts as its characters), as a list."""
    try:
        symbols = list(symbols)
    except TypeError:
        kind = type(symbols).__name__
        raise TypeError(f"{name} must be an iterable of str, got {kind}") from None
    if not all(map(isinstance, symbols, itertools.repeat(str))):  # in C: fast on a corpus
        bad = next(t for t in symbols if not isinstance(t, str))
        raise TypeError(f"{name} must hold str symbols, got {type(bad).__name__}")
    return symbols


def words(text: str) -> list[str]:
    """Lower-case words of ``text``: runs of letters and digits, with an optional 's-like tail."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class Vocabulary:
    """A bijection between symbols (characters or words) and ids ``0 .. len - 1``.

    ``sep`` joins decoded symbols: ``""`` for characters, ``" "`` for words. With an
    ``unk`` symbol, unknown symbols encode to its id; without one they raise ``ValueError``.
    """

    def __init__(self, symbols: Iterable[str], sep: str = "", unk: str | None = None):
        symbols = _check_symbols(symbols, "symbols")
        _check_str(sep, "sep")
        if unk is not None:
            _check_str(unk, "unk")
        itos = list(dict.fromkeys(symbols))  # first occurrence wins, order kept
        if unk is not None and unk not in itos:
            itos.append(unk)
        if not itos:
            raise ValueError("symbols must not be empty")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(itos)}
        self.sep = sep
        self.unk = unk

    @classmethod
    def chars(cls, text: str) -> Vocabulary:
        """The characters of ``text``, sorted by code point."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return cls(sorted(set(text)), sep="")

    @classmethod
    def from_tokens(
        cls, tokens: Iterable[str], min_count: int = 1, unk: str | None = "<unk>"
    ) -> Vocabulary:
        """Word vocabulary: tokens seen ``min_count`` times or more, most frequent first.

        tokens: a list (or any iterable) of str tokens, e.g. ``words(text)``. A str is
        refused: counted as it is, it would give a vocabulary of its characters (use
        :meth:`chars` for that).
        """
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of str tokens, got a str: split it first "
                            "(e.g. words(text)), or use Vocabulary.chars(text) for characters")
        tokens = _check_symbols(tokens, "tokens")
        check_int(min_count, "min_count", minimum=1)
        counts = Counter(tokens)
        kept = [t for t, c in sorted(counts.items(), key=lambda tc: (-tc[1], tc[0]))
                if c >= min_count]
        return cls(kept, sep=" ", unk=unk)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, sep={self.sep!r}, unk={self.unk!r})"

    def encode(self, symbols: Sequence[str] | str) -> torch.Tensor:
        """Ids of ``symbols`` (a string is read character by character) as a 1-D LongTensor."""
        symbols = _check_symbols(symbols, "symbols")
        if self.unk is not None:
            unk_id = self.stoi[self.unk]
            ids = [self.stoi.get(s, unk_id) for s in symbols]
        else:
            try:
                ids = [self.stoi[s] for s in symbols]
            except KeyError as err:
                raise ValueError(f"symbols holds {err.args[0]!r}, which is not in the "
                                 "vocabulary (and the vocabulary has no unk)") from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The symbols of 1-D ``ids``, joined by ``sep``."""
        if isinstance(ids, torch.Tensor):
            check_tensor(ids, "ids", ndim=1)
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
                raise TypeError(f"ids must hold integers, got {ids.dtype}")
            ids = ids.tolist()
        elif isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a 1-D tensor or a list of ints, got {type(ids).__name__}")
        else:
            bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int)), None)
            if bad is not None:
                raise TypeError(f"ids must hold ints, got {type(bad).__name__}")
        n = len(self)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids must lie in [0, {n}), got {bad[0]}")
        return self.sep.join(self.itos[i] for i in ids)


# --------------------------------------------------------------------- sentences

BOS, EOS, UNK = "<s>", "</s>", "<unk>"  # sentence start, sentence end, unknown word

# A candidate sentence end: . ! or ? (and closing quotes or brackets), white space, then
# something that can open a sentence (a capital letter or a digit, maybe after a quote).
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")
# Words after which a full stop does not end the sentence ("Mr. Howard", "Gen. Franks").
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof gen lt col sgt capt cmdr gov sen rep rev mt no vs etc "
    "jan feb mar apr jun jul aug sep sept oct nov dec inc corp co ltd".split())


def _is_abbreviation(word: str) -> bool:
    # an initial ("J."), a dotted abbreviation ("U.S."), or one of the list above
    word = word.lstrip("\"'([")
    return len(word) == 1 or "." in word or word.lower() in _ABBREVIATIONS


def sentences(text: str) -> list[list[str]]:
    """Word-tokenised sentences of ``text``, each a list of lower-case :func:`words`.

    Every line is split at ``.``, ``!`` or ``?`` followed by white space and a capital
    letter or a digit, unless the full stop ends an abbreviation ("Mr.", "U.S.", an
    initial); sentences never span lines (a corpus line is a document). A rule this
    simple splits a few sentences wrongly, the same way every time. Sentences with no
    word are dropped.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    found = []
    for line in text.splitlines():
        start = 0
        for end in _SENTENCE_END.finditer(line):
            before = line[start:end.start()].split()
            if end.group().startswith(".") and before and _is_abbreviation(before[-1]):
                continue
            found.append(line[start:end.end()])
            start = end.end()
        found.append(line[start:])
    return [tokens for tokens in map(words, found) if tokens]


def check_sentences(sentences, name: str = "sentences") -> list[list[str]]:
    """Raise unless ``sentences`` is a non-empty list of lists of strings; return it."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Sequence):
        raise TypeError(f"{name} must be a list of token lists, got {type(sentences).__name__}")
    if len(sentences) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, tokens in enumerate(sentences):
        if isinstance(tokens, str) or not isinstance(tokens, Sequence):
            raise TypeError(f"{name}[{i}] must be a list of str tokens, got "
                            f"{type(tokens).__name__}")
        if not all(map(isinstance, tokens, itertools.repeat(str))):  # in C: fast on a corpus
            bad = next(t for t in tokens if not isinstance(t, str))
            raise TypeError(f"{name}[{i}] must hold str tokens, got {type(bad).__name__}")
    return sentences


def replace_unknown(sentences: Sequence[Sequence[str]], vocab: Vocabulary) -> list[list[str]]:
    """``sentences`` with every token that ``vocab`` does not know replaced by ``vocab.unk``.

    With ``vocab = Vocabulary.from_tokens(training_tokens, min_count=2)`` the words seen
    once in training become ``<unk>`` there, and so do new words in validation text, so
    that the model learns how often an unknown word comes, and where.
    """
    check_sentences(sentences)
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
    if vocab.unk is None:
        raise ValueError("vocab must have an unk symbol to replace unknown tokens with")
    return [[t if t in vocab.stoi else vocab.unk for t in tokens] for tokens in sentences]


def pad_sentence(tokens: Sequence[str], order: int) -> list[str]:
    """``order - 1`` start markers, the tokens, one end marker: ``<s> <s> a b </s>`` for 3.

    An n-gram model of order ``order`` predicts every token and the end marker from the
    ``order - 1`` tokens before it; the start markers give the first words a context.
    """
    check_int(order, "order", minimum=1)
    return [BOS] * (order - 1) + list(tokens) + [EOS]


def train_val_split(tokens: torch.Tensor, val_fraction: float = 0.1):
    """Split a 1-D token sequence into ``(train, val)``: the head and the last ``val_fraction``.

    The cut is contiguous and deterministic (no shuffling), so that no validation
    window overlaps a training window and every chapter scores the same tail.
    Both parts keep at least one token.
    """
    check_tensor(tokens, "tokens", ndim=1)
    val_fraction = check_real(val_fraction, "val_fraction", minimum=0.0, maximum=1.0,
                              strict=True)
    n = tokens.numel()
    if n < 2:
        raise ValueError(f"tokens must hold at least 2 tokens to split, got {n}")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return tokens[: n - n_val], tokens[n - n_val :]


# ------------------------------------------------- a synthetic corpus with planted classes

#: Word classes of :func:`planted_corpus`, each word list in decreasing order of frequency.
PLANTED_CLASSES: dict[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "horse", "cow", "sheep", "goat", "pig", "mouse", "rabbit", "fox"),
    "person": ("farmer", "baker", "smith", "cook", "teacher", "doctor", "miller", "tailor",
               "sailor", "potter"),
    "food": ("bread", "apple", "cheese", "rice", "soup", "cake", "carrot", "bean", "egg", "pie"),
    "tool": ("hammer", "saw", "drill", "knife", "spade", "rake", "axe", "wrench", "chisel",
             "brush"),
    "place": ("garden", "kitchen", "barn", "field", "forest", "river", "market", "village",
              "hill", "yard"),
    "eating verb": ("eats", "chews", "bites", "tastes", "swallows", "nibbles", "licks",
                    "munches", "gobbles", "sniffs"),
    "handling verb": ("holds", "uses", "grabs", "cleans", "carries", "sharpens", "mends",
                      "drops", "lifts", "polishes"),
    "motion verb": ("walks", "runs", "goes", "hurries", "wanders", "strolls", "climbs",
                    "returns", "travels", "marches"),
}

#: The grammar of :func:`planted_corpus`: a slot named after a class takes one of its words,
#: any other slot is a literal function word. Subjects share verbs (animals and people both
#: eat and move), objects share determiners and prepositions, so classes overlap in context.
PLANTED_GRAMMAR: tuple[tuple[str, ...], ...] = (
    ("the", "animal", "eating verb", "the", "food"),
    ("a", "person", "eating verb", "a", "food"),
    ("the", "person", "handling verb", "a", "tool"),
    ("the", "animal", "motion verb", "to", "the", "place"),
    ("a", "person", "motion verb", "to", "the", "place", "with", "a", "tool"),
    ("the", "food", "is", "in", "the", "place"),
    ("a", "tool", "is", "in", "the", "place"),
)


@dataclass(frozen=True)
class PlantedCorpus:
    """Sentences drawn from :data:`PLANTED_GRAMMAR`, and the classes planted in them.

    ``labels`` maps each class word to its class; function words have no label.
    """

    sentences: list[list[str]]
    classes: dict[str, tuple[str, ...]]
    labels: dict[str, str]


def planted_corpus(n_sentences: int, *, zipf: float = 1.0, seed: int = 0) -> PlantedCorpus:
    """``n_sentences`` sentences of a small grammar with planted word classes (chapter 5).

    Each sentence picks a template of :data:`PLANTED_GRAMMAR` uniformly and fills every
    class slot with a word of :data:`PLANTED_CLASSES`, the word of rank ``r`` (0-based)
    with probability proportional to ``1 / (r + 1) ** zipf``: frequencies inside a class
    follow Zipf's law as in real text (``zipf=0``: uniform). Nothing but the class decides
    which contexts a word can appear in, so the class is the ground truth that an
    embedding's nearest neighbours can be scored against. Deterministic for a ``seed``.
    """
    check_int(n_sentences, "n_sentences", minimum=1)
    zipf = check_real(zipf, "zipf", minimum=0.0)
    check_int(seed, "seed", minimum=0)
    rng = random.Random(seed)
    cum_weights = {c: list(itertools.accumulate(1.0 / (r + 1) ** zipf for r in range(len(ws))))
                   for c, ws in PLANTED_CLASSES.items()}
    sentences = []
    for _ in range(n_sentences):
        template = PLANTED_GRAMMAR[rng.randrange(len(PLANTED_GRAMMAR))]
        sentences.append([rng.choices(PLANTED_CLASSES[slot], cum_weights=cum_weights[slot])[0]
                          if slot in PLANTED_CLASSES else slot for slot in template])
    labels = {w: c for c, ws in PLANTED_CLASSES.items() for w in ws}
    return PlantedCorpus(sentences, dict(PLANTED_CLASSES), labels)
