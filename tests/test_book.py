"""The book: a clean `jupyter-book build -W -n` on the stored outputs, run with no network
(in a network namespace of its own where `unshare -n` works, as for root in CI, and with
every proxy variable pointing at a closed port either way), then every page in a headless
Chromium that refuses any request outside the site: no console errors, nothing loaded from
outside, math typeset, images loaded, widgets drawn. Screenshots go to _build/screenshots/.
"""

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
MAX_SHOT = 16000  # pixels of a page's screenshot
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


# A port nothing listens on: any HTTP(S) request the build makes fails at once.
CLOSED = "http://127.0.0.1:9"
NO_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy")


def unshare_works() -> bool:
    """True where `unshare -n` gives a process an empty network namespace (root, Linux)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def offline(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """``command`` and an environment in which it cannot reach any network."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(dict.fromkeys(NO_PROXY_VARS, CLOSED))
    return (["unshare", "-n", *command] if unshare_works() else command), env


@pytest.fixture(scope="module")
def build():
    jb = Path(sys.executable).with_name("jupyter-book")
    command, env = offline([str(jb), "build", "--all", "-W", "-n", "--keep-going", str(ROOT)])
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_the_build_has_no_network():
    """The sandbox of the build: no route out (not even to a local proxy)."""
    probe = ("import socket, urllib.request\n"
             "for url in ('https://registry.npmjs.org/', 'https://cdn.jsdelivr.net/'):\n"
             "    try:\n        urllib.request.urlopen(url, timeout=5)\n"
             "    except OSError:\n        continue\n"
             "    print('reached', url)\n")
    command, env = offline([sys.executable, "-c", probe])
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "reached" not in out.stdout, out.stdout + out.stderr


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


# Tags that make a browser fetch something: scripts, stylesheets, preloads, fonts, images.
LOADS = re.compile(
    r"<(?:script|img|iframe|source|audio|video)\b[^>]*?\ssrc=[\"']([^\"']+)"
    r"|<link\b[^>]*?\shref=[\"']([^\"']+)"
    r"|url\(\s*[\"']?((?:https?:)?//[^)\"']+)"
)


def test_no_page_loads_anything_from_outside_the_site(build):
    """Every script, stylesheet, font and image a page or stylesheet names is in the site."""
    outside = {}
    files = [*HTML.rglob("*.html"), *HTML.rglob("*.css")]
    for path in files:
        urls = {u for match in LOADS.findall(path.read_text(errors="replace")) for u in match}
        bad = sorted(u for u in urls if re.match(r"(?:[a-z]+:)?//", u))
        if bad:
            outside[path.relative_to(HTML).as_posix()] = bad
    assert files and not outside, json.dumps(outside, indent=1)


def test_widget_pages_load_the_vendored_javascript(build):
    """myst-nb's widget scripts point at the copies in the site, not at CDNs."""
    widget_pages = [p for p in HTML.rglob("*.html") if "widget-view+json" in p.read_text()]
    assert widget_pages, "no page stores widget state: nothing to check"
    for page in widget_pages:
        scripts = re.findall(r"<script[^>]*\ssrc=\"([^\"]+)\"", page.read_text())
        names = [s.split("?")[0].rsplit("_static/", 1)[-1] for s in scripts]
        order = [n for n in names if n in ("offline-js/require.js", "widgets-setup.js",
                                           "offline-js/embed-amd.js")]
        assert order == ["offline-js/require.js", "widgets-setup.js", "offline-js/embed-amd.js"]
        for name in order:
            assert (HTML / "_static" / name).is_file()


def test_missing_or_altered_vendored_file_stops_the_build(tmp_path):
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import offline_widgets
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    from sphinx.errors import ExtensionError

    vendored = ROOT / "book" / "vendor" / "offline-js"
    assert {"require.js", "embed-amd.js"} <= set(offline_widgets.check_vendored(vendored))
    copy = tmp_path / "offline-js"
    shutil.copytree(vendored, copy)
    (copy / "embed-amd.js").write_bytes((copy / "embed-amd.js").read_bytes() + b"\n")
    with pytest.raises(ExtensionError, match="embed-amd.js does not match"):
        offline_widgets.check_vendored(copy)
    (copy / "require.js").unlink()
    with pytest.raises(ExtensionError, match="require.js is missing"):
        offline_widgets.check_vendored(copy)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(ExtensionError, match="SHA256SUMS is missing"):
        offline_widgets.check_vendored(copy)


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
        # the whole page, up to MAX_SHOT pixels (the API reference is a hundred screens long)
        height = min(page.evaluate("() => document.documentElement.scrollHeight"), MAX_SHOT)
        page.screenshot(path=str(SHOTS / (page_path.replace("/", "__") + ".png")),
                        full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": height})
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
