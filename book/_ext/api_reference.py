"""Sphinx extension: the API reference of ``lib``, one section per module, found at build time.

When Sphinx reads ``book/api.md`` this extension appends, for every public module of
``lib`` (found with ``pkgutil``; modules whose name starts with ``_`` are private), a
section with a label and an ``automodule`` directive::

    (api-lib-softmax)=
    ## `lib.softmax`

    ```{eval-rst}
    .. automodule:: lib.softmax
    ```

so a module added to ``lib`` appears without editing the page. Members, their order and
how type hints are shown are set by ``autodoc_*`` in ``_config.yml``. Chapters link to a
module's section with ``[API reference](#api-lib-softmax)`` or ``{py:mod}`lib.softmax```.
The page is re-read on every build, because the modules can change without it.
A module listed in the ``api_reference_exclude`` setting (``_config.yml``) is left out,
and the page says so: the escape hatch for a module whose docstrings do not build yet.

Three choices, made here once for every module:

* module constants (``BACKENDS``, ``CORPORA``, ...) are documented even without a
  docstring, so that ``:data:`BACKENDS``` in a docstring has a target; a constant
  imported from another module is documented only where it is defined;
* a constant's value is shown when it fits on one short line (``('auto', 'triton',
  'torch')``), not when it is a long table whose repr would drown the page;
* a reference resolves as the name does in Python: ``:func:`selective_scan``` in a
  module that imports ``selective_scan`` from ``lib.ssm`` links to
  ``lib.ssm.selective_scan``, and so does ``lib.mamba.selective_scan`` (constants too).
  A module split in two keeps its docstrings' references working.

References to private names (``_key_range``) are not checked: private helpers are not
on the page by design (``nitpick_ignore_regex`` in ``_config.yml``).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil

from sphinx.errors import ExtensionError
from sphinx.ext.autodoc import DataDocumenter, ModuleDocumenter
from sphinx.util.inspect import object_description

PAGE = "book/api"
PACKAGE = "lib"
MAX_VALUE = 60  # characters of a constant's repr shown on the page


@functools.cache
def public_modules(package: str = PACKAGE) -> list[str]:
    """``package`` and its modules and subpackages, less those with a ``_`` name part."""
    root = importlib.import_module(package)
    found = [package]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            found.append(info.name)
    return sorted(found)  # cached: callers must not change the list


def label(module: str) -> str:
    """The page anchor of ``module``'s section: ``lib.softmax`` -> ``api-lib-softmax``."""
    return "api-" + module.replace(".", "-").replace("_", "-")


def module_sections(modules: list[str], excluded: list[str] = ()) -> str:
    """MyST source for one section per module (label, heading, automodule), and a note
    naming the ``excluded`` modules."""
    blocks = []
    for module in modules:
        if module in excluded:
            continue
        blocks.append(
            f"({label(module)})=\n## `{module}`\n\n"
            # autodoc writes reStructuredText, which MyST only parses inside eval-rst
            f"```{{eval-rst}}\n.. automodule:: {module}\n```\n"
        )
    if excluded:
        names = ", ".join(f"`{m}`" for m in excluded)
        blocks.append(f"```{{note}}\nNot on this page yet: {names}. Read their docstrings "
                      "in the source until they are fixed to build cleanly.\n```\n")
    return "\n" + "\n".join(blocks)


@functools.cache
def defined_constants(module: str) -> frozenset[str]:
    """UPPER_CASE names assigned at the top level of ``module``'s own source."""
    try:
        tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    except (OSError, TypeError, SyntaxError):  # no source (a compiled or namespace module)
        return frozenset()
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(n for n in names if n.isupper() and not n.startswith("_"))


def keep_constants(app, what, name, obj, skip, options):
    """autodoc-skip-member: keep a module's own constants, docstring or not."""
    module = app.env.temp_data.get("autodoc:module")
    if what == "module" and skip and module and name in defined_constants(module):
        return False
    return None  # let autodoc decide


class ConstantDocumenter(DataDocumenter):
    """Module data, with its value shown only when it fits on one short line."""

    @classmethod
    def can_document_member(cls, member, membername, isattr, parent) -> bool:
        # autodoc's own rule takes only data with a docstring (isattr); add the constants
        own = isinstance(parent, ModuleDocumenter) and membername in defined_constants(
            parent.modname)
        return own or super().can_document_member(member, membername, isattr, parent)

    def get_doc(self) -> list[list[str]]:
        # the constant's own doc comment, never the docstring of its type (dict, tuple...)
        comment = self.get_module_comment(self.objpath[-1])
        return [comment] if comment else []

    def should_suppress_value_header(self) -> bool:
        too_long = len(object_description(self.object)) > MAX_VALUE
        return too_long or super().should_suppress_value_header()


def _imported_as(name: str) -> str | None:
    """``lib.mamba.selective_scan`` -> ``lib.ssm.selective_scan`` when it was imported there.

    Functions and classes know their module; a constant is found in the lib module that
    assigns it at its top level and holds the same object.
    """
    module, _, attr = name.rpartition(".")
    if not module.startswith(PACKAGE):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    home, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if home and qualname:
        real = f"{home}.{qualname}"
    else:
        real = next((f"{m}.{attr}" for m in public_modules() if attr in defined_constants(m)
                     and getattr(importlib.import_module(m), attr, None) is obj), None)
    return None if real == name else real


def resolve_reexports(app, env, node, contnode):
    """missing-reference: follow a name imported into a lib module to where it is defined."""
    if node.get("refdomain") != "py":
        return None
    target, module = node["reftarget"], node.get("py:module")
    candidates = [target] if target.startswith(PACKAGE + ".") else []
    if module:
        candidates.append(f"{module}.{target}")
    domain = env.get_domain("py")
    for name in candidates:
        real = _imported_as(name)
        if real and real in domain.objects:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                       real, node, contnode)
    return None


def append_modules(app, docname: str, source: list[str]) -> None:
    if docname == PAGE:
        modules = public_modules()
        excluded = list(app.config.api_reference_exclude)
        unknown = sorted(set(excluded) - set(modules))
        if unknown:
            raise ExtensionError(f"api_reference_exclude names no lib module: {unknown}")
        source[0] += module_sections(modules, excluded)


def always_reread(app, env, added, changed, removed) -> list[str]:
    return [PAGE] if PAGE in env.found_docs else []


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.add_config_value("api_reference_exclude", [], "env", types=[list])
    app.add_autodocumenter(ConstantDocumenter, override=True)
    app.connect("autodoc-skip-member", keep_constants)
    app.connect("source-read", append_modules)
    app.connect("env-get-outdated", always_reread)
    app.connect("missing-reference", resolve_reexports)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
