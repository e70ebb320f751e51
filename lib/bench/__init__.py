"""Benchmarks a GPU user can run: ``python -m lib.bench <command>`` (``--help`` lists them).

One module per topic in this package, each defining ``COMMANDS = {name: function}``;
a function's docstring is its help line. A new topic adds its module name to
:data:`TOPICS`.

Timings are never asserted in tests: speed is measured here and quoted, on the GPU it
was measured on. Without CUDA a timing command runs a tiny correctness check through
Triton's interpreter (:func:`needs_cuda`), says that it needs CUDA, and exits 0.
"""

from __future__ import annotations

import argparse
import importlib

from ..backend import CUDA, HAS_TRITON

TOPICS = ("aot", "softmax", "floating_point", "checkpointing", "attention", "ngram", "ssm",
          "word2vec", "calibration", "medusa")


def gpu_time_ms(fn) -> float:
    """Median time of ``fn()`` in milliseconds on the current CUDA device."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def needs_cuda(name: str, check) -> bool:
    """Without CUDA: run ``check()`` (a tiny interpreter run), explain, and return False."""
    if CUDA and HAS_TRITON:
        return True
    if HAS_TRITON:
        check()
        print(f"{name}: correctness check through Triton's interpreter passed.")
    print(f"{name}: timing needs a CUDA GPU with Triton; none here, so no timings.")
    return False


def commands() -> dict:
    """Every command of every topic module: name -> function."""
    found = {}
    for topic in TOPICS:
        found.update(importlib.import_module(f"{__name__}.{topic}").COMMANDS)
    return found


def main(argv=None) -> int:
    table = commands()
    parser = argparse.ArgumentParser(prog="python -m lib.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in sorted(table):
        doc = " ".join((table[name].__doc__ or "").split())
        sub.add_parser(name, help=doc)
    args = parser.parse_args(argv)
    table[args.command](args)
    return 0
