"""Sphinx extension: serve the ipywidgets JavaScript from the built site, not from CDNs.

myst-nb adds RequireJS and ``@jupyter-widgets/html-manager``'s ``embed-amd.js`` to
every page that stores widget state, by default from cdnjs and jsDelivr, so the
widgets of an offline reader stay blank. At build time this extension fetches both
packages from the npm registry (once, into ``_build/.offline-js``, checked against
the registry's sha512 integrity), copies them into the site and points myst-nb at
the local copies. If they cannot be fetched, the build keeps the CDN addresses and
says so in its log. ``widgets-setup.js`` (beside this file) points html-manager at its
icon fonts in the site and bridges its MathJax 2 calls to the book's MathJax 3.

The extension also drops duplicated script tags, which raise console errors.
"""

import base64
import hashlib
import io
import os
import shutil
import tarfile
import urllib.request

from sphinx.util import logging

logger = logging.getLogger(__name__)

FOLDER = "offline-js"  # not "_static": Jupyter Book would inject every js file in it everywhere
PACKAGES = {
    # tarball -> (sha512 integrity from the npm registry, files to take from it)
    "https://registry.npmjs.org/requirejs/-/requirejs-2.3.7.tgz": (
        "DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        lambda name: name == "package/require.js",
    ),
    "https://registry.npmjs.org/@jupyter-widgets/html-manager/-/html-manager-1.0.6.tgz": (
        "+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        # the AMD bundle and the icon fonts it loads relative to itself
        lambda name: name.startswith("package/dist/")
        and not name.endswith((".map", ".txt"))
        and os.path.basename(name) not in {"embed.js", "106.embed.js", "330.embed.js",
                                           "libembed-amd.js"},
    ),
}


def _fetch(cache: str) -> bool:
    """Download and unpack the packages into ``cache``; True when every file is there."""
    marker = os.path.join(cache, FOLDER, ".complete")
    if os.path.exists(marker):
        return True
    target = os.path.join(cache, FOLDER)
    os.makedirs(target, exist_ok=True)
    for url, (integrity, wanted) in PACKAGES.items():
        with urllib.request.urlopen(url, timeout=60) as response:
            blob = response.read()
        digest = base64.b64encode(hashlib.sha512(blob).digest()).decode()
        if digest != integrity:
            raise ValueError(f"integrity mismatch for {url}")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and wanted(member.name):
                    data = tar.extractfile(member).read()
                    with open(os.path.join(target, os.path.basename(member.name)), "wb") as f:
                        f.write(data)
    open(marker, "w").close()
    return True


def use_local_widget_js(app, config):
    cache = os.path.join(os.path.dirname(os.path.abspath(app.outdir)), ".offline-js")
    try:
        _fetch(cache)
    except Exception as error:  # no network, registry down: keep myst-nb's CDN defaults
        logger.info(f"offline_widgets: could not fetch the widget JavaScript ({error}); "
                    "widgets will load it from CDNs")
        return
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "widgets-setup.js"), os.path.join(cache, FOLDER))
    config.html_static_path = list(config.html_static_path) + [cache]
    config.nb_ipywidgets_js = {  # in this order: the setup script needs require, not embed
        f"{FOLDER}/require.js": {},
        f"{FOLDER}/widgets-setup.js": {},
        f"{FOLDER}/embed-amd.js": {},
    }
    logger.info("offline_widgets: ipywidgets JavaScript served from the site")


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
