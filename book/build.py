"""Execute the book's chapters and render it: the driver behind `make book` and `make refresh`.

    python book/build.py book    [--chapters "07 08"] [--jobs 2]   # copies, then the HTML
    python book/build.py refresh [--chapters "07 08"] [--jobs 2]   # the committed notebooks
    python book/build.py report  [--check]                          # the report only

``book`` copies the book's sources to ``_build/src``, executes the chosen chapters there
(``JOBS`` at a time, one CPU thread each, each in its own kernel), renders
``_build/html`` from the copies and exits non-zero if a chapter or the rendering
failed. A chapter that fails keeps its committed outputs and gets a note at the top of
its page saying why. ``refresh`` executes the committed notebooks in place at quick
scale and writes back only those that ran through. Both write the build report
(``book/build-report.csv``, shown by ``book/build-report.md``): for each chapter of the
table of contents, when its outputs were computed, on which device, at which scale, with
which torch and Triton, in how many seconds; it is read from the notebooks themselves
(``book/build_report.py``), so it agrees with the outputs it describes. The terminal
gets a progress bar and one line per chapter; kernels' warnings and tracebacks go to
``_build/logs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

from build_report import (
    REPORT,
    STAMP,
    add_failure_note,
    notebook_facts,
    report_csv,
    report_rows,
    timings,
)

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("_config.yml", "_toc.yml", "book", "chapters")  # the book's sources
PROBE_MARK = "BOOK_BUILD_PROBE "
STALL = "CellTimeoutError: no reply within"  # how a cell's timeout reads in a result
# Seconds a cell may run: quick cells take under a minute on a laptop CPU, so 300 s means
# a stall, not work; full-scale cells on a GPU may train for many minutes.
CELL_TIMEOUT = {"quick": 300, "full": 3600}
# Run in the chapter's kernel after its last cell: what it ran on, without importing
# anything the chapter did not (versions come from the installed packages' metadata).
PROBE = """
def _book_build_probe():
    import importlib.metadata as md, json, os, platform, sys
    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"
    torch, lib = sys.modules.get("torch"), sys.modules.get("lib")
    if torch is not None and torch.cuda.is_available():
        device = "GPU: " + torch.cuda.get_device_name(0)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                names = [l.split(":", 1)[1] for l in f if l.startswith("model name")]
            cpu = names[0].strip() if names else cpu
        except OSError:
            pass
        device = "CPU: " + cpu
    scale = lib.scale() if lib is not None else os.environ.get("BOOK_SCALE", "") or "-"
    triton = version("triton")
    if lib is not None and getattr(lib.backend, "INTERPRET", False):
        triton += " (interpreter)"
    facts = dict(device=device, scale=scale, torch=version("torch"), triton=triton)
    print("BOOK_BUILD_PROBE " + json.dumps(facts))
