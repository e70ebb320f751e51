"""Word vectors and what to do with them: the vocabulary, queries, scores, PPMI + SVD.

Chapter 5; equation numbers refer to it. :mod:`lib.word2vec` trains vectors by skip-gram
with negative sampling and returns them as :class:`WordVectors`; this module holds what
any embedding method shares:

* :class:`Vocab`: words kept by ``min_count``, most frequent first, with their counts;
* :class:`WordVectors`: vectors (V, d) with their vocabulary; ``most_similar`` and
  ``analogy`` (3CosAdd) queries by cosine similarity, as gensim's ``KeyedVectors``;
* scores: :func:`neighbour_purity` against planted classes, :func:`word_pair_spearman`
  against human judgements such as :func:`wordsim353`;
* the count-based baseline: :func:`cooccurrence` counts with word2vec's window weights
  (eq. 11), :func:`ppmi` (eqs. 7, 8) and :func:`ppmi_svd` (eq. 9), the factorisation that
  SGNS performs implicitly (Levy & Goldberg 2014).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .corpus import check_sentences, package_text
from .validate import check_int, check_long_tensor, check_real, check_tensor

Sentences = Sequence[Sequence[str]]

# ----------------------------------------------------------------------- vocabulary


class Vocab:
    """Words seen ``min_count`` times or more, most frequent first (ties alphabetical).

    ``itos`` lists the words, ``stoi`` maps a word to its id, ``counts`` (V,) int64 holds
    how often each occurs in the text it was built from. Rarer words are dropped, as
    word2vec and gensim drop them: they are not mapped to an ``<unk>``.
    """

    def __init__(self, counts: Mapping[str, int], min_count: int = 1):
        check_int(min_count, "min_count", minimum=1)
        kept = sorted(((w, c) for w, c in counts.items() if c >= min_count),
                      key=lambda wc: (-wc[1], wc[0]))
        if not kept:
            raise ValueError(f"corpus has no word that occurs min_count={min_count} times")
        self.itos: list[str] = [w for w, _ in kept]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.counts = torch.tensor([c for _, c in kept], dtype=torch.long)

    @classmethod
    def from_sentences(cls, sentences: Sentences, min_count: int = 1) -> Vocab:
        """Count the words of ``sentences`` (lists of str) and keep the frequent ones."""
        check_sentences(sentences, "corpus")
        return cls(Counter(w for s in sentences for w in s), min_count)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word) -> bool:
        return word in self.stoi

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, words={int(self.counts.sum())})"

    def index(self, word: str, name: str = "word") -> int:
        """The id of ``word``; ``ValueError`` naming ``name`` when it is not in the vocabulary."""
        if not isinstance(word, str):
            raise TypeError(f"{name} must be a str, got {type(word).__name__}")
        if word not in self.stoi:
            raise ValueError(f"{name}={word!r} is not in the vocabulary")
        return self.stoi[word]

    def encode_sentences(self, sentences: Sentences) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids of the known words of ``sentences``, flattened, and the sentence of each.

        Returns ``ids`` (N,) and ``sentence`` (N,), both int64. Unknown words are dropped
        before windows are taken, as gensim does, so a window reaches past them.
        """
        check_sentences(sentences, "corpus")
        ids, sentence = [], []
        for k, s in enumerate(sentences):
            known = [self.stoi[w] for w in s if w in self.stoi]
            ids += known
            sentence += [k] * len(known)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(sentence, dtype=torch.long)


# ------------------------------------------------------------------ using vectors


