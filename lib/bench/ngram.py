"""``python -m lib.bench ngram``: chapter 4's tensor n-gram model against NLTK's, on Lee."""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from ..backend import CUDA, default_device


def _timed(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (CUDA work included)."""
    times = []
    for _ in range(repeats):
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _spread(times: list[float]) -> str:
    """Median and range of ``times`` in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    return f"{statistics.median(ms):.4g} ms (range {ms[0]:.4g}-{ms[-1]:.4g}, {len(ms)} runs)"


def nltk_ngrams(sentences, order: int):
    """Per sentence, the k-grams (k = 1..order) ending at each predicted token: the data
    NGramLM.fit counts, in the form NLTK's ``fit`` takes."""
    from ..corpus import pad_sentence

    for s in sentences:
        p = pad_sentence(s, order)
        yield [tuple(p[t - k + 1 : t + 1]) for t in range(order - 1, len(p))
               for k in range(1, order + 1)]


def compare_with_nltk(train, test, order: int = 3, discount: float = 0.75, repeats: int = 5,
                      sample: int = 40, batch: int = 2**20, seed: int = 0) -> dict:
    """Fit and score an interpolated Kneser-Ney model with lib.ngram and with NLTK.

    Both see the same n-grams; lib's model uses discount 0 at the unigram level and
    ``discount`` above, which is what NLTK's KneserNeyInterpolated computes (chapter 4),
    so the two give the same probabilities. NLTK scores ``sample`` test n-grams (it takes
    tens of milliseconds per n-gram); lib scores all test n-grams, and the test n-grams
    tiled to ``batch`` rows. Returns the timings (seconds), throughputs (n-grams per
    second) and the perplexities of both on the sample.
    """
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm import Vocabulary as NltkVocabulary

    from ..corpus import UNK, pad_sentence
    from ..ngram import NGramLM

    device = default_device()
    discounts = [0.0] + [discount] * (order - 1)
    def fit_lib():
        return NGramLM(order, "kneser_ney", discount=discounts, device=device).fit(train)

    def fit_nltk():
        lm = KneserNeyInterpolated(order, discount=discount,
                                   vocabulary=NltkVocabulary(unk_label=UNK))
        lm.fit(nltk_ngrams(train, order), (t for s in train for t in pad_sentence(s, order)))
        return lm

    ours, theirs = fit_lib(), fit_nltk()
    out = {"fit_lib": _timed(fit_lib, repeats), "fit_nltk": _timed(fit_nltk, repeats)}

    windows = ours.ngrams_of(test)  # (T, order) ids of every predicted test token
    rows = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
    picked = windows[rows[:sample].to(device)]
    pairs = [([ours.vocab[i] for i in row[:-1]], ours.vocab[row[-1]]) for row in picked.tolist()]
    tiled = windows.repeat(-(-batch // windows.shape[0]), 1)[:batch]
    out["score_lib_test"] = _timed(lambda: ours.ngram_probs(windows), repeats)
    out["score_lib_batch"] = _timed(lambda: ours.ngram_probs(tiled), repeats)
    out["score_nltk"] = _timed(lambda: [theirs.score(w, h) for h, w in pairs], repeats)
    out["n_test"], out["n_sample"], out["n_batch"] = windows.shape[0], len(pairs), batch

    p_lib = ours.ngram_probs(picked).tolist()
    p_nltk = [theirs.score(w, h) for h, w in pairs]
    out["max_rel_diff"] = max(abs(a - b) / b for a, b in zip(p_lib, p_nltk, strict=True))
    ppl = [float(torch.tensor(p, dtype=torch.float64).log().mean().neg().exp())
           for p in (p_lib, p_nltk)]
    out["ppl_sample_lib"], out["ppl_sample_nltk"] = ppl
    out["ppl_test_lib"] = ours.perplexity(test)
    return out


def bench_ngram(args) -> None:
    """Trigram Kneser-Ney on the Lee corpus, lib.ngram vs NLTK's KneserNeyInterpolated on
    the same n-grams with the same perplexity: fit time and scoring throughput (n-grams/s)
    as ratios, medians of 5 runs (CPU or CUDA)."""
    from ..corpus import Vocabulary, load_text, replace_unknown, sentences

    if not CUDA:  # NLTK runs on one core: give lib one thread too
        torch.set_num_threads(1)
    train, test = sentences(load_text("lee")), sentences(load_text("lee-test"))
    vocab = Vocabulary.from_tokens(itertools.chain.from_iterable(train), min_count=2)
    train, test = replace_unknown(train, vocab), replace_unknown(test, vocab)
    r = compare_with_nltk(train, test)
    med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
    print(f"Lee corpus: {sum(map(len, train))} training words in {len(train)} sentences, "
          f"{r['n_test']} test trigrams (lee-test), vocabulary {len(vocab)} (min count 2);")
    print(f"trigram interpolated Kneser-Ney, discount 0.75 (0 at the unigram level, as "
          f"NLTK), on {default_device()}, torch threads {torch.get_num_threads()}")
    print(f"fit   lib   {_spread(r['fit_lib'])}")
    print(f"fit   NLTK  {_spread(r['fit_nltk'])}")
    print(f"      NLTK / lib fit time: {med['fit_nltk'] / med['fit_lib']:.0f}x")
    tput = {k: n / med[k] for k, n in (("score_lib_test", r["n_test"]),
                                       ("score_lib_batch", r["n_batch"]),
                                       ("score_nltk", r["n_sample"]))}
    print(f"score lib   {r['n_test']} test trigrams: {_spread(r['score_lib_test'])}, "
          f"{tput['score_lib_test']:,.0f} n-grams/s")
    print(f"score lib   {r['n_batch']:,} (tiled): {_spread(r['score_lib_batch'])}, "
          f"{tput['score_lib_batch']:,.0f} n-grams/s")
    print(f"score NLTK  {r['n_sample']} sampled trigrams: {_spread(r['score_nltk'])}, "
          f"{tput['score_nltk']:,.1f} n-grams/s")
    print(f"      lib / NLTK throughput: {tput['score_lib_test'] / tput['score_nltk']:,.0f}x "
          f"(test batch), {tput['score_lib_batch'] / tput['score_nltk']:,.0f}x (tiled batch)")
    print(f"same model: perplexity on the {r['n_sample']} sampled trigrams lib "
          f"{r['ppl_sample_lib']:.6f}, NLTK {r['ppl_sample_nltk']:.6f};")
    print(f"      largest relative difference of a probability {r['max_rel_diff']:.1e}")
    print(f"lib perplexity on all {r['n_test']} test trigrams: {r['ppl_test_lib']:.2f}")


COMMANDS = {"ngram": bench_ngram}