_book_build_probe()
del _book_build_probe
"""


# ---------------------------------------------------------------- chapters and selection

def toc_chapters(root: Path) -> list[Path]:
    """The chapter notebooks listed in ``root/_toc.yml``, in reading order."""
    import yaml

    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str) and node["file"].startswith("chapters/"):
                found.append(root / (node["file"].removesuffix(".ipynb") + ".ipynb"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((root / "_toc.yml").read_text()))
    return [path for path in found if path.is_file()]


def select(candidates: list[Path], spec: str, where: str) -> list[Path]:
    """The chapters of ``candidates`` that ``spec`` names ("07 8 09_medusa"; empty: all).

    A token matches a notebook's stem, its number prefix (``07`` or ``7``) or its path.
    Raises ``ValueError`` naming a token that matches nothing in ``where``.
    """
    chosen = []
    for token in re.split(r"[\s,]+", spec.strip()):
        if not token:
            continue
        stem = Path(token).name.removesuffix(".ipynb")
        matches = [p for p in candidates if p.stem == stem or p.stem.split("_")[0] == stem
                   or (stem.isdigit() and p.stem.split("_")[0].isdigit()
                       and int(p.stem.split("_")[0]) == int(stem))]
        if not matches:
            names = " ".join(p.stem for p in candidates)
            raise ValueError(f"CHAPTERS: {token!r} is not a chapter in {where} ({names})")
        chosen += [p for p in matches if p not in chosen]
    return chosen or list(candidates)


# ---------------------------------------------------------------- executing one notebook

def _sliced(get_msg, step: float = 1.0):
    """``get_msg`` of a kernel channel, waiting in slices of ``step`` seconds.

    zmq's asyncio poller can miss the wake-up of a message that has arrived (py-spy: kernel
    and client both idle, the reply waiting in the socket); the poll then returns only at
    its timeout, when it looks at the socket once more: at the cell's timeout for a
    reply, never for output (no timeout). Polling in slices looks every ``step`` seconds.
    """
    async def get(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if deadline is None else min(step, deadline - time.monotonic())
            try:
                return await get_msg(timeout=max(left, 0.0))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get


async def _execute(nb, path: Path, timeout: int) -> dict:
    """Run every cell of ``nb`` in a fresh kernel; stop at the first error. The result."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from nbformat.v4 import new_code_cell

    client = NotebookClient(nb, timeout=timeout, resources={"metadata": {"path": str(path)}})
    result = {"status": "ok"}
    async with client.async_setup_kernel():
        for channel in (client.kc.shell_channel, client.kc.iopub_channel):
            channel.get_msg = _sliced(channel.get_msg)
        reply = await client.async_wait_for_reply(client.kc.kernel_info())
        if reply is not None and "language_info" in reply["content"]:
            nb.metadata["language_info"] = reply["content"]["language_info"]
        code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                print(f"{time.strftime('%H:%M:%S')} cell {index + 1} "
                      f"({code.index(index) + 1} of {len(code)} code cells)", flush=True)
            try:
                await client.async_execute_cell(
                    cell, index, execution_count=client.code_cells_executed + 1)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
                print(error, flush=True)  # the traceback, for the log
                kind = getattr(error, "ename", type(error).__name__)
                message = getattr(error, "evalue", None) or str(error).strip()
                if isinstance(error, CellTimeoutError):
                    message = f"{STALL.split(': ', 1)[1]} {timeout} s"
                result = {"status": "failed", "cell": index + 1,
                          "execution_count": client.code_cells_executed,
                          "error": f"{kind}: {message.strip().splitlines()[0][:160]}"
                          if message.strip() else kind}
                break
        client.set_widgets_metadata()
        nb.cells.append(new_code_cell(PROBE))  # nbclient stores the cell at its index
        try:  # after a failure too, unless the kernel died: the terminal line names both
            probe = await client.async_execute_cell(nb.cells[-1], len(nb.cells) - 1,
                                                    store_history=False)
            text = "".join(o.get("text", "") for o in probe.outputs)
            result.update(json.loads(text.split(PROBE_MARK, 1)[1].splitlines()[0]))
        except Exception as error:
            print(f"probe: {type(error).__name__}: {error}", flush=True)
            if result["status"] == "ok":
                raise
        finally:
            nb.cells.pop()
    return result


def execute_one(source: Path, dest: Path, result_path: Path, timeout: int) -> int:
    """The worker: execute ``source``; on success write it (stamped) to ``dest``.

    Writes the result (status, failing cell and error, or the probe's facts) as JSON to
    ``result_path``. Runs in a process of its own whose output is the chapter's log.
    """
    import nbformat

    nb = nbformat.read(source, as_version=4)
    started = time.perf_counter()
    try:
        result = asyncio.run(_execute(nb, source.resolve().parent, timeout))
    except Exception as error:  # the kernel did not start, or died between cells
        print(f"{type(error).__name__}: {error}", flush=True)
        result = {"status": "failed", "cell": None,
                  "error": f"{type(error).__name__}: {str(error).strip()[:160]}"}
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    if result["status"] == "ok":
        started_at = timings(nb)[0]
        nb.metadata[STAMP] = {"started": started_at,
                              **{k: result[k] for k in ("device", "scale", "torch", "triton")}}
        nbformat.write(nb, dest)
    result_path.write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


# ---------------------------------------------------------------- running with progress

@dataclass
class Run:
    """One chapter's execution: its result (from the worker) and what the terminal says."""
    path: Path
    log: Path
    expected: float  # seconds, from the committed outputs' timings (for the estimate)
    result: dict = field(default_factory=dict)

    def line(self) -> str:
        r = self.result
        status = "ok" if r.get("status") == "ok" else "FAILED"
        seconds = f"{r.get('wall_seconds', 0):6.1f} s"
        retried = f"  (retried: {r['retried']})" if r.get("retried") else ""
        return (f"  {status:<6}  {self.path.stem:<28} {seconds}  "
                f"{r.get('scale', '?'):<5}  {r.get('device', '?')}{retried}")


