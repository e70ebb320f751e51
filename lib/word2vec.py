"""Skip-gram with negative sampling (word2vec), trained with tensor ops on any device.

Chapter 5 derives what is here; equation numbers refer to it. The module reads top down:

* sampling: :func:`keep_probability` (subsampling of frequent words, eq. 10),
  :func:`noise_distribution` (the unigram^0.75 noise, eq. 5) and :class:`NoiseSampler`;
* pairs: :func:`skipgram_pairs` makes every (input, output) pair of a run of text with
  tensor ops on its device, dynamic window included (eqs. 2 and 11);
* the model: :class:`SkipGramNS` holds the input vectors ``W`` and output vectors ``C``;
  ``forward`` is the loss of eq. 4 for autograd, ``sgd_step`` applies eq. 6 by hand,
  touching only the rows in the batch, as word2vec does;
* :func:`train_word2vec` runs epochs of subsampling, pair generation, negative sampling and
  SGD on the device, with the learning rate decaying linearly like word2vec's and gensim's.

The vocabulary, the queries on trained vectors (``most_similar``, ``analogy``), their
scores and the PPMI + SVD baseline live in :mod:`lib.embeddings` and are re-exported here.
The data flow follows word2vec.c and gensim: the *context* word of a pair is the input
(a row of ``W``), the *centre* word is the output to predict (a row of ``C``), and the
negatives replace the centre word.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .embeddings import (  # noqa: F401  (re-exported: chapter 5's API in one place)
    Sentences,
    Vocab,
    WordVectors,
    cooccurrence,
    neighbour_purity,
    ppmi,
    ppmi_svd,
    word_pair_spearman,
    wordsim353,
)
from .validate import check_bool, check_int, check_long_tensor, check_real, check_same, check_tensor

# ----------------------------------------------------------------------- sampling


def _check_counts(counts) -> torch.Tensor:
    check_tensor(counts, "counts", ndim=1)
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"counts must hold integers or reals, got {counts.dtype}")
    if counts.numel() == 0:
        raise ValueError("counts must not be empty")
    c = counts.double()
    if not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts must be finite and non-negative")
    if c.sum() <= 0:
        raise ValueError("counts must not all be zero")
    return c


def keep_probability(counts: torch.Tensor, sample: float = 1e-3) -> torch.Tensor:
    """Probability of keeping each occurrence of a word when subsampling (eq. 10).

    counts (V,) -> (V,) float64. With ``t = sample * counts.sum()``, a word seen ``c`` times
    is kept with probability ``min(1, (sqrt(c / t) + 1) * t / c)``: the formula of
    word2vec.c and of gensim's ``Word2Vec.prepare_vocab`` (not the paper's
    ``sqrt(t / f)``). ``sample=0`` keeps every word.
    """
    c = _check_counts(counts)
    sample = check_real(sample, "sample", minimum=0.0, maximum=1.0)
    if sample == 0.0:
        return torch.ones_like(c)
    t = sample * c.sum()
    return ((torch.sqrt(c / t) + 1) * t / c).clamp(max=1.0)  # c = 0 gives inf -> 1


def noise_distribution(counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """Probabilities of drawing each word as a negative, ``counts**power`` normalised (eq. 5).

    counts (V,) -> (V,) float64, summing to 1. ``power=1`` is the unigram distribution,
    ``0`` the uniform one; word2vec uses 3/4.
    """
    c = _check_counts(counts)
    power = check_real(power, "power", minimum=0.0)
    weights = torch.where(c > 0, c.pow(power), torch.zeros_like(c))
    return weights / weights.sum()


class NoiseSampler:
    """Draws negatives from a noise distribution (V,) in O(1) per draw: Walker's alias method.

    Word i is drawn with probability ``probs[i]`` exactly (up to float rounding): a uniform
    slot ``j`` is taken, then ``j`` itself with probability ``accept[j]`` and ``alias[j]``
    otherwise (Vose's construction). word2vec.c uses a table of 10^8 entries instead and
    gensim a cumulative table with binary search; this one needs two small (V,) arrays,
    which stay in cache, and a few tensor ops per batch on any device.
    """

    def __init__(self, probs: torch.Tensor):
        check_tensor(probs, "probs", ndim=1)
        p = probs.detach().double().cpu()
        if p.numel() == 0 or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probs must be non-negative, finite and not all zero")
        q = (p * (p.numel() / p.sum())).tolist()  # mean 1: slot j holds q[j] of word j
        accept, alias = [1.0] * len(q), list(range(len(q)))
        small = [j for j, v in enumerate(q) if v < 1.0]
        large = [j for j, v in enumerate(q) if v >= 1.0]
        while small and large:
            j, i = small.pop(), large.pop()
            accept[j], alias[j] = q[j], i  # slot j: word j with q[j], the rest to word i
            q[i] -= 1.0 - q[j]
            (small if q[i] < 1.0 else large).append(i)
        self.accept = torch.tensor(accept, dtype=torch.float32)
        self.alias = torch.tensor(alias, dtype=torch.long)

    def to(self, device) -> NoiseSampler:
        self.accept, self.alias = self.accept.to(device), self.alias.to(device)
        return self

    def probabilities(self) -> torch.Tensor:
        """The distribution the table encodes (V,) float64, for checking it."""
        p = self.accept.double().cpu()
        return p.index_add(0, self.alias.cpu(), 1.0 - p) / p.numel()

    def __call__(self, shape: tuple[int, ...], generator: torch.Generator | None = None):
        """A LongTensor of ``shape`` word ids, drawn independently."""
        dev = self.accept.device
        j = torch.randint(0, self.accept.numel(), shape, generator=generator, device=dev)
        u = torch.rand(shape, generator=generator, device=dev)
        return torch.where(u < self.accept[j], j, self.alias[j])


# -------------------------------------------------------------------------- pairs


def skipgram_pairs(ids: torch.Tensor, sentence: torch.Tensor, window: int, *,
                   dynamic: bool = True, generator: torch.Generator | None = None):
    """Every skip-gram pair of a stretch of text, on the tensors' device (eqs. 2, 11).

    ids, sentence: (N,) int64, the words and the sentence each belongs to. The word at
    position i is an output; each word at j != i of the same sentence with
    ``|i - j| <= b_i`` is an input for it, where ``b_i = window`` or, with ``dynamic``,
    is drawn uniformly from 1..window per position (word2vec's reduced window, which
    weights a context at distance d by ``(window - d + 1) / window`` on average).
    Returns ``(inputs, outputs)``, each (P,) int64, ordered by output position.
    """
    check_long_tensor(ids, "ids", ndim=1)
    check_long_tensor(sentence, "sentence", ndim=1)
    if ids.shape != sentence.shape or ids.device != sentence.device:
        raise ValueError(f"ids and sentence must have the same shape and device, got "
                         f"{tuple(ids.shape)} on {ids.device}, {tuple(sentence.shape)} on "
                         f"{sentence.device}")
    check_int(window, "window", minimum=1)
    check_bool(dynamic, "dynamic")
    n, dev = ids.numel(), ids.device
    if n == 0:
        return ids.new_empty(0), ids.new_empty(0)
    offsets = torch.cat([torch.arange(-window, 0, device=dev),
                         torch.arange(1, window + 1, device=dev)])  # (2w,)
    reach = torch.full((n,), window, device=dev)
    if dynamic:
        reach = reach - torch.randint(0, window, (n,), generator=generator, device=dev)
    pos = torch.arange(n, device=dev)[:, None] + offsets  # (N, 2w) input positions
    inside = (pos >= 0) & (pos < n) & (offsets.abs() <= reach[:, None])
    pos = pos.clamp(0, n - 1)
    inside &= sentence[pos] == sentence[:, None]
    out_pos, k = inside.nonzero(as_tuple=True)  # row-major: by output, then offset
    return ids[pos[out_pos, k]], ids[out_pos]


# -------------------------------------------------------------------------- model


class SkipGramNS(nn.Module):
    """Skip-gram with negative sampling: input vectors ``W`` (V, d), output vectors ``C``.

    Initialised as gensim 4 does: ``W`` uniform in [-1/d, 1/d), ``C`` zero (word2vec.c
    draws ``W`` from half that range).
    """

    def __init__(self, vocab_size: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        check_int(vocab_size, "vocab_size", minimum=1)
        check_int(dim, "dim", minimum=1)
        self.W = nn.Parameter((2 * torch.rand(vocab_size, dim, generator=generator) - 1) / dim)
        self.C = nn.Parameter(torch.zeros(vocab_size, dim))

    def _check(self, inputs, outputs, negatives) -> None:
        V = self.W.shape[0]
        for name, ids in (("inputs", inputs), ("outputs", outputs), ("negatives", negatives)):
            check_tensor(ids, name)
        check_same("device", inputs=inputs, outputs=outputs, negatives=negatives,
                   model=self.W)
        check_long_tensor(inputs, "inputs", ndim=1, low=0, high=V)
        check_long_tensor(outputs, "outputs", ndim=1, low=0, high=V)
        check_long_tensor(negatives, "negatives", ndim=2, low=0, high=V)
        if not inputs.shape[0] == outputs.shape[0] == negatives.shape[0]:
            raise ValueError(f"inputs, outputs and negatives must have the same length, got "
                             f"{inputs.shape[0]}, {outputs.shape[0]}, {negatives.shape[0]}")

    def scores(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``w_x . c_t`` for inputs (B,) and targets (B, T) -> (B, T)."""
        w = self.W.index_select(0, inputs)  # (B, d): a one-hot product, eq. 1
        c = self.C.index_select(0, targets.reshape(-1)).view(*targets.shape, -1)  # (B, T, d)
        return (c * w[:, None]).sum(-1)

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor,
                negatives: torch.Tensor) -> torch.Tensor:
        """Negative-sampling loss of each pair (eq. 4): inputs, outputs (B,), negatives (B, k).

        Returns (B,) ``-log s(w_x.c_y) - sum_j log s(-w_x.c_nj)``; a negative that equals
        the pair's output is skipped, as in word2vec.c and gensim.
        """
        self._check(inputs, outputs, negatives)
        s = self.scores(inputs, torch.cat([outputs[:, None], negatives], 1))
        real = negatives != outputs[:, None]
        return F.softplus(-s[:, 0]) + (F.softplus(s[:, 1:]) * real).sum(1)

    @torch.no_grad()
    def sgd_step(self, inputs: torch.Tensor, outputs: torch.Tensor,
                 negatives: torch.Tensor, lr: float, *, check: bool = True
                 ) -> torch.Tensor:
        """One SGD step of eq. 6 on a batch, in place; returns the loss (B,).

        inputs, outputs (B,), negatives (B, k): word ids on the model's device.
        The update of ``forward(...).sum().backward()`` and ``p -= lr * p.grad``,
        but only the rows of the batch are read and written (no dense
        gradient), and all pairs of the batch see the weights from before the
        step (word2vec's loop sees each update before the next pair).
        ``check=False`` skips the argument checks (train_word2vec's own batches).
        """
        if check:
            self._check(inputs, outputs, negatives)
            lr = check_real(lr, "lr", minimum=0.0, strict=True)
        targets = torch.cat([outputs[:, None], negatives], 1)  # (B, 1 + k)
        B, T = targets.shape
        real = targets != outputs[:, None]  # negatives equal to y are skipped
        real[:, 0] = True
        w = self.W.index_select(0, inputs)  # (B, d)
        c = self.C.index_select(0, targets.view(-1)).view(B, T, -1)  # (B, T, d)
        s = (c * w[:, None]).sum(-1)  # (B, T): w_x . c_t
        label = (torch.arange(T, device=s.device) == 0).float()  # [t = y]
        loss = (F.softplus(s * (1 - 2 * label)) * real).sum(1)  # eq. 4
        g = (label - torch.sigmoid(s)) * (real * lr)  # lr g_t, eq. 6
        self.W.index_add_(0, inputs, torch.bmm(g[:, None, :], c).squeeze(1))
        self.C.index_add_(0, targets.view(-1),
                          (g[:, :, None] * w[:, None, :]).view(B * T, -1))
        return loss


