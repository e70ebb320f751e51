"""book/build.py, the driver of `make book` and `make refresh`, on a tiny book of two
chapters in a temporary folder: one runs, one fails on purpose (its committed outputs come
from an earlier version of its code). Checked: the per-chapter lines, the summary of the
failure, the exit code, the note on the failed page (in the copy and in the HTML), the
CHAPTERS selection, the build report, and that the committed notebooks are untouched.
"""

import csv
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "book" / "build.py"
sys.path.insert(0, str(DRIVER.parent))
import build_report  # noqa: E402  (book/build_report.py)

spec = importlib.util.spec_from_file_location("book_build", DRIVER)  # not "build": PyPA's
build = importlib.util.module_from_spec(spec)
sys.modules["book_build"] = build  # dataclasses look their module up there
spec.loader.exec_module(build)

CONFIG = """title: Tiny
author: Test
only_build_toc_files: true
exclude_patterns: [_build]
execute:
  execute_notebooks: "off"
sphinx:
  config:
    html_show_copyright: false
"""
TOC = """format: jb-book
root: book/intro
chapters:
  - file: book/how-to-run
  - file: chapters/01_good
  - file: chapters/02_bad
  - file: book/build-report
"""
STARTED = "2026-01-02T03:04:05.000000Z"  # the committed outputs' (made-up) timestamps
ENDED = "2026-01-02T03:04:17.500000Z"


