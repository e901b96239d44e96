"""
Sphinx support for txacme's API reference: autodoc documents a zope interface
as a class with its methods and attributes; an interface used as a type
annotation is shown (and linked) by its name instead of ``<InterfaceClass
...>``; and a reference by a short or private-module name is resolved when it
names exactly one object.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.ext.autodoc import ClassDocumenter
from sphinx.util import typing as sphinx_typing
from zope.interface.interface import InterfaceClass, Method


class InterfaceDocumenter(ClassDocumenter):
    """``automodule`` members and ``autointerface`` directives for zope interfaces."""

    objtype = "interface"
    directivetype = "class"
    member_order = 20
    priority = ClassDocumenter.priority + 10

    @classmethod
    def can_document_member(cls, member: Any, membername: str, isattr: bool, parent: Any) -> bool:
        return isinstance(member, InterfaceClass)

    def format_args(self, **kwargs: Any) -> str:
        return ""

    def document_members(self, all_members: bool = False) -> None:
        sourcename = self.get_sourcename()
        for name in self.object.names():
            description = self.object[name]
            doc = (description.getDoc() or "").strip()
            self.add_line("", sourcename)
            if isinstance(description, Method):
                signature = description.getSignatureString()
                self.add_line(f"   .. method:: {name}{signature}", sourcename)
            else:
                self.add_line(f"   .. attribute:: {name}", sourcename)
            self.add_line("", sourcename)
            for line in doc.splitlines():
                self.add_line("      " + line, sourcename)


def _patch_annotations() -> None:
    original_stringify = sphinx_typing.stringify_annotation
    original_restify = sphinx_typing.restify

    def stringify(annotation: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(annotation, InterfaceClass):
            mode = kwargs.get("mode", args[0] if args else "fully-qualified-except-typing")
            prefix = "~" if mode == "smart" else ""
            return f"{prefix}{annotation.__module__}.{annotation.__name__}"
        return original_stringify(annotation, *args, **kwargs)

    def restify(annotation: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(annotation, InterfaceClass):
            return f":py:class:`~{annotation.__module__}.{annotation.__name__}`"
        return original_restify(annotation, *args, **kwargs)

    # Every Sphinx module that imported the functions by name.
    import sys

    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("sphinx"):
            continue
        if getattr(module, "stringify_annotation", None) is original_stringify:
            module.stringify_annotation = stringify
        if getattr(module, "restify", None) is original_restify:
            module.restify = restify


_REWRITES = (
    ("cryptography.hazmat.bindings._rust.x509.", "cryptography.x509."),
    ("cryptography.x509.extensions.", "cryptography.x509."),
    ("pem._object_types.", "pem."),
    ("x509.", "cryptography.x509."),
    ("rsa.", "cryptography.hazmat.primitives.asymmetric.rsa."),
    ("web_client.", "twisted.web.client."),
)


def _resolve_short_names(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """
    Resolve a Python reference that Sphinx could not: a private module path of
    cryptography or pem spelled as its public one, or a short name (``Deferred``,
    ``DirectoryStore``) that names exactly one documented object, ours or in an
    intersphinx inventory.
    """
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    domain = env.get_domain("py")
    for old, new in _REWRITES:
        if target.startswith(old):
            target = new + target[len(old) :]
    candidates = {target}
    if "." not in target.lstrip("~"):
        suffix = "." + target
        ours = [name for name in domain.objects if name.endswith(suffix)]
        theirs: list[str] = []
        inventory = getattr(env, "intersphinx_inventory", {})
        for kind in (
            "py:class",
            "py:function",
            "py:exception",
            "py:data",
            "py:attribute",
            "py:method",
        ):
            theirs += [name for name in inventory.get(kind, {}) if name.endswith(suffix)]
        if len(ours) == 1:
            candidates = {ours[0]}
        elif not ours and len(set(theirs)) == 1:
            candidates = {theirs[0]}
    (resolved,) = candidates
    if resolved == node["reftarget"]:
        return None
    node["reftarget"] = resolved
    found = domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, node["reftype"], resolved, node, contnode
    )
    if found is not None:
        return found
    from sphinx.ext import intersphinx

    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Sphinx) -> dict[str, Any]:
    import sphinx.ext.autodoc  # noqa: F401  (load the modules to patch)
    import sphinx.ext.autodoc.typehints  # noqa: F401

    _patch_annotations()
    app.add_autodocumenter(InterfaceDocumenter)
    app.connect("missing-reference", _resolve_short_names, priority=900)
    return {"parallel_read_safe": True}