def _estimate(pending, running, done, jobs: int) -> tuple[float, bool]:
    """Seconds until every chapter is done: the committed timings, scaled by how much
    faster or slower the finished chapters ran here, scheduled greedily on ``jobs``; and
    whether a running chapter has outrun its estimate (then the seconds are a floor)."""
    prior = sum(r.expected for r in done)
    factor = sum(r.result.get("wall_seconds", 0) for r in done) / prior if prior else 1.0
    now = time.monotonic()
    left = [r.expected * factor - (now - started) for r, started in running]
    slots = [max(t, 1.0) for t in left] + [0.0] * max(jobs - len(left), 0)
    heapq.heapify(slots)
    for r in pending:
        heapq.heappush(slots, heapq.heappop(slots) + r.expected * factor)
    return (max(slots) if slots else 0.0), any(t < 1.0 for t in left)


def run_all(root: Path, runs: list[Run], dest: dict, jobs: int, timeout: int,
            env: dict) -> None:
    """Execute every run's notebook, ``jobs`` at a time, longest first; print as they end."""
    from tqdm import tqdm

    def attempt(run: Run, mode: str) -> dict:
        result_path = run.log.with_suffix(".json")
        result_path.unlink(missing_ok=True)
        with run.log.open(mode) as log:
            code = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "_execute", str(run.path),
                 str(dest[run.path.stem]), str(result_path), str(timeout)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=root).returncode
        return (json.loads(result_path.read_text()) if result_path.is_file() else
                {"status": "failed", "cell": None,
                 "error": f"the worker exited with code {code}"})

    def work(run: Run) -> Run:
        run.result = attempt(run, "w")
        if run.result.get("error", "").startswith(STALL):
            # A cell with no answer within the timeout is most likely a message the
            # kernel client lost (seen at ipywidgets cells: jupyter/nbclient#312), not
            # slow code: once more in a fresh kernel, and the terminal line says so.
            first = run.result
            with run.log.open("a") as log:
                print(f"\n--- cell {first.get('cell')}: {first['error']}; executing the "
                      "chapter again in a fresh kernel ---\n", file=log, flush=True)
            run.result = attempt(run, "a")
            run.result["retried"] = f"cell {first.get('cell')} got no reply"
        return run

    pending = sorted(runs, key=lambda r: -r.expected)
    running, done = {}, []
    bar = tqdm(total=len(runs), unit="chapter", file=sys.stderr, dynamic_ncols=True,
               disable=not sys.stderr.isatty(),
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} chapters, {elapsed} "
                          "elapsed{postfix}")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                running[pool.submit(work, run)] = (run, time.monotonic())
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                run, _ = running.pop(future)
                done.append(future.result())
                bar.write(run.line(), file=sys.stdout)
                bar.update(1)
            left, over = _estimate(pending, running.values(), done, jobs)
            text = f"{'at least' if over else 'about'} {_duration(left)} left"
            bar.set_postfix_str(text if running else "", refresh=True)
    bar.close()


def _scale(env: dict) -> str:
    """The scale the chapters will run at under ``env``: lib.backend.scale's rule
    (BOOK_SCALE, else full on CUDA and quick without)."""
    from lib.backend import CUDA

    value = env.get("BOOK_SCALE", "").strip().lower()
    return value if value in CELL_TIMEOUT else "full" if CUDA else "quick"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


# ---------------------------------------------------------------- the commands