class WordVectors:
    """Word vectors (V, d) with the :class:`Vocab` they belong to, and queries on them."""

    def __init__(self, vocab: Vocab, vectors: torch.Tensor, *, model: nn.Module | None = None,
                 losses: list[float] | None = None):
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
        check_tensor(vectors, "vectors", ndim=2)
        if vectors.shape[0] != len(vocab):
            raise ValueError(f"vectors must have one row per word ({len(vocab)}), got "
                             f"{vectors.shape[0]}")
        self.vocab, self.vectors = vocab, vectors.detach().float().cpu()
        self.unit = F.normalize(self.vectors, dim=1)  # rows of length 1 (0 stays 0)
        self.model, self.losses = model, losses

    def __getitem__(self, word: str) -> torch.Tensor:
        return self.vectors[self.vocab.index(word)]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words."""
        return float(self.unit[self.vocab.index(a, "a")] @ self.unit[self.vocab.index(b, "b")])

    def _nearest(self, query: torch.Tensor, exclude: list[int], k: int):
        check_int(k, "k", minimum=1)
        cos = self.unit @ F.normalize(query, dim=0)
        cos[exclude] = -math.inf
        top = torch.topk(cos, min(k, len(self.vocab) - len(exclude)))
        return [(self.vocab.itos[i], v) for v, i in zip(top.values.tolist(),
                                                        top.indices.tolist(), strict=True)]

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words of highest cosine similarity to ``word`` (itself left out)."""
        i = self.vocab.index(word)
        return self._nearest(self.unit[i], [i], k)

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """``a`` is to ``b`` as ``c`` is to ...? The words nearest ``b - a + c`` (3CosAdd).

        Unit vectors are combined and ``a``, ``b``, ``c`` themselves are left out, as in
        gensim's ``most_similar(positive=[b, c], negative=[a])``; scores are cosines.
        """
        ia, ib, ic = (self.vocab.index(w, n) for w, n in ((a, "a"), (b, "b"), (c, "c")))
        return self._nearest(self.unit[ib] - self.unit[ia] + self.unit[ic], [ia, ib, ic], k)


def neighbour_purity(vectors: WordVectors, labels: Mapping[str, str], k: int = 5) -> float:
    """Mean share of each labelled word's ``k`` nearest labelled neighbours in its class.

    Only words that have a label and are in the vocabulary take part; neighbours are by
    cosine similarity. Chance level is the share of same-class pairs among them.
    """
    if not isinstance(vectors, WordVectors):
        raise TypeError(f"vectors must be WordVectors, got {type(vectors).__name__}")
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping word -> class, got {type(labels).__name__}")
    check_int(k, "k", minimum=1)
    words = [w for w in vectors.vocab.itos if w in labels]
    if len(words) <= k:
        raise ValueError(f"labels must cover more than k={k} words of the vocabulary, "
                         f"got {len(words)}")
    unit = vectors.unit[[vectors.vocab.stoi[w] for w in words]]
    cos = (unit @ unit.T).fill_diagonal_(-math.inf)
    ids = {c: i for i, c in enumerate(sorted({labels[w] for w in words}))}
    cls = torch.tensor([ids[labels[w]] for w in words])
    return (cls[cos.topk(k, dim=1).indices] == cls[:, None]).double().mean().item()


def wordsim353() -> list[tuple[str, str, float]]:
    """WordSim-353 (Finkelstein et al. 2002) as gensim ships it: (word, word, mean score 0-10)."""
    pairs = []
    for line in package_text("gensim", "test/test_data/wordsim353.tsv").splitlines():
        if line and not line.startswith("#"):
            a, b, score = line.split("\t")
            pairs.append((a.lower(), b.lower(), float(score)))
    return pairs


def word_pair_spearman(vectors: WordVectors,
                       pairs: Iterable[tuple[str, str, float]]) -> tuple[float, int, int]:
    """Spearman correlation of cosine similarity with human scores on in-vocabulary pairs.

    Returns ``(rho, used, total)``: pairs with a word outside the vocabulary are skipped,
    as gensim's ``evaluate_word_pairs`` skips them. Words are compared lower-cased.
    """
    from scipy.stats import spearmanr

    if not isinstance(vectors, WordVectors):
        raise TypeError(f"vectors must be WordVectors, got {type(vectors).__name__}")
    pairs = list(pairs)
    used = [(a.lower(), b.lower(), s) for a, b, s in pairs
            if a.lower() in vectors.vocab and b.lower() in vectors.vocab]
    if len(used) < 3:
        raise ValueError(f"pairs must have at least 3 pairs in the vocabulary, got {len(used)}")
    model = [vectors.similarity(a, b) for a, b, _ in used]
    return float(spearmanr(model, [s for *_, s in used]).statistic), len(used), len(pairs)


# ------------------------------------------------------------------- PPMI + SVD


