"""The API reference page (book/api.md + book/_ext/api_reference.py), built on its own.

The whole book is built by tests/test_book.py; this builds only the API page, with the
book's own _config.yml and `-W -n`, in a temporary folder, so that a contributor who adds
or edits a lib module learns in about twenty seconds (in `make test-lib`) whether its
docstrings render and their cross-references resolve. Failures are listed by module.
"""

import html as html_lib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import api_reference  # noqa: E402

sys.path.remove(str(ROOT / "book" / "_ext"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]["config"]
EXCLUDED = CONFIG.get("api_reference_exclude", [])


@pytest.fixture(scope="module")
def api_build(tmp_path_factory):
    """Build a book whose table of contents is the API page alone; return (log, html)."""
    src = tmp_path_factory.mktemp("api-book")
    (src / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/api\n")
    (src / "book").symlink_to(ROOT / "book", target_is_directory=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    out = subprocess.run(
        [str(jb), "build", "-W", "-n", "--keep-going", "--path-output", str(src / "out"),
         str(src)],
        capture_output=True, text=True, timeout=900,
    )
    html = src / "out" / "_build" / "html" / "book" / "api.html"
    return out, (html.read_text() if html.exists() else "")


def problems_by_module(log: str) -> dict[str, list[str]]:
    """Warning and error lines of a Sphinx log, grouped by the lib module they are in."""
    found: dict[str, list[str]] = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        if "WARNING" not in line and "ERROR" not in line:
            continue
        where = re.search(r"(lib/[\w/]+)\.py:", line)
        key = where.group(1).replace("/", ".").removesuffix(".__init__") if where else "(page)"
        found.setdefault(key, []).append(line.split("docstring of ")[-1].strip())
    return found


def test_api_page_builds_with_every_reference_resolved(api_build):
    out, html = api_build
    problems = problems_by_module(out.stdout + out.stderr)
    report = "\n".join(f"{module}:\n  " + "\n  ".join(lines)
                       for module, lines in sorted(problems.items()))
    assert out.returncode == 0 and not problems and html, (
        "fix these docstrings (reStructuredText: ``code``, :func:`name` of a public "
        "function, no |x| or *x outside code):\n" + (report or out.stderr[-3000:])
    )


def test_every_public_module_has_a_section(api_build):
    _, html = api_build
    modules = api_reference.public_modules()
    assert {"lib", "lib.backend", "lib.softmax", "lib.validate"} <= set(modules)
    assert not [m for m in modules if m.rsplit(".", 1)[-1].startswith("_")]
    missing = [m for m in modules if m not in EXCLUDED
               and f'id="{api_reference.label(m)}"' not in html]
    assert not missing, f"no section on the API page for {missing}"
    # a module left out (api_reference_exclude in _config.yml) is named on the page
    for module in EXCLUDED:
        assert f'id="{api_reference.label(module)}"' not in html
        assert module in html.split("Not on this page yet:")[-1], module


def test_sections_document_functions_classes_and_constants(api_build):
    _, html = api_build
    for target in ("lib.softmax.softmax", "lib.backend.resolve_backend",
                   "lib.transformer.TinyLM", "lib.backend.BACKENDS"):
        assert f'id="{target}"' in html, target
    # a constant's value is shown when short; the reference by name resolves to it
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", html))
    assert "BACKENDS = ('auto', 'triton', 'torch')" in text
    assert 'href="#lib.backend.BACKENDS"' in html
    # re-exported names are documented once, where they are defined
    assert 'id="lib.resolve_backend"' not in html


def test_a_name_imported_into_a_module_resolves_where_it_is_defined():
    # lib.training uses lib.validate's check_callable: a docstring of lib.training may
    # write :func:`check_callable`, and the link goes to lib.validate.check_callable
    assert (api_reference._imported_as("lib.training.check_callable")
            == "lib.validate.check_callable")
    assert api_reference._imported_as("lib.validate.check_callable") is None
    assert api_reference._imported_as("lib.training.no_such_name") is None
    assert api_reference._imported_as("torch.softmax") is None  # only lib is followed
    # a constant: lib.softmax imports FLOAT_DTYPES, which lib.validate defines
    assert api_reference._imported_as("lib.softmax.FLOAT_DTYPES") == "lib.validate.FLOAT_DTYPES"
    assert api_reference._imported_as("lib.validate.FLOAT_DTYPES") is None
