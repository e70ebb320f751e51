"""``python -m lib.bench medusa``: Medusa decoding against plain greedy decoding (chapter 9).

Trains a small character-level :class:`lib.transformer.TinyLM` on Python's documentation
and four Medusa heads on it (base frozen), then measures, on prompts from the validation
text: the heads' top-1/top-5 accuracies; new tokens per base forward pass for trees of
several sizes grown from those accuracies, with greedy and typical acceptance (greedy
output checked identical to plain greedy decoding); and the time to decode with Medusa and
without, medians of 7 interleaved runs with their range, as wall-clock time and as CPU
time of the process; on a CPU, also where a Medusa step's time goes (:func:`step_profile`,
eq. 15). On a CPU the model is chapter 9's quick model and runs on one thread; on CUDA a
larger one, whose attention is the Triton kernel (``backend="auto"``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ..backend import CUDA
from ..medusa import MedusaHeads, head_accuracy, medusa_generate, train_medusa_heads
from ..medusa_tree import grow_tree
from ..training import train_lm
from ..transformer import TinyLM
from ..validate import check_positive_int
from .ssm import summary

SIZES = {  # chapter 9's quick model on a CPU; a larger one on a GPU
    "cpu": dict(d_model=64, n_heads=4, n_layers=1, max_len=64, steps=400, batch_size=24,
                lr=1e-2, head_steps=150, head_batch=16),
    "cuda": dict(d_model=256, n_heads=8, n_layers=4, max_len=256, steps=3000, batch_size=64,
                 lr=1e-3, head_steps=1000, head_batch=64),
}


def decode_runs(prompts: Sequence[torch.Tensor], decode: Callable[[torch.Tensor], object]
                ) -> tuple[float, float]:
    """Wall-clock and process CPU seconds to run ``decode(prompt)`` on every prompt."""
    if CUDA:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for prompt in prompts:
        decode(prompt)
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def decode_times(base: TinyLM, heads: MedusaHeads, prompts: Sequence[torch.Tensor],
                 max_new_tokens: int, choices, repeats: int = 7) -> dict[str, dict]:
    """Seconds to decode every prompt greedily, plainly (``base.generate``) and with Medusa.

    After one warm-up of each, ``repeats`` rounds, each timing plain then Medusa (so that a
    change in the machine's load hits both alike). Returns, for "plain" and "medusa",
    {"wall": [seconds per round], "cpu": [process CPU seconds per round]}.
    """
    runs = {"plain": lambda p: base.generate(p, max_new_tokens),
            "medusa": lambda p: medusa_generate(base, heads, p, max_new_tokens, choices)}
    times = {name: {"wall": [], "cpu": []} for name in runs}
    for fn in runs.values():
        decode_runs(prompts[:1], fn)  # warm-up
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = decode_runs(prompts, fn)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


PHASES = ("draft", "tree pass", "acceptance", "cache update", "bookkeeping")


def step_profile(base: TinyLM, heads: MedusaHeads, prompts: Sequence[torch.Tensor],
                 max_new_tokens: int, choices, repeats: int = 3) -> dict[str, float]:
    """Process CPU seconds per decoding step: plain greedy decoding's, and each phase of
    greedy Medusa's (:func:`lib.medusa.medusa_generate` with ``profile=True``).

    After one warm-up of each, decodes every prompt ``repeats`` times both ways. Returns
    "plain step" (``base.generate``'s CPU time over the new tokens it wrote), then for
    Medusa the phases of :data:`PHASES` and their sum "medusa step", each over the number
    of verification steps, and "prefill" per prompt: the costs c_plain and c_step of
    eq. 15. CPU time, not wall-clock time: other programs on a loaded machine do not
    inflate it (on a GPU it misses the kernels).
    """
    check_positive_int(repeats, "repeats")
    medusa_generate(base, heads, prompts[0], max_new_tokens, choices)  # warm-up
    base.generate(prompts[0], max_new_tokens)
    totals = dict.fromkeys(("prefill", *PHASES), 0.0)
    steps = 0
    plain = 0.0
    for _ in range(repeats):
        for prompt in prompts:
            out = medusa_generate(base, heads, prompt, max_new_tokens, choices, profile=True)
            steps += len(out.accepted)
            for phase, seconds in out.cpu_seconds.items():
                totals[phase] += seconds
            start = time.process_time()
            base.generate(prompt, max_new_tokens)
            plain += time.process_time() - start
    result = {"plain step": plain / (repeats * len(prompts) * max_new_tokens)}
    result.update({phase: totals[phase] / max(1, steps) for phase in PHASES})
    result["medusa step"] = sum(result[phase] for phase in PHASES)
    result["prefill"] = totals["prefill"] / (repeats * len(prompts))
    return result


def acceptance(base: TinyLM, heads: MedusaHeads, prompts: Sequence[torch.Tensor],
               max_new_tokens: int, choices, temperature: float = 0.0,
               reference: Sequence[torch.Tensor] | None = None) -> dict:
    """Medusa on every prompt: new tokens per forward pass and per step (all prompts
    pooled), the accepted counts of every step, and whether every output equals plain
    greedy decoding (``lossless``; checked at every temperature). ``reference``: the plain
    greedy outputs, if already computed."""
    outs = [medusa_generate(base, heads, p, max_new_tokens, choices, temperature=temperature)
            for p in prompts]
    plain = reference or [base.generate(p, max_new_tokens) for p in prompts]
    accepted = [a for o in outs for a in o.accepted]
    return {
        "tokens_per_forward": sum(o.new_tokens for o in outs) / sum(o.forward_passes
                                                                    for o in outs),
        "tokens_per_step": 1 + sum(accepted) / max(1, len(accepted)),
        "accepted": accepted,
        "lossless": all(torch.equal(o.tokens, q) for o, q in zip(outs, plain, strict=True)),
    }


def trained_models(device: torch.device, sizes: dict, seed: int = 0, progress: bool = True):
    """A TinyLM trained on Python's docs and 4 Medusa heads on it: (base, heads, vocab, val)."""
    from ..corpus import Vocabulary, load_text, train_val_split
    from ..transformer import TinyLMConfig

    text = load_text("python-docs")
    vocab = Vocabulary.chars(text)
    train_tokens, val_tokens = train_val_split(vocab.encode(text), val_fraction=0.1)
    torch.manual_seed(seed)
    config = TinyLMConfig(len(vocab), sizes["d_model"], sizes["n_heads"], sizes["n_layers"],
                          sizes["max_len"])
    base = TinyLM(config).to(device)
    train_lm(base, train_tokens, sizes["steps"], batch_size=sizes["batch_size"],
             lr=sizes["lr"], seed=seed, progress=progress, desc="base")
    heads = MedusaHeads.from_base(base, num_heads=4)
    train_medusa_heads(base, heads, train_tokens, sizes["head_steps"],
                       batch_size=sizes["head_batch"], lr=sizes["lr"], seed=seed,
                       progress=progress)
    return base.eval(), heads, vocab, val_tokens


def bench_medusa(args) -> None:
    """Medusa vs plain greedy decoding of a TinyLM trained here: head accuracies, tokens per
    forward pass by tree size (greedy and typical acceptance), and decode time (CPU: one
    thread; CUDA: Triton attention)."""
    device = torch.device("cuda" if CUDA else "cpu")
    if not CUDA:
        torch.set_num_threads(1)
    sizes = SIZES["cuda" if CUDA else "cpu"]
    print(f"device {device}; TinyLM {sizes}")
    base, heads, _, val_tokens = trained_models(device, sizes)
    acc = head_accuracy(base, heads, val_tokens, topk=5)
    print("top-1 / top-5 accuracy on the validation text:  base " + "  ".join(
        [f"{acc[0, 0]:.3f}/{acc[0, 4]:.3f}"] +
        [f"head {k}: {acc[k, 0]:.3f}/{acc[k, 4]:.3f}" for k in range(1, acc.shape[0])]))
    n_prompt = 16
    n_new = sizes["max_len"] - n_prompt
    starts = range(1000, len(val_tokens) - sizes["max_len"], len(val_tokens) // 12)
    prompts = [val_tokens[s : s + n_prompt][None].to(device) for s in starts]
    print(f"\n{len(prompts)} prompts of {n_prompt} characters, {n_new} new tokens each")
    print(f"{'tree nodes':>10}{'greedy tok/pass':>17}{'lossless':>10}{'typical T=0.7':>15}")
    reference = [base.generate(p, n_new) for p in prompts]
    for size in (0, 4, 8, 16, 32, 64):
        choices = grow_tree(acc[1:], size)
        greedy = acceptance(base, heads, prompts, n_new, choices, reference=reference)
        typical = acceptance(base, heads, prompts, n_new, choices, 0.7, reference)
        print(f"{size + 1:>10}{greedy['tokens_per_forward']:>17.2f}"
              f"{str(greedy['lossless']):>10}{typical['tokens_per_forward']:>15.2f}")
    print("\ndecode time of all prompts, greedy, median of 7 interleaved runs (range):")
    for size in (16, 64):
        times = decode_times(base, heads, prompts, n_new, grow_tree(acc[1:], size))
        for clock in ("wall", "cpu"):
            ratio = statistics.median(times["plain"][clock]) / statistics.median(
                times["medusa"][clock])
            print(f"  tree of {size + 1:>2} nodes, {clock:>4}: plain "
                  f"{summary(times['plain'][clock])}, Medusa "
                  f"{summary(times['medusa'][clock])}: {ratio:.2f}x")
    if not CUDA:  # process CPU time sees no GPU kernel
        costs = step_profile(base, heads, prompts, n_new, grow_tree(acc[1:], 16))
        print("\nCPU time per step, tree of 17 nodes: plain "
              f"{costs['plain step'] * 1e3:.3f} ms; Medusa " + ", ".join(
                  f"{phase} {costs[phase] * 1e3:.3f}" for phase in (*PHASES, "medusa step"))
              + " ms")


COMMANDS = {"medusa": bench_medusa}