# ----------------------------------------------------------------------- training


def _chunks(sentence: torch.Tensor, words: int) -> list[tuple[int, int]]:
    """Cut positions 0..N into runs of whole sentences of at most ``words`` words each.

    gensim's jobs (``batch_words``): a sentence that would overflow a run starts the next;
    a sentence longer than ``words`` is a run of its own.
    """
    n = sentence.numel()
    starts = torch.nonzero(torch.diff(sentence, prepend=sentence[:1] - 1)).flatten().tolist()
    bounds, a = [], 0
    for s, e in zip(starts, starts[1:] + [n], strict=True):  # sentence s..e
        if e - a > words and s > a:
            bounds.append((a, s))
            a = s
    bounds.append((a, n))
    return bounds


def _check_device(device) -> torch.device:
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={str(device)!r} is not a torch device name") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}, but PyTorch sees no CUDA device")
    return device


def _diverged(epoch: int, batch_size: int, outputs: torch.Tensor, vocab: Vocab) -> None:
    counts = torch.bincount(outputs)
    top = int(counts.argmax())
    raise FloatingPointError(
        f"training diverged in epoch {epoch + 1} (the loss is not finite).\n"
        f"All pairs of a batch see the weights from before the step, so a word\n"
        f"in many of them gets a step that many times too large: "
        f"{vocab.itos[top]!r} is the\noutput of {counts[top] / outputs.numel():.0%} "
        f"of this run's pairs. Subsample frequent words (sample > 0),\n"
        f"or lower batch_size (now {batch_size}) or lr.")


