"""The small facade in ``txacme/__init__.py``: common names, imported from their homes on use."""

from __future__ import annotations

import importlib
import subprocess
import sys

from twisted.trial.unittest import TestCase

import txacme

HEAVY = (
    "treq",
    "acme",
    "josepy",
    "OpenSSL",
    "cryptography",
    "twisted.internet.reactor",
    "txacme.serving.endpoint",
    "txacme.protocol.client",
)


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(output.split())


class FacadeTests(TestCase):
    def test_names_are_their_homes_objects(self) -> None:
        """Every facade name is the object its home module defines."""
        for name, home in txacme._HOMES.items():
            self.assertIs(getattr(txacme, name), getattr(importlib.import_module(home), name), name)
        self.assertEqual(sorted(txacme.__all__), sorted(txacme._HOMES))

    def test_unknown_name(self) -> None:
        """A name the facade does not have is an AttributeError naming it."""
        with self.assertRaises(AttributeError) as caught:
            txacme.NoSuchThing  # noqa: B018
        self.assertIn("NoSuchThing", str(caught.exception))

    def test_import_is_cheap(self) -> None:
        """Importing txacme or the endpoint plugin loads no TLS, HTTP or ACME machinery."""
        for statement in ("import txacme", "import twisted.plugins.txacme_endpoints"):
            loaded = modules_after(statement)
            self.assertEqual(sorted(loaded.intersection(HEAVY)), [], statement)

    def test_first_use_imports_the_home(self) -> None:
        """Using a facade name imports its home module then, not before."""
        loaded = modules_after("import txacme\ntxacme.AutoTLSEndpoint")
        self.assertIn("txacme.serving.endpoint", loaded)