def cooccurrence(ids: torch.Tensor, sentence: torch.Tensor, vocab_size: int, window: int,
                 *, dynamic: bool = True) -> torch.Tensor:
    """Co-occurrence counts (V, V) float64: row = input word, column = output word.

    A pair at distance d of the same sentence counts ``(window - d + 1) / window`` with
    ``dynamic`` (the expected number of times :func:`lib.word2vec.skipgram_pairs` draws it, eq. 11)
    and 1 without. ids, sentence: (N,) int64 as from :meth:`Vocab.encode_sentences`.
    """
    check_long_tensor(ids, "ids", ndim=1, low=0, high=vocab_size)
    check_long_tensor(sentence, "sentence", ndim=1)
    if ids.shape != sentence.shape:
        raise ValueError("ids and sentence must have the same shape")
    check_int(vocab_size, "vocab_size", minimum=1)
    check_int(window, "window", minimum=1)
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64, device=ids.device)
    for d in range(1, min(window, ids.numel() - 1) + 1):
        same = sentence[d:] == sentence[:-d]
        left, right = ids[:-d][same], ids[d:][same]
        weight = (window - d + 1) / window if dynamic else 1.0
        for x, y in ((left, right), (right, left)):  # both directions
            counts += weight * torch.bincount(x * vocab_size + y,
                                              minlength=vocab_size**2).double()
    return counts.view(vocab_size, vocab_size)


def ppmi(counts: torch.Tensor, power: float = 0.75, shift: float = 1.0) -> torch.Tensor:
    """Shifted positive PMI of a co-occurrence matrix (V, V) -> (V, V) (eqs. 7, 8).

    ``max(0, log(#(x, y) / (#x * P(y))) - log shift)`` with ``#x`` the row sums and
    ``P(y)`` the column sums raised to ``power`` and normalised: the matrix that SGNS with
    ``shift`` negatives and that noise distribution factorises at its optimum (eq. 7;
    word2vec's skipping of a negative equal to the pair's output moves that optimum by
    ``-log(1 - #(x, y) / #x)``, eq. 12, which only matters when one word fills a large
    share of another's contexts).
    """
    check_tensor(counts, "counts", ndim=2)
    if counts.shape[0] != counts.shape[1]:
        raise ValueError(f"counts must be square, got {tuple(counts.shape)}")
    check_real(power, "power", minimum=0.0)
    shift = check_real(shift, "shift", minimum=0.0, strict=True)
    c = counts.double()
    if not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts must be finite and non-negative")
    rows, cols = c.sum(1, keepdim=True), c.sum(0, keepdim=True)
    noise = cols.pow(power) * (cols > 0)
    pmi = torch.log(c) - torch.log(rows) - torch.log(noise / noise.sum()) - math.log(shift)
    return torch.nan_to_num(pmi, nan=0.0, neginf=0.0, posinf=0.0).clamp(min=0.0)


def ppmi_svd(corpus: Sentences, dim: int = 100, window: int = 5, *, min_count: int = 1,
             power: float = 0.75, shift: float = 1.0, eig: float = 0.5,
             vocab: Vocab | None = None, seed: int = 0) -> WordVectors:
    """Count-based vectors: truncated SVD ``U_d S_d^eig`` of the PPMI matrix (eq. 9).

    Co-occurrences as :func:`cooccurrence` with word2vec's window weights, PPMI with
    context smoothing ``power`` and ``shift`` (:func:`ppmi`); ``eig=0.5`` splits the
    singular values evenly between words and contexts (Levy, Goldberg and Dagan 2015).
    A randomised SVD (``torch.svd_lowrank``, seeded) keeps large vocabularies cheap.
    """
    check_int(dim, "dim", minimum=1)
    eig = check_real(eig, "eig", minimum=0.0, maximum=1.0)
    if vocab is None:
        vocab = Vocab.from_sentences(corpus, min_count)
    if dim > len(vocab):
        raise ValueError(f"dim must be at most the vocabulary size {len(vocab)}, got {dim}")
    ids, sentence = vocab.encode_sentences(corpus)
    m = ppmi(cooccurrence(ids, sentence, len(vocab), window), power, shift).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        u, s, _ = torch.svd_lowrank(m, q=min(len(vocab), dim + 10), niter=4)
    return WordVectors(vocab, u[:, :dim] * s[:dim].pow(eig))
