"""
The wheel users get: its metadata, its files, and a declared dependency for every import.

The wheel is built from a copy of the source tree (``pip wheel --no-deps``), as ``scripts/test``
and ``scripts/test-minimum`` build it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.message import Message
from email.parser import Parser
from importlib.metadata import packages_distributions
from typing import ClassVar

from twisted.trial.unittest import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["pyproject.toml", "setup.py", "README.rst", "LICENSE", "src", "twisted"]


def normalize(name: str) -> str:
    """The PEP 503 form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    """The project name of a Requires-Dist line."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    assert match is not None, line
    return normalize(match.group(1))


def build_wheel(directory: str) -> str:
    """Build txacme's wheel from a copy of the sources (no stale ./build) into directory."""
    tree = os.path.join(directory, "tree")
    os.mkdir(tree)
    for name in SOURCES:
        source = os.path.join(ROOT, name)
        if os.path.isdir(source):
            shutil.copytree(
                source,
                os.path.join(tree, name),
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dropin.cache"),
            )
        else:
            shutil.copy(source, tree)
    out = os.path.join(directory, "wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, tree],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = os.listdir(out)
    return os.path.join(out, wheel)


def runtime_imports(path: str) -> set[str]:
    """Top-level names a module imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


class WheelTests(TestCase):
    wheel: ClassVar[str]
    files: ClassVar[list[str]]
    metadata: ClassVar[Message]
    _directory: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        cls._directory = tempfile.TemporaryDirectory(prefix="txacme-wheel-")
        cls.wheel = build_wheel(cls._directory.name)
        with zipfile.ZipFile(cls.wheel) as archive:
            cls.files = archive.namelist()
            [name] = [n for n in cls.files if n.endswith(".dist-info/METADATA")]
            cls.metadata = Parser().parsestr(archive.read(name).decode("utf-8"))

    @classmethod
    def tearDownClass(cls) -> None:
        cls._directory.cleanup()

    def requirements(self, extra: str | None = None) -> set[str]:
        """The project names required (extra None) or required by one extra."""
        found = set()
        for line in self.metadata.get_all("Requires-Dist") or []:
            marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
            if (marker.group(1) if marker else None) == extra:
                found.add(requirement_name(line))
        return found

    def test_core_metadata(self) -> None:
        """Name, Requires-Python, the MIT licence, project URLs, the typed classifier."""
        import txacme

        self.assertEqual(self.metadata["Name"], "txacme")
        self.assertEqual(self.metadata["Version"], txacme.__version__)
        self.assertEqual(self.metadata["Requires-Python"], ">=3.10")
        self.assertEqual(self.metadata["License-Expression"], "MIT")
        urls = dict(u.split(", ", 1) for u in self.metadata.get_all("Project-URL") or [])
        self.assertEqual(urls["Source"], "https://github.com/twisted/txacme")
        self.assertIn("Documentation", urls)
        self.assertIn("Typing :: Typed", self.metadata.get_all("Classifier") or [])
        self.assertEqual(self.metadata["Description-Content-Type"], "text/x-rst")
        self.assertIn("txacme: automatic TLS for Twisted", self.metadata.get_payload())

    def test_extras(self) -> None:
        """The documented extras exist and all gathers the optional ones."""
        extras = set(self.metadata.get_all("Provides-Extra") or [])
        self.assertEqual(extras, {"dns", "lexicon", "metrics", "postgres", "all", "test", "dev"})
        optional = set().union(
            *(self.requirements(e) for e in ["dns", "lexicon", "metrics", "postgres"])
        )
        self.assertEqual(self.requirements("all"), optional)
        self.assertIn("mypy-zope", self.requirements("dev"))

    def test_floors(self) -> None:
        """The floors found by scripts/test-minimum; pyOpenSSL below 24.3 fails every handshake."""
        lines = self.metadata.get_all("Requires-Dist") or []
        self.assertIn("pyOpenSSL>=25.2", lines)
        self.assertIn("twisted[tls]>=26.4", lines)
        self.assertIn("acme>=3.3", lines)
        for line in lines:
            self.assertRegex(line, r">=|==", "every dependency needs a tested floor")

    def test_files(self) -> None:
        """The licence, py.typed, the plugin in twisted/plugins and nothing else of Twisted's."""
        self.assertTrue(any(n.endswith(".dist-info/licenses/LICENSE") for n in self.files))
        self.assertIn("txacme/py.typed", self.files)
        self.assertIn("twisted/plugins/txacme_endpoints.py", self.files)
        # An __init__.py of ours would shadow Twisted's own package.
        self.assertEqual(
            [n for n in self.files if n.startswith("twisted/")],
            ["twisted/plugins/txacme_endpoints.py"],
        )
        self.assertFalse([n for n in self.files if "/tests/" in n or n.startswith("tests/")])
        entry_points = [n for n in self.files if n.endswith("entry_points.txt")]
        with zipfile.ZipFile(self.wheel) as archive:
            self.assertIn("txacme = txacme.cli:main", archive.read(entry_points[0]).decode())

    def test_every_import_declared(self) -> None:
        """Each package src/txacme imports at run time is a declared dependency or extra."""
        # test: txacme.testca's pytest_fixture imports pytest when called.
        declared = set().union(
            self.requirements(),
            *(self.requirements(e) for e in ["dns", "lexicon", "metrics", "postgres", "test"]),
        )
        providers = packages_distributions()
        imported: dict[str, str] = {}
        for directory, _, files in os.walk(os.path.join(ROOT, "src", "txacme")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    for module in runtime_imports(path):
                        imported.setdefault(module, path)
        missing = []
        for module, path in sorted(imported.items()):
            if module in sys.stdlib_module_names or module in ("txacme", "__future__"):
                continue
            dists = {normalize(d) for d in providers.get(module, [])}
            if not dists & declared:
                missing.append(
                    f"{module} (imported by {os.path.relpath(path, ROOT)}; "
                    f"installed from {sorted(dists) or 'nothing'})"
                )
        self.assertEqual(missing, [])
        # Imported directly, so declared directly, not left to Twisted.
        self.assertIn("zope-interface", self.requirements())
        self.assertIn("pyopenssl", self.requirements())

    def test_runtime_imports_skip_type_checking(self) -> None:
        """The import scan sees function-level imports and skips TYPE_CHECKING-only ones."""
        path = os.path.join(self._directory.name, "sample.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                "import a.b\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    import hidden\nelse:\n    import shown\n"
                "def f():\n    from c import d\n    from . import e\n"
            )
        self.assertEqual(runtime_imports(path), {"a", "typing", "shown", "c"})


class FloorsScriptTests(TestCase):
    """scripts/floors.py turns Requires-Dist lines into pins at the floors."""

    def floors(self, lines: list[str], extras: set[str]) -> dict[str, str]:
        spec = importlib.util.spec_from_file_location(
            "floors", os.path.join(ROOT, "scripts", "floors.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result: dict[str, str] = module.floors(lines, extras)
        return result

    def test_pins(self) -> None:
        lines = [
            "twisted[tls]>=23.10",
            "pyOpenSSL>=24.3",
            "zope.interface>=5",
            'dns-lexicon<4,>=3.17; extra == "lexicon"',
            'dnspython>=2.6; extra == "dns"',
            'dnspython>=2.6; extra == "lexicon"',
            'pytest>=8; extra == "test"',
        ]
        self.assertEqual(
            self.floors(lines, {"lexicon"}),
            {
                "twisted": "23.10",
                "pyopenssl": "24.3",
                "zope-interface": "5",
                "dns-lexicon": "3.17",
                "dnspython": "2.6",
            },
        )

    def test_no_floor_refused(self) -> None:
        with self.assertRaises(SystemExit):
            self.floors(["treq"], set())
