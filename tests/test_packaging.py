"""Packaging: `pip install -e .` is the library users' install, so everything `lib` imports
must come from [project.dependencies], and the book's and the tests' tools must not.

Two checks, both automatic for modules added later:
* statically, every import in every file of lib (top level and inside functions, plus
  packages loaded by name such as ``package_text("gensim", ...)``) maps to a declared
  base distribution;
* at run time, a subprocess refuses to import any module that only the book or dev extras
  (or nothing declared) provide, and imports every lib module.
"""

import ast
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
from packaging.requirements import Requirement  # noqa: E402  (matplotlib depends on it)

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Base dependencies that lib does not `import` by name, and why they are base dependencies.
NOT_IMPORTED = {
    "gensim": "lib.corpus reads the Lee corpus that it ships (importlib.resources)",
    "opencv-python-headless": "chapter 10's calibration (lib.calibration) and its oracles",
    "scipy": "Hungarian matching and signal processing in the vision and SSM chapters",
}
# Calls that load a package by a literal name: importlib.import_module("x"),
# importlib.resources.files("x"), importlib.util.find_spec("x"), lib.corpus.package_text("x")
LOADERS = {"import_module", "files", "find_spec", "package_text"}


def normalize(name: str) -> str:
    """PEP 503 normalisation: distribution names compare case- and separator-insensitively."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(requirements: list[str]) -> set[str]:
    return {normalize(Requirement(r).name) for r in requirements}


BASE = declared(PYPROJECT["project"]["dependencies"])
EXTRAS = {
    extra: declared(reqs) for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()
}


def imported_packages() -> dict[str, set[str]]:
    """Top-level third-party package -> the lib files that import (or load) it."""
    found: dict[str, set[str]] = {}
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in LOADERS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not node.args[0].value.startswith(".")
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lib":
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_the_scan_sees_lib_imports():
    found = imported_packages()
    # the scan finds imports at module level (torch everywhere), inside functions
    # (triton in lib/bench) and packages loaded by name (gensim in lib/corpus.py)
    assert "lib/softmax.py" in found["torch"]
    assert "lib/bench/__init__.py" in found["triton"]
    assert "lib/corpus.py" in found["gensim"]


def test_every_package_lib_imports_is_a_base_dependency():
    providers = metadata.packages_distributions()
    problems = []
    for package, files in sorted(imported_packages().items()):
        dists = {normalize(d) for d in providers.get(package, [])}
        if not dists:
            problems.append(f"{package} (imported by {sorted(files)}): no installed "
                            "distribution provides it")
        elif not dists & BASE:
            problems.append(f"{package} (imported by {sorted(files)}) comes from "
                            f"{sorted(dists)}: add it to [project.dependencies]")
    assert not problems, "\n".join(problems)


def test_base_dependencies_are_what_lib_needs():
    """No book or test tool in the library install; every base dependency has a use."""
    providers = metadata.packages_distributions()
    used = {normalize(d) for p in imported_packages() for d in providers.get(p, [])}
    tools = (EXTRAS["book"] | EXTRAS["dev"]) - {"dl3d-book-lib"}
    assert not BASE & tools, f"book/dev tools in [project.dependencies]: {BASE & tools}"
    unused = BASE - used - set(NOT_IMPORTED)
    assert not unused, (f"{sorted(unused)} are base dependencies that lib never imports: "
                        "move them to an extra, or say why in NOT_IMPORTED")


def test_registered_corpora_come_from_base_dependencies():
    from lib.corpus import CORPORA

    needed = {normalize(info.requires) for info in CORPORA.values() if info.requires}
    assert needed <= BASE, f"corpora need {sorted(needed - BASE)}, not base dependencies"


def base_closure() -> set[str]:
    """The installed distributions that `pip install -e .` would bring: base + their deps."""
    seen, todo = set(), [normalize(PYPROJECT["project"]["name"]), *BASE]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a platform-conditional dependency not installed here
        seen.add(name)
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(normalize(r.name))
    return seen


DRIVER = """
import importlib, importlib.abc, json, pkgutil, sys, traceback

allowed, providers = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])

class BaseOnly(importlib.abc.MetaPathFinder):
    # refuse a top-level module that only non-base distributions provide
    def find_spec(self, name, path=None, target=None):
        dists = providers.get(name.split(".")[0])
        if dists and not set(dists) & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not a base dependency)")
        return None

sys.meta_path.insert(0, BaseOnly())
import lib

failed = {}
for info in pkgutil.walk_packages(lib.__path__, "lib."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    try:
        importlib.import_module(info.name)
    except BaseException:
        failed[info.name] = traceback.format_exc(limit=-2)
print("REPORT " + json.dumps({"failed": failed}))
"""


def test_lib_imports_with_only_the_base_distributions():
    allowed = base_closure()
    providers = {
        package: sorted(normalize(d) for d in dists)
        for package, dists in metadata.packages_distributions().items()
    }
    # the book's tools are installed here and would be refused: the check has teeth
    assert "jupyter-book" not in allowed and "nbval" not in allowed
    assert "torch" in allowed and "numpy" in allowed
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(sorted(allowed)), json.dumps(providers)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert not report["failed"], "\n".join(f"{k}:\n{v}" for k, v in report["failed"].items())
