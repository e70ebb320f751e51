"""Sphinx extension: serve the ipywidgets JavaScript from the built site, never from CDNs.

myst-nb adds RequireJS and ``@jupyter-widgets/html-manager``'s ``embed-amd.js`` to
every page that stores widget state, by default from cdnjs and jsDelivr, so the
widgets of an offline reader stay blank. The repository ships both (with the icon
fonts html-manager loads, their licences and checksums) in ``book/vendor/offline-js``;
see the README.txt there for where they come from. This extension checks every file
against ``SHA256SUMS``, stops the build with an error naming the file when one is
missing or altered, adds the folder to the site (``_static/offline-js/``) and points
myst-nb at those copies. The build makes no network request.

``book/static/widgets-setup.js`` runs between the two: it points html-manager at its
icon fonts in the site and bridges its MathJax 2 calls to the book's MathJax 3.

The extension also drops duplicated script tags, which raise console errors.
"""

import hashlib
from pathlib import Path

from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

VENDOR = Path(__file__).resolve().parents[1] / "vendor"
FOLDER = "offline-js"  # not "_static": Jupyter Book would inject every js file in it everywhere
CHECKSUMS = "SHA256SUMS"
# what myst-nb loads, in this order: the setup script needs require, embed-amd needs both
WIDGET_JS = (f"{FOLDER}/require.js", "widgets-setup.js", f"{FOLDER}/embed-amd.js")


def check_vendored(folder: Path) -> list[str]:
    """The files listed in ``folder/SHA256SUMS``, each present with its checksum.

    Raises ``ExtensionError`` naming what is missing or altered, and how to restore it.
    """
    sums = folder / CHECKSUMS
    restore = (f"restore it from git (`git checkout -- {folder}`), or see "
               f"{folder / 'README.txt'} for where the files come from")
    if not sums.is_file():
        raise ExtensionError(f"offline_widgets: {sums} is missing; {restore}")
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            listed[name.lstrip("*")] = digest
    for name in ("require.js", "embed-amd.js"):
        if name not in listed:
            raise ExtensionError(f"offline_widgets: {sums} does not list {name}; {restore}")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise ExtensionError(
                f"offline_widgets: {path} is missing, so the widgets would need a network; "
                + restore
            )
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ExtensionError(f"offline_widgets: {path} does not match {sums}; {restore}")
    return sorted(listed)


def use_local_widget_js(app, config):
    files = check_vendored(VENDOR / FOLDER)
    config.html_static_path = [*config.html_static_path, str(VENDOR)]
    config.nb_ipywidgets_js = {path: {} for path in WIDGET_JS}
    logger.info(f"offline_widgets: {len(files)} vendored widget files served from the site")


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    """Keep the first of identical scripts (sphinx-thebe and togglebutton add theirs twice)."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (script.filename or None, script.attributes.get("body"))  # None or "" if inline
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("config-inited", use_local_widget_js)
    app.connect("html-page-context", drop_duplicate_scripts, priority=1000)  # after the theme
    return {"parallel_read_safe": True, "parallel_write_safe": True}
