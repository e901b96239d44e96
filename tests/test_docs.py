"""
The documentation: every public name has a docstring, the API reference covers
every public module, and the command-line page covers every command and option.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import re
from types import ModuleType

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

import txacme

#: Gaps in modules that other people are finishing; each is reported to the
#: module's owner. The tests fail on any gap not listed here. Remove entries
#: as they are fixed.
KNOWN_GAPS = frozenset(
    {
        "txacme.stores.url.POSTGRES_SCHEMES",
    }
)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def public_modules() -> list[str]:
    """Every module of the txacme package whose dotted name has no ``_`` part."""
    names = ["txacme"]
    for info in pkgutil.walk_packages(txacme.__path__, "txacme."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def attribute_docs(module: ModuleType) -> set[str]:
    """
    Module-level names documented by a ``#:`` comment or a string after them,
    in ``module``, (for a package re-exporting them) its private submodules, or
    (for a module re-exporting them from their home) the txacme modules it
    imports them from.
    """
    import ast

    from sphinx.pycode import ModuleAnalyzer

    sources = [module.__name__]
    if hasattr(module, "__path__"):
        sources += [
            info.name
            for info in pkgutil.iter_modules(module.__path__, module.__name__ + ".")
            if info.name.rsplit(".", 1)[-1].startswith("_")
        ]
    if module.__file__:
        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        sources += [
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("txacme.")
        ]
    names: set[str] = set()
    for source in sources:
        analyzer = ModuleAnalyzer.for_module(source)
        names.update(name for (scope, name) in analyzer.find_attr_docs() if scope == "")
    return names


def has_docstring(obj: object) -> bool:
    """Whether ``obj`` carries a docstring of its own (not one inherited from its type)."""
    from zope.interface.interface import InterfaceClass

    if isinstance(obj, InterfaceClass):
        doc = obj.__doc__
    elif inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
    elif inspect.isroutine(obj) or inspect.ismodule(obj):
        doc = getattr(obj, "__doc__", None)
    else:
        return False
    return isinstance(doc, str) and bool(doc.strip())


def undocumented(module_name: str) -> list[str]:
    """The names in ``module.__all__`` without a docstring."""
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        return [f"{module_name}: no __all__"]
    documented_attributes: set[str] | None = None
    missing = []
    for name in exported:
        obj = getattr(module, name)
        if has_docstring(obj):
            continue
        defined_here = getattr(obj, "__module__", module_name) == module_name
        if inspect.isclass(obj) or inspect.isroutine(obj):
            if not defined_here:
                continue  # re-exported: checked where it is defined
        if documented_attributes is None:
            documented_attributes = attribute_docs(module)
        if name not in documented_attributes:
            missing.append(f"{module_name}.{name}")
    return missing


class DocstringTests(TestCase):
    def test_public_modules_have_docstrings(self) -> None:
        """Every public module says what it is for."""
        missing = [
            name for name in public_modules() if not has_docstring(importlib.import_module(name))
        ]
        self.assertEqual(missing, [])

    def test_public_names_have_docstrings(self) -> None:
        """
        Every name a public module exports in ``__all__`` has a docstring (for
        constants and aliases: a ``#:`` comment or a string after them).
        """
        missing: list[str] = []
        for name in public_modules():
            if name in ("txacme", "txacme.__main__"):
                continue
            missing.extend(undocumented(name))
        self.assertEqual(sorted(set(missing) - KNOWN_GAPS), [], "public names without a docstring")

    def test_public_methods_have_docstrings(self) -> None:
        """The public methods and properties of exported classes have docstrings."""
        missing: list[str] = []
        for module_name in public_modules():
            if module_name in ("txacme", "txacme.__main__"):
                continue
            module = importlib.import_module(module_name)
            for name in getattr(module, "__all__", ()):
                cls = getattr(module, name)
                if not inspect.isclass(cls) or cls.__module__ != module_name:
                    continue
                for attr, value in list(vars(cls).items()):
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if isinstance(value, property):
                        value = value.fget
                    if not (inspect.isfunction(value)):
                        continue
                    if _inherits_doc(cls, attr) or has_docstring(value):
                        continue
                    missing.append(f"{module_name}.{name}.{attr}")
        self.assertEqual(
            sorted(set(missing) - KNOWN_GAPS), [], "public methods without a docstring"
        )

    def test_api_reference_covers_every_module(self) -> None:
        """docs/api.rst documents every public module (with an ``__all__``)."""
        with open(os.path.join(DOCS, "api.rst"), encoding="utf-8") as f:
            text = f.read()
        documented = set(re.findall(r"^\.\. automodule:: (\S+)", text, re.MULTILINE))
        wanted = {name for name in public_modules() if name not in ("txacme", "txacme.__main__")}
        self.assertEqual(sorted(wanted - documented), [])


def _inherits_doc(cls: type, attr: str) -> bool:
    """An interface method implemented without repeating its documentation."""
    for base in cls.__mro__[1:]:
        if attr in vars(base) and has_docstring(getattr(base, attr)):
            return True
    from zope.interface import implementedBy

    for interface in implementedBy(cls):
        if attr in interface.names(all=True):
            return True
    return False


class CommandLinePageTests(TestCase):
    def test_every_command_and_option_is_documented(self) -> None:
        """docs/cli.rst names every command, action and long option of ``txacme``."""
        from txacme.cli import build_parser

        with open(os.path.join(DOCS, "cli.rst"), encoding="utf-8") as f:
            page = f.read()
        missing = []
        for words, parser in _parsers(build_parser(), []):
            if words and f"txacme {' '.join(words)}" not in page:
                missing.append(" ".join(words))
            for action in parser._actions:
                for option in action.option_strings:
                    if option.startswith("--") and option not in page:
                        missing.append(f"{' '.join(words)} {option}")
        self.assertEqual(missing, [])

    def test_exit_codes_are_documented(self) -> None:
        """docs/cli.rst lists each exit status with its constant's number."""
        from txacme.cli import commands as cli

        with open(os.path.join(DOCS, "cli.rst"), encoding="utf-8") as f:
            page = f.read()
        for name in dir(cli):
            if name.startswith("EXIT_"):
                self.assertRegex(page, rf"``{getattr(cli, name)}``")


def _parsers(
    parser: argparse.ArgumentParser, words: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found = [(words, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_parsers(sub, [*words, name]))
    return found


def load_example(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py``."""
    import importlib.util

    path = os.path.join(DOCS, "examples", name + ".py")
    spec = importlib.util.spec_from_file_location(f"txacme_docs_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RESTStoreExampleTests(TestCase):
    """The store of docs/stores.rst, against a fake of its REST service."""

    def setUp(self) -> None:
        import json as _json

        from treq.testing import StubTreq
        from twisted.web.resource import Resource

        self.entries: dict[str, bytes] = {"wanted.example": b""}
        self.fail_with: int | None = None
        entries = self.entries
        case = self

        class Entry(Resource):
            isLeaf = True

            def __init__(self, name: str) -> None:
                super().__init__()
                self.name = name

            def render_GET(self, request):  # type: ignore[no-untyped-def]  # noqa: N802
                if case.fail_with:
                    request.setResponseCode(case.fail_with)
                    return b""
                if self.name not in entries:
                    request.setResponseCode(404)
                    return b""
                return entries[self.name]

            def render_PUT(self, request):  # type: ignore[no-untyped-def]  # noqa: N802
                entries[self.name] = request.content.read()
                request.setResponseCode(204)
                return b""

        class Collection(Resource):
            def getChild(self, path, request):  # type: ignore[no-untyped-def]  # noqa: N802
                return Entry(path.decode("ascii")) if path else self

            def render_GET(self, request):  # type: ignore[no-untyped-def]  # noqa: N802
                return _json.dumps({"names": sorted(entries)}).encode("ascii")

        root = Resource()
        api = Resource()
        root.putChild(b"api", api)
        api.putChild(b"certificates", Collection())
        self.module = load_example("rest_store")
        self.store = self.module.RESTStore("https://vault.test/api", http=StubTreq(root))

    def test_through_the_issuing_service(self) -> None:
        """The service issues the wanted name and stores it with a PUT."""
        from twisted.internet.task import Clock

        from txacme.issuing.service import AcmeIssuingService
        from txacme.testing import FakeClient, FakeIssuer

        clock = Clock()
        issuer = FakeIssuer(clock.seconds, auto="succeed")
        service = AcmeIssuingService(self.store, None, clock, [], client=FakeClient(), issue=issuer)
        service.startService()
        self.successResultOf(service.when_certs_valid())
        service.stopService()
        self.assertEqual([call.names for call in issuer.calls], [["wanted.example"]])
        self.assertIn(b"BEGIN CERTIFICATE", self.entries["wanted.example"])
        entries = self.successResultOf(self.store.as_dict())
        self.assertEqual(list(entries), ["wanted.example"])
        self.assertEqual(len(entries["wanted.example"]), 2)

    def test_errors(self) -> None:
        """Unknown names are KeyError; other answers are StoreUnavailable."""
        from txacme.errors import ConfigurationError

        self.failureResultOf(self.store.get("other.example"), KeyError)
        self.failureResultOf(self.store.store("other.example", []), ConfigurationError)
        self.fail_with = 503
        failure = self.failureResultOf(
            self.store.get("wanted.example"), self.module.StoreUnavailable
        )
        self.assertIn("HTTP 503", str(failure.value))


class WebrootExampleTests(TestCase):
    """The responder of docs/responders.rst, validated by Pebble."""

    timeout = 120

    def test_pebble_reads_the_token_file(self) -> Deferred[None]:
        from twisted.internet import reactor
        from twisted.web.server import Site
        from twisted.web.static import File

        from tests.harness.pebble import pebble_or_skip
        from txacme.issuing.order import obtain_certificate
        from txacme.keys import generate_private_key, jwk_for
        from txacme.protocol.client import Client

        pebble = pebble_or_skip()
        webroot = os.path.abspath(self.mktemp())
        os.makedirs(webroot)
        port = reactor.listenTCP(pebble.http_port, Site(File(webroot)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        responder = load_example("webroot").WebrootResponder(webroot)

        async def run() -> None:
            client = await Client.from_url(
                reactor,
                pebble.directory_url,
                jwk_for(generate_private_key()),
                ca_file=pebble.ca_file,
            )
            try:
                await client.start()
                issued = await obtain_certificate(client, ["webroot.example"], [responder])
            finally:
                await client.close()
            self.assertEqual(issued.names, ["webroot.example"])
            self.assertEqual(os.listdir(os.path.join(webroot, ".well-known", "acme-challenge")), [])

        return Deferred.fromCoroutine(run())