def render(root: Path, src: Path, logs: Path) -> bool:
    """``jupyter-book build -W -n`` of ``src`` into ``root/_build/html``; True if clean."""
    log = logs / "jupyter-book.log"
    print(f"Rendering the book (jupyter-book build -W -n; log: {log.relative_to(root)}) ...",
          flush=True)
    started = time.monotonic()
    jb = Path(sys.executable).with_name("jupyter-book")
    with log.open("w") as out:
        code = subprocess.run([str(jb), "build", str(src), "--path-output", str(root), "-W",
                               "-n", "--keep-going"], cwd=root, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # no colours
    problems = [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line]
    took = _duration(time.monotonic() - started)
    if code == 0 and not problems:
        print(f"  rendered in {took}, no warnings")
        return True
    print(f"  FAILED after {took} (exit code {code}); warnings and errors: {len(problems)}"
          + (", the first ones:" if problems else ""))
    for line in problems[:5]:
        print("   ", line.replace(str(src) + os.sep, "").replace(str(root) + os.sep, "")[:200])
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("book", "refresh", "report", "_execute"))
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--chapters", default="", help='e.g. "07 08" (default: all)')
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's root folder")
    parser.add_argument("--check", action="store_true",
                        help="report: only say whether the committed report is up to date")
    opts = parser.parse_args(argv)
    if opts.command == "_execute":
        source, dest, result, timeout = opts.args
        return execute_one(Path(source), Path(dest), Path(result), int(timeout))
    if opts.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {opts.jobs}")
    root = opts.root.resolve()
    toc = toc_chapters(root)
    if opts.command == "report":
        text = report_csv(report_rows(toc, {}))
        if opts.check:
            same = (root / REPORT).is_file() and (root / REPORT).read_text() == text
            print(f"{REPORT} is " + ("up to date" if same else "out of date: write it with "
                                     "`python book/build.py report` (or make refresh)"))
            return 0 if same else 1
        (root / REPORT).write_text(text)
        print(f"Wrote {REPORT} ({len(toc)} chapters)")
        return 0

    book = opts.command == "book"
    try:
        if book:
            chosen = select(toc, opts.chapters, "_toc.yml")
        else:
            chosen = select(sorted((root / "chapters").glob("*.ipynb")), opts.chapters,
                            "chapters/")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    build, logs = root / "_build", root / "_build" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    src = build / "src" if book else root
    if book:
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for name in COPIED:  # with new mtimes, or Sphinx keeps the pages of the last build
            if (root / name).is_dir():
                shutil.copytree(root / name, src / name, copy_function=shutil.copy)
            else:
                shutil.copy(root / name, src / name)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # JOBS kernels share the cores
    if not book:
        env["BOOK_SCALE"] = "quick"  # the committed outputs are quick-scale ones
    runs = []
    for path in chosen:
        expected = notebook_facts(json.loads(path.read_text()))["seconds"]
        runs.append(Run(src / "chapters" / path.name, logs / f"{path.stem}.log",
                        float(expected) if expected != "unknown" else 60.0))
    dest = {r.path.stem: r.path for r in runs}
    scale = (f"BOOK_SCALE={env['BOOK_SCALE']}" if env.get("BOOK_SCALE")
             else "quick scale on CPU, full on CUDA")
    print(f"Executing {len(runs)} of {len(toc) if book else len(chosen)} chapters "
          f"{'(copies in _build/src)' if book else 'in place'}, {opts.jobs} at a time, "
          f"{scale}; logs in {logs.relative_to(root)}/", flush=True)
    started = time.monotonic()
    try:
        run_all(root, runs, dest, opts.jobs, opts.timeout or CELL_TIMEOUT[_scale(env)], env)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    failed = [r for r in runs if r.result.get("status") != "ok"]
    print(f"Executed {len(runs) - len(failed)} of {len(runs)} chapters in "
          f"{_duration(time.monotonic() - started)}"
          + (f"; {len(failed)} failed:" if failed else "."))
    for r in failed:
        cell = (f"cell {r.result['cell']} (In [{r.result['execution_count']}]) raised "
                if r.result.get("cell") else "")
        print(f"  {r.path.stem}: {cell}{r.result['error']}")
        print(f"    traceback in {r.log.relative_to(root)}; "
              + ("the page shows the committed outputs, with a note" if book
                 else "the committed notebook is unchanged"))
        if book:
            add_failure_note(r.path, r.result, str(r.log.relative_to(root)))
    outputs = {}
    if book:
        outputs = {r.path.stem: "this build" if r.result.get("status") == "ok" else
                   "committed (re-execution failed)" for r in runs}
    (src / REPORT).write_text(report_csv(report_rows(toc_chapters(src), outputs)))
    if not book:
        print(f"Wrote {REPORT}.")
        return 1 if failed else 0
    rendered = render(root, src, logs)
    index = build / "html" / "index.html"
    print(f"\nThe book is at {index.relative_to(root)}: open file://{index}\n"
          "or, for a browser that blocks local files, serve it with\n"
          "  python -m http.server -d _build/html   and open http://localhost:8000")
    return 0 if rendered and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