def chapter(title: str, *sources: str, stored: str | None = None) -> nbformat.NotebookNode:
    """A notebook: a title cell, then code cells; ``stored`` fakes committed outputs."""
    nb = new_notebook(cells=[new_markdown_cell(f"# {title}\n\nWhat this chapter is about.")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for i, source in enumerate(sources):
        cell = new_code_cell(source)
        if stored is not None:
            cell.execution_count = i + 1
            cell.outputs = [new_output("stream", name="stdout", text=stored)]
            cell.metadata["execution"] = {"iopub.execute_input": STARTED if i == 0 else ENDED,
                                          "shell.execute_reply": ENDED}
        nb.cells.append(cell)
    return nb


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    (root / "_config.yml").write_text(CONFIG)
    (root / "_toc.yml").write_text(TOC)
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Tiny book\n\nSee {doc}`build-report`.\n")
    (root / "book" / "how-to-run.md").write_text("# How to run\n\n`make book`.\n")
    shutil.copy(ROOT / "book" / "build-report.md", root / "book")
    (root / "chapters").mkdir()
    nbformat.write(chapter("1. Good", "x = 6 * 7\nprint(x)",
                           "raise KeyError('on purpose, tagged')"),
                   root / "chapters" / "01_good.ipynb")
    nb = root / "chapters" / "01_good.ipynb"
    good = nbformat.read(nb, as_version=4)
    good.cells[2].metadata["tags"] = ["raises-exception"]
    nbformat.write(good, nb)
    nbformat.write(chapter("2. Bad", "print('stored output 42')",
                           "raise ValueError('planted failure')",
                           stored="stored output 42\n"),
                   root / "chapters" / "02_bad.ipynb")
    nbformat.write(chapter("3. Draft", "pass"), root / "chapters" / "03_draft.ipynb")
    return root


def driver(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BOOK_SCALE": "quick"}
    return subprocess.run([sys.executable, str(DRIVER), *args, "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=300)


def read_report(path: Path) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(build_report.HEADER)
    return {re.match(r"\{doc\}`(.*) <", row["Chapter"])[1]: row for row in rows}


@pytest.fixture(scope="module")
def book_run(tiny):
    committed = {p.name: p.read_bytes() for p in (tiny / "chapters").iterdir()}
    out = driver(tiny, "book", "--jobs", "2")
    return out, committed


def test_book_lines_summary_and_exit_code(tiny, book_run):
    out, _ = book_run
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "Executing 2 of 2 chapters (copies in _build/src), 2 at a time" in lines[0]
    assert re.search(r"^  ok +01_good +\d+\.\d s +quick +CPU: \S", out.stdout, re.M), out.stdout
    assert re.search(r"^  FAILED +02_bad +\d+\.\d s +quick +CPU: \S", out.stdout, re.M)
    # the failure in two lines: chapter, cell and error; then where the traceback is
    at = lines.index("  02_bad: cell 3 (In [2]) raised ValueError: planted failure")
    assert lines[at + 1].startswith("    traceback in _build/logs/02_bad.log;")
    assert "Executed 1 of 2 chapters" in out.stdout and "1 failed" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr  # tracebacks go to the log only
    assert "planted failure" in (tiny / "_build" / "logs" / "02_bad.log").read_text()
    # the last lines: where the book is and how to open it
    assert lines[-3].startswith("The book is at _build/html/index.html: open file://")
    assert "python -m http.server -d _build/html" in lines[-1]
    assert "rendered in" in out.stdout and "no warnings" in out.stdout


def test_book_copies_and_committed_notebooks(tiny, book_run):
    _, committed = book_run
    after = {p.name: p.read_bytes() for p in (tiny / "chapters").iterdir()}
    assert after == committed  # make book never writes the committed notebooks
    src = tiny / "_build" / "src" / "chapters"
    good = nbformat.read(src / "01_good.ipynb", as_version=4)
    assert good.cells[1].outputs[0].text == "42\n"
    assert good.metadata[build_report.STAMP]["scale"] == "quick"
    bad = nbformat.read(src / "02_bad.ipynb", as_version=4)
    title = bad.cells[0].source
    assert title.startswith("# 2. Bad\n")  # the note goes under the title
    assert "Not re-executed in this build" in title and "planted failure" in title
    assert "cell 3" in title and "_build/logs/02_bad.log" in title
    assert bad.cells[1].outputs[0].text == "stored output 42\n"  # the committed outputs


def test_book_pages_show_the_note_and_the_report(tiny, book_run):
    html = tiny / "_build" / "html"
    bad = (html / "chapters" / "02_bad.html").read_text()
    assert "Not re-executed in this build" in bad and "planted failure" in bad
    assert "Not re-executed" not in (html / "chapters" / "01_good.html").read_text()
    page = (html / "book" / "build-report.html").read_text()
    assert "this build" in page and "committed (re-execution failed)" in page
    report = read_report(tiny / "_build" / "src" / build_report.REPORT)
    good, bad = report["1. Good"], report["2. Bad"]
    assert good["Outputs"] == "this build" and good["Scale"] == "quick"
    assert good["Device"].startswith("CPU: ") and good["Device"] in page
    torch, triton = good["torch, Triton"].split(", ")
    assert torch == importlib.metadata.version("torch")
    assert triton.startswith(importlib.metadata.version("triton"))
    # the failed chapter's row describes the outputs on its page: the committed ones
    assert bad["Outputs"] == "committed (re-execution failed)"
    assert bad["Executed (UTC), time"] == "2026-01-02 03:04, 12 s"


def test_refresh_executes_only_the_chosen_chapters_in_place(tiny, book_run):
    bad_before = (tiny / "chapters" / "02_bad.ipynb").read_bytes()
    out = driver(tiny, "refresh", "--chapters", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Executing 1 of 1 chapters in place" in out.stdout
    assert "01_good" in out.stdout and "02_bad" not in out.stdout
    good = nbformat.read(tiny / "chapters" / "01_good.ipynb", as_version=4)
    assert good.cells[1].outputs[0].text == "42\n" and build_report.STAMP in good.metadata
    assert (tiny / "chapters" / "02_bad.ipynb").read_bytes() == bad_before
    report = read_report(tiny / build_report.REPORT)
    assert report["1. Good"]["Device"].startswith("CPU: ")  # the stamp names the CPU model
    assert report["2. Bad"]["Executed (UTC), time"] == "2026-01-02 03:04, 12 s"
    assert {row["Outputs"] for row in report.values()} == {"committed"}
    check = driver(tiny, "report", "--check")
    assert check.returncode == 0 and "up to date" in check.stdout


@pytest.mark.parametrize("args, message", [
    (("book", "--chapters", "99"), "'99' is not a chapter in _toc.yml"),
    (("book", "--chapters", "03_draft"), "'03_draft' is not a chapter in _toc.yml"),
    (("refresh", "--chapters", "nope"), "'nope' is not a chapter in chapters/"),
    (("book", "--jobs", "0"), "--jobs must be at least 1"),
    (("bake",), "invalid choice: 'bake'"),
])
def test_bad_arguments(tiny, args, message):
    out = driver(tiny, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_select():
    paths = [Path(f"chapters/{n}.ipynb") for n in ("01_a", "07_b", "08_c", "10_d")]
    assert build.select(paths, "", "toc") == paths
    assert build.select(paths, "07 8", "toc") == paths[1:3]
    assert build.select(paths, "10_d, chapters/01_a.ipynb", "toc") == [paths[3], paths[0]]
    assert build.select(paths, "7 07", "toc") == [paths[1]]


def test_facts_come_from_the_stamp_only_when_it_belongs_to_the_outputs():
    nb = chapter("T", "print(1)", stored="python : 3\ndevice : CPU (x86_64)\n"
                 "BOOK_SCALE : full\ntorch : 2.0\ntriton : 3.0 (interpreter on CPU)\n")
    derived = build_report.notebook_facts(nb)
    assert derived == {"executed": "2026-01-02 03:04", "seconds": "12", "device": "CPU (x86_64)",
                       "scale": "full", "torch": "2.0", "triton": "3.0 (interpreter)"}
    stamp = {"device": "GPU: H100", "scale": "full", "torch": "2.1", "triton": "3.1"}
    nb.metadata[build_report.STAMP] = {"started": STARTED, **stamp}
    assert build_report.notebook_facts(nb) == {**derived, **stamp}
    nb.metadata[build_report.STAMP]["started"] = "2025-01-01T00:00:00Z"  # re-executed since
    assert build_report.notebook_facts(nb) == derived
    assert build_report.notebook_facts(chapter("T", "pass"))["executed"] == "unknown"


def test_estimate_schedules_what_is_left_on_the_jobs():
    runs = [build.Run(Path(f"{i}.ipynb"), Path("log"), expected=e)
            for i, e in enumerate((40.0, 30.0, 20.0, 10.0))]  # longest first, as run_all
    # nothing done, two jobs: 40 then 10 on one, 30 then 20 on the other -> 50 s
    assert build._estimate(runs, [], [], jobs=2) == (pytest.approx(50.0), False)
    # a 10 s chapter done in 20 s: the rest is taken to run twice as long (80 | 60 + 40)
    done = build.Run(Path("x.ipynb"), Path("log"), expected=10.0, result={"wall_seconds": 20})
    assert build._estimate(runs[:3], [], [done], jobs=2) == (pytest.approx(100.0), False)
    assert build._estimate([], [], [done], jobs=2) == (0.0, False)
    # a chapter running 100 s past its 40 s estimate: 1 s is only a floor
    late = [(runs[0], build.time.monotonic() - 100.0)]
    assert build._estimate([], late, [], jobs=2) == (pytest.approx(1.0), True)


def test_book_with_chapters_executes_only_those(tiny, book_run):
    out = driver(tiny, "book", "--chapters", "01")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Executing 1 of 2 chapters" in out.stdout and "02_bad" not in out.stdout
    src = tiny / "_build" / "src"
    # the other chapter is rendered from its committed outputs, without a note
    assert (src / "chapters" / "02_bad.ipynb").read_bytes() == \
        (tiny / "chapters" / "02_bad.ipynb").read_bytes()
    report = read_report(src / build_report.REPORT)
    assert report["1. Good"]["Outputs"] == "this build"
    assert report["2. Bad"]["Outputs"] == "committed"
    assert "Not re-executed" not in (tiny / "_build/html/chapters/02_bad.html").read_text()


def test_the_committed_report_describes_the_committed_notebooks():
    """book/build-report.csv is written from the notebooks' own timestamps and facts;
    a chapter re-executed without `make refresh` (or `python book/build.py report`)
    leaves it stale, and the rendered report would describe other outputs."""
    done = driver(ROOT, "report", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cell_that_never_answers_is_retried_once_in_a_fresh_kernel(tiny, tmp_path):
    """A stalled cell (a lost kernel message: jupyter/nbclient#312) times out and the
    chapter runs again; the terminal line and the log say so."""
    root = tmp_path / "root"
    shutil.copytree(tiny, root, ignore=shutil.ignore_patterns("_build"))
    stall = ("import pathlib, time\nmarker = pathlib.Path('stalled-once')\n"
             "if not marker.exists():\n    marker.touch()\n    time.sleep(120)\n"
             "print('answered')")
    nbformat.write(chapter("1. Good", "x = 1", stall), root / "chapters" / "01_good.ipynb")
    out = driver(root, "refresh", "--chapters", "01", "--timeout", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok      01_good" in out.stdout
    assert "(retried: cell 3 got no reply)" in out.stdout
    log = (root / "_build" / "logs" / "01_good.log").read_text()
    assert "cell 3: CellTimeoutError: no reply within 5 s; executing the chapter again" in log
    executed = nbformat.read(root / "chapters" / "01_good.ipynb", as_version=4)
    assert executed.cells[2].outputs[0]["text"] == "answered\n"


def test_sliced_polls_until_a_message_or_the_deadline():
    """The kernel channels are read in 1-s slices (a missed zmq wake-up costs a slice,
    not the cell's timeout): a message after several empty slices is returned; with a
    timeout, Empty comes at the deadline, not before."""
    import asyncio
    import time
    from queue import Empty

    asked = []

    async def get_msg(timeout=None):
        asked.append(timeout)
        if len(asked) < 4:
            raise Empty
        return {"msg": "reply"}

    assert asyncio.run(build._sliced(get_msg, step=0.01)()) == {"msg": "reply"}
    assert asked[:3] == [0.01] * 3  # no timeout: slices, never an endless wait

    async def never(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    started = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(build._sliced(never, step=0.02)(timeout=0.1))
    assert 0.09 <= time.monotonic() - started < 0.5
