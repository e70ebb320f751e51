"""``python -m lib.bench word2vec``: chapter 5's word2vec against gensim's, on the CPU."""

from __future__ import annotations

import statistics
import time
from collections import Counter

import torch

#: The hyperparameters both implementations get (gensim's names in brackets).
HPARAMS = dict(dim=100, window=5, negative=5, sample=1e-3, min_count=2)  # vector_size=dim


def gensim_word2vec(sentences, *, dim, window, negative, sample, min_count, epochs, seed,
                    workers):
    """gensim's skip-gram with negative sampling, with lib's hyperparameter names."""
    from gensim.models import Word2Vec

    return Word2Vec(sentences, vector_size=dim, window=window, negative=negative, sg=1,
                    hs=0, sample=sample, min_count=min_count, epochs=epochs, seed=seed,
                    workers=workers, alpha=0.025, min_alpha=1e-4, ns_exponent=0.75)


def as_word_vectors(model, vocab):
    """gensim's input vectors in the order of lib's ``vocab``, as lib ``WordVectors``."""
    from ..embeddings import WordVectors

    return WordVectors(vocab, torch.tensor(model.wv[vocab.itos]))


def throughput(sentences, threads: int, epochs: int = 3, repeats: int = 5) -> dict:
    """Words per second of lib and gensim on ``sentences``, runs interleaved.

    Both use ``threads`` threads (torch intra-op threads; gensim workers) and the same
    hyperparameters; a word is a corpus word, counted once per epoch, as gensim counts.
    """
    from ..word2vec import train_word2vec

    words = sum(map(len, sentences)) * epochs
    rates, before = {"lib": [], "gensim": []}, torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for r in range(repeats):
            start = time.perf_counter()
            train_word2vec(sentences, epochs=epochs, seed=r, progress=False, **HPARAMS)
            rates["lib"].append(words / (time.perf_counter() - start))
            start = time.perf_counter()
            gensim_word2vec(sentences, epochs=epochs, seed=r, workers=threads, **HPARAMS)
            rates["gensim"].append(words / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)
    return rates


def where_time_goes(sentences, epochs: int = 1) -> list[tuple[str, float]]:
    """Share of lib's CPU time per kind of tensor op in one training run (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    from ..word2vec import train_word2vec

    groups = {"scatter-add of rows (index_add_)": ("scatter_add", "index_add"),
              "gather of rows (index_select)": ("index_select",),
              "products and sums on (B, 1+k, d)": ("aten::mul", "aten::sum", "aten::bmm"),
              "per-op overhead (views, casts, allocation)": (
                  "view", "as_strided", "squeeze", "select", "slice", "aten::to",
                  "_to_copy", "empty", "copy_", "expand", "reshape", "detach")}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_word2vec(sentences, epochs=epochs, progress=False, **HPARAMS)
    shares, total = Counter(), 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        t = event.self_cpu_time_total
        total += t
        name = next((g for g, keys in groups.items() if any(k in event.key for k in keys)),
                    "sampling, windows, losses, masks")
        shares[name] += t
    return [(name, t / total) for name, t in shares.most_common()]


def _spread(rates: list[float]) -> str:
    r = sorted(x / 1e3 for x in rates)
    return f"{statistics.median(r):.0f}k words/s (range {r[0]:.0f}k-{r[-1]:.0f}k, {len(r)} runs)"


def _mean_range(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} (range {min(xs):.3f}-{max(xs):.3f}, {len(xs)} seeds)"


def bench_word2vec(args) -> None:
    """Skip-gram with negative sampling, lib.word2vec vs gensim's Word2Vec with the same
    hyperparameters, one thread each: training throughput (words/s) on the Lee corpus as a
    ratio, where lib's time goes, nearest-neighbour class purity on the planted corpus
    (lib, gensim, PPMI-SVD) and Spearman correlation with WordSim-353 on Lee (CPU)."""
    from ..corpus import load_text, planted_corpus, sentences
    from ..embeddings import Vocab, neighbour_purity, ppmi_svd, word_pair_spearman, wordsim353
    from ..word2vec import train_word2vec

    lee = sentences(load_text("lee"))
    n_words = sum(map(len, lee))
    hp = ", ".join(f"{k}={v}" for k, v in HPARAMS.items())
    print(f"Lee corpus: {n_words} words in {len(lee)} sentences; skip-gram, {hp}, lr 0.025 "
          f"-> 1e-4, on the CPU")
    print("throughput, 1 thread each (3 epochs per run, lib and gensim interleaved):")
    rates = throughput(lee, threads=1)
    ratio = statistics.median(rates["lib"]) / statistics.median(rates["gensim"])
    print(f"  lib    {_spread(rates['lib'])}")
    print(f"  gensim {_spread(rates['gensim'])}")
    print(f"  lib / gensim = {ratio:.2f} (ratio of the medians)")
    torch.set_num_threads(1)
    print("where lib's time goes (torch.profiler, share of the CPU time in tensor ops):")
    for name, share in where_time_goes(lee):
        print(f"  {share:6.1%}  {name}")
    print("  per pair lib gathers 2 + k rows of d floats, writes (1 + k) x d products, reads "
          "them back and scatter-adds 2 + k rows: each a pass through memory; gensim does "
          "one fused pass per pair in C (sdot/saxpy on rows in cache)")

    print("planted-class corpus: 5000 sentences, dim 50, 5 epochs, min_count 1; "
          "purity = share of the 5 nearest neighbours in the word's class (chance 9/79 = 0.114)")
    purity = {"lib": [], "gensim": [], "PPMI-SVD": []}
    for seed in range(3):
        pc = planted_corpus(5000, seed=seed)
        small = dict(HPARAMS, dim=50, min_count=1)
        wv = train_word2vec(pc.sentences, epochs=5, seed=seed, progress=False, **small)
        purity["lib"].append(neighbour_purity(wv, pc.labels))
        model = gensim_word2vec(pc.sentences, epochs=5, seed=seed, workers=1, **small)
        purity["gensim"].append(neighbour_purity(as_word_vectors(model, wv.vocab), pc.labels))
        purity["PPMI-SVD"].append(neighbour_purity(ppmi_svd(pc.sentences, dim=50), pc.labels))
    for name, values in purity.items():
        print(f"  {name:9} purity {_mean_range(values)}")

    pairs = wordsim353()
    vocab = Vocab.from_sentences(lee, HPARAMS["min_count"])
    print(f"Lee corpus, 20 epochs: Spearman correlation of cosine similarity with WordSim-353 "
          f"(pairs with both words in the vocabulary of {len(vocab)} words)")
    rho = {"lib": [], "gensim": []}
    for seed in range(3):
        wv = train_word2vec(lee, epochs=20, seed=seed, progress=False, vocab=vocab, **HPARAMS)
        rho["lib"].append(word_pair_spearman(wv, pairs)[0])
        model = gensim_word2vec(lee, epochs=20, seed=seed, workers=1, **HPARAMS)
        rho["gensim"].append(word_pair_spearman(as_word_vectors(model, vocab), pairs)[0])
    svd_rho, used, total = word_pair_spearman(ppmi_svd(lee, dim=100, vocab=vocab), pairs)
    for name, values in rho.items():
        print(f"  {name:9} Spearman {_mean_range(values)}")
    print(f"  PPMI-SVD  Spearman {svd_rho:.3f} (deterministic); coverage {used} of {total} pairs")


COMMANDS = {"word2vec": bench_word2vec}
