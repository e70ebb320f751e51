"""The book: a clean `jupyter-book build -W -n` on the stored outputs, then every page in a
headless Chromium with the network cut off: no console errors, math typeset, images loaded,
widgets drawn. Screenshots go to _build/screenshots/.
"""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


@pytest.fixture(scope="module")
def build():
    jb = Path(sys.executable).with_name("jupyter-book")
    out = subprocess.run(
        [str(jb), "build", "--all", "-W", "-n", "--keep-going", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True,
    )
    return out


def test_book_builds_without_warnings(build):
    log = build.stdout + build.stderr
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert build.returncode == 0 and not warnings, "\n".join(warnings) or log[-3000:]
    assert (HTML / "index.html").exists() or (HTML / "book" / "intro.html").exists()


def test_every_toc_file_became_a_page(build):
    toc = (ROOT / "_toc.yml").read_text()
    files = [line.split("file:")[1].strip() for line in toc.splitlines() if "file:" in line]
    files.append(toc.split("root:")[1].splitlines()[0].strip())
    missing = [f for f in files if not (HTML / f"{f}.html").exists()]
    assert not missing


def pages():
    skip = {"genindex.html", "search.html"}
    return sorted(
        p.relative_to(HTML).as_posix()
        for p in HTML.rglob("*.html")
        if not p.relative_to(HTML).parts[0].startswith("_") and p.name not in skip
    )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(build):
    if CHROMIUM is None:
        message = "Chromium not found: install it (Debian: `apt-get install chromium`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI requires the browser test")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    handler = functools.partial(QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        yield chromium, f"http://127.0.0.1:{server.server_address[1]}"
        chromium.close()
    server.shutdown()


def local_only(base, blocked):
    """A route handler that serves the book and refuses (and records) any other request."""

    def handle(route):
        if route.request.url.startswith((base, "data:")):
            return route.continue_()
        blocked.append(route.request.url)
        return route.abort()

    return handle


# Runs in the page: text outside code blocks that still looks like TeX source.
UNTYPESET = """() => {
  const body = document.querySelector('main') || document.body;
  const copy = body.cloneNode(true);
  copy.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
  const text = copy.textContent;
  return ['\\\\(', '\\\\[', '$$', '\\\\begin{'].filter(s => text.includes(s));
}"""
BROKEN_IMAGES = """() => Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src.slice(0, 80))"""
WIDGETS = """() => {
  const views = Array.from(document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]'));
  const drawn = views.filter(script => {
    const area = script.previousElementSibling;  // html-manager renders the view just before
    return area && area.classList.contains('widget-subarea')
      && area.querySelector('.jupyter-widgets') !== null;
  });
  return {views: views.length, drawn: drawn.length};
}"""


def test_pages_render_offline(browser):
    chromium, base = browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems = {}
    found = pages()
    assert found, "no pages were built"
    for page_path in found:
        errors, external = [], []
        page = chromium.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m, e=errors: m.type == "error" and e.append(m.text))
        page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
        page.on("response", lambda r, e=errors: r.status >= 400 and e.append(f"{r.status} {r.url}"))

        page.route("**/*", local_only(base, external))
        page.goto(f"{base}/{page_path}", wait_until="networkidle")
        page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
        widgets = page.evaluate(WIDGETS)
        if widgets["views"]:
            try:
                page.wait_for_function(
                    f"() => ({WIDGETS})().drawn >= {widgets['views']}", timeout=20000
                )
            except Exception:
                pass
            widgets = page.evaluate(WIDGETS)
        untypeset, broken = page.evaluate(UNTYPESET), page.evaluate(BROKEN_IMAGES)
        page.screenshot(path=str(SHOTS / (page_path.replace("/", "__") + ".png")), full_page=True)
        page.close()
        issue = {
            "console errors": errors,
            "external requests": external,
            "untypeset math": untypeset,
            "broken images": broken,
            "undrawn widgets": widgets if widgets["drawn"] < widgets["views"] else None,
        }
        issue = {k: v for k, v in issue.items() if v}
        if issue:
            problems[page_path] = issue
    assert not problems, json.dumps(problems, indent=1)
