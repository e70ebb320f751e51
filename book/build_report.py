"""The build report of the book, and the note on a chapter that could not be re-executed.

For each chapter of the table of contents the report says when its stored outputs were
computed, how long that took, on which device (the GPU's name or the CPU's model), at
which ``BOOK_SCALE``, with which torch and Triton, and whether they are the committed
outputs or this build's. All of it is read from the notebook: the cell timestamps that
nbclient stores, and the stamp ``book/build.py`` writes into its metadata when it executes
it (or, for a notebook executed some other way, the lines of ``lib.environment_report()``
that every chapter prints). So the report describes the outputs on the pages, whoever
executed them. ``book/build-report.md`` renders the CSV.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

REPORT = Path("book") / "build-report.csv"
STAMP = "book_build"  # notebook metadata key: where, at which scale, with what it ran
# The columns: six, so that the table fits the page (hence the pairs).
HEADER = ("Chapter", "Outputs", "Executed (UTC), time", "Scale", "Device", "torch, Triton")


def timings(nb) -> tuple[str | None, str | None]:
    """The first code cell's start and the last code cell's end, as nbclient stored them."""
    marks = [cell.get("metadata", {}).get("execution", {}) for cell in nb["cells"]
             if cell["cell_type"] == "code"]
    starts = [m["iopub.execute_input"] for m in marks if "iopub.execute_input" in m]
    ends = [m["shell.execute_reply"] for m in marks if "shell.execute_reply" in m]
    return (starts[0] if starts else None), (ends[-1] if ends else None)


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def notebook_facts(nb) -> dict:
    """When, where, at which scale and with what ``nb``'s stored outputs were computed.

    The driver's stamp is used only if it belongs to these outputs (same start time);
    otherwise the facts come from ``lib.environment_report()``'s printed lines, which
    every chapter prints at the top (the CPU is then named by its architecture only).
    """
    start, end = timings(nb)
    facts = {"executed": "unknown", "seconds": "unknown", "device": "unknown",
             "scale": "unknown", "torch": "unknown", "triton": "unknown"}
    if start and end:
        facts["executed"] = _when(start).strftime("%Y-%m-%d %H:%M")
        facts["seconds"] = f"{(_when(end) - _when(start)).total_seconds():.0f}"
    stamp = nb.get("metadata", {}).get(STAMP, {})
    if start and stamp.get("started") == start:
        facts.update({k: stamp[k] for k in ("device", "scale", "torch", "triton") if k in stamp})
        return facts
    names = {"device": "device", "BOOK_SCALE": "scale", "torch": "torch", "triton": "triton"}
    for cell in nb["cells"][:6]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = "".join(out.get("text", "")) if out.get("output_type") == "stream" else ""
            for line in text.splitlines():
                key, sep, value = line.partition(" : ")
                if sep and key.strip() in names:
                    facts[names[key.strip()]] = value.strip().replace("interpreter on CPU",
                                                                      "interpreter")
    return facts


def _title(nb, stem: str) -> str:
    """The chapter's title up to a colon ("7. FlashAttention"), linked to its page."""
    title = stem
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            heads = [line for line in "".join(cell["source"]).splitlines()
                     if line.startswith("# ")]
            if heads:
                title = heads[0][2:].split(":")[0].strip().replace("`", "")
                break
    return f"{{doc}}`{title} </chapters/{stem}>`"


def report_rows(chapters: list[Path], outputs: dict[str, str]) -> list[list[str]]:
    """One row of :data:`HEADER` per chapter; ``outputs`` says whose outputs each shows."""
    rows = []
    for path in chapters:
        nb = json.loads(path.read_text())
        facts = notebook_facts(nb)
        seconds = facts["seconds"] + (" s" if facts["seconds"] != "unknown" else "")
        rows.append([_title(nb, path.stem), outputs.get(path.stem, "committed"),
                     f"{facts['executed']}, {seconds}", facts["scale"], facts["device"],
                     f"{facts['torch']}, {facts['triton']}"])
    return rows


def report_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([HEADER, *rows])
    return buffer.getvalue()


def add_failure_note(path: Path, failure: dict, log: str) -> None:
    """Put a warning under the title of the notebook at ``path``: not re-executed, and why."""
    nb = json.loads(path.read_text())
    facts = notebook_facts(nb)
    error = "`" + failure["error"].replace("`", "'") + "`"
    what = f"cell {failure['cell']} raised {error}" if failure.get("cell") else error
    known = [f"on {facts['executed']} UTC" if facts["executed"] != "unknown" else "",
             f"at {facts['scale']} scale" if facts["scale"] != "unknown" else "",
             f"on {facts['device']}" if facts["device"] != "unknown" else ""]
    when = " ".join(part for part in known if part)
    note = ("```{admonition} Not re-executed in this build\n:class: warning\n"
            f"This build could not execute this chapter: {what} (the traceback is in "
            f"`{log}`). The outputs below are the committed ones"
            + (f", computed {when}" if when else "")
            + "; see the {doc}`/book/build-report`.\n```\n")
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            lines = "".join(cell["source"]).splitlines(keepends=True)
            at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
            cell["source"] = "".join([*lines[:at], "\n", note, "\n", *lines[at:]])
            break
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