def train_word2vec(corpus: Sentences, dim: int = 100, window: int = 5, negative: int = 5,
                   epochs: int = 5, batch_size: int = 512, device: str | torch.device = "cpu",
                   *, min_count: int = 1, sample: float = 1e-3, power: float = 0.75,
                   lr: float = 0.025, min_lr: float = 1e-4, dynamic_window: bool = True,
                   seed: int = 0, vocab: Vocab | None = None, chunk_words: int = 10_000,
                   progress: bool = True, desc: str = "word2vec") -> WordVectors:
    """Train skip-gram with negative sampling on ``corpus`` (a list of lists of words).

    Each epoch walks the corpus in runs of whole sentences of at most ``chunk_words``
    words (gensim's jobs); per run, on ``device``: subsample (eq. 10), make the pairs
    (:func:`skipgram_pairs`), then for each batch of ``batch_size`` pairs draw ``negative``
    noise words per pair (eq. 5) and take an SGD step (eq. 6). The learning rate is set
    per run, falling linearly from ``lr`` to ``min_lr`` with the words done, as in gensim.
    Returns :class:`WordVectors` of the input vectors, with the model, and the mean loss
    per pair of every run in ``.losses``. Deterministic for a ``seed`` and a device.
    Raises ``FloatingPointError`` with advice when the loss stops being finite, which
    batched SGD does when one word fills a large share of every batch (chapter 5).
    """
    for name, value in (("dim", dim), ("window", window), ("negative", negative),
                        ("epochs", epochs), ("batch_size", batch_size),
                        ("chunk_words", chunk_words)):
        check_int(value, name, minimum=1)
    lr = check_real(lr, "lr", minimum=0.0, strict=True)
    min_lr = check_real(min_lr, "min_lr", minimum=0.0, maximum=lr)
    check_int(seed, "seed", minimum=0)
    check_bool(progress, "progress")
    device = _check_device(device)
    if vocab is None:
        vocab = Vocab.from_sentences(corpus, min_count)
    elif not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a Vocab, got {type(vocab).__name__}")
    keep = keep_probability(vocab.counts, sample).float().to(device)
    noise = NoiseSampler(noise_distribution(vocab.counts, power)).to(device)
    ids, sentence = (t.to(device) for t in vocab.encode_sentences(corpus))
    if ids.numel() == 0:
        raise ValueError("corpus has no word of the vocabulary")
    model = SkipGramNS(len(vocab), dim, torch.Generator().manual_seed(seed)).to(device)
    g = torch.Generator(device).manual_seed(seed)
    bounds, n, losses = _chunks(sentence.cpu(), chunk_words), ids.numel(), []
    bar = tqdm(total=epochs * n, desc=desc, unit="word", unit_scale=True,
               disable=not progress, mininterval=0.5)
    for epoch in range(epochs):
        for a, b in bounds:
            kept = torch.rand(b - a, generator=g, device=device) < keep[ids[a:b]]
            inputs, outputs = skipgram_pairs(ids[a:b][kept], sentence[a:b][kept], window,
                                              dynamic=dynamic_window, generator=g)
            # one learning rate per run of sentences, from the words done before it (gensim)
            lr_now = max(min_lr, lr - (lr - min_lr) * (epoch * n + a) / (epochs * n))
            negatives = noise((inputs.numel(), negative), g)  # (P, k): one call per run
            total = torch.zeros((), device=device)
            for s in range(0, inputs.numel(), batch_size):
                batch = slice(s, s + batch_size)
                total += model.sgd_step(inputs[batch], outputs[batch], negatives[batch],
                                        lr_now, check=False).sum()
            if inputs.numel():
                losses.append(total.item() / inputs.numel())
                if not math.isfinite(losses[-1]):
                    _diverged(epoch, batch_size, outputs, vocab)
            bar.update(b - a)
    bar.close()
    return WordVectors(vocab, model.W.detach(), model=model, losses=losses)


