"""
The checks applied to a documentation example that cannot run on a test
machine (``.. example: checked (...)``), and the command-line helpers the
example tests share.

* Python: compiled (top-level ``await`` allowed), every ``from txacme... import``
  resolved, and every call of an imported txacme callable bound against its
  real signature (a renamed or misspelt keyword fails).
* Shell (``$`` prompts, ``\\`` continuations, ``|``/``||``/``&&``/``;``),
  systemd ``ExecStart=`` lines and YAML ``run:`` steps: ``txacme ...`` parsed by
  the ``txacme`` argument parser, ``twistd ...`` by twistd's own options with each
  ``--port`` endpoint string parsed by the endpoint parser, ``python -m
  txacme.testca`` options compared with its ``--help``, ``pip install``
  requirements parsed with their extras looked up in ``pyproject.toml``,
  ``scripts/...`` found executable in the repository.
* Endpoint strings on lines of their own (``le:...``, ``acme:...``): parsed.
* YAML, JSON and TOML: parsed.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tests.harness.docexamples import ROOT, Block

PYTHON_LANGUAGES = {"python", "python3", "py", "pycon"}
SHELL_LANGUAGES = {"shell", "console", "sh", "bash", "shell-session"}
ACME_PREFIXES = {"le": "https://acme-v02.api.letsencrypt.org/directory", "lets": "", "acme": None}
ENDPOINT_LINE = re.compile(r"^(le|lets|acme|txsni|tcp|ssl|unix):\S+$")


@dataclass
class Result:
    """What checking a block found."""

    checks: list[str] = field(default_factory=list)  #: what was checked, one line each
    problems: list[str] = field(default_factory=list)


# -- Python ---------------------------------------------------------------------------------------


def python_source(block: Block) -> str:
    """The Python text of a block (``>>>`` prompts removed for doctest blocks)."""
    if block.language != "pycon" and block.kind != "doctest":
        return block.text
    lines = []
    for line in block.text.splitlines():
        if line.startswith((">>> ", "... ")) or line in (">>>", "..."):
            lines.append(line[4:])
    return "\n".join(lines)


def check_python(source: str, result: Result) -> None:
    """Compile ``source``, resolve its txacme imports, bind calls of imported txacme callables."""
    try:
        tree = compile(
            source, "<example>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
    except SyntaxError as e:
        result.problems.append(f"Python does not compile: {e.msg} (example line {e.lineno})")
        return
    result.checks.append("compiles")
    imported: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("txacme"):
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                result.problems.append(f"'from {node.module} import ...': {e}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name):
                    result.problems.append(f"{node.module} has no {alias.name!r}")
                else:
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
                    result.checks.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("txacme"):
                    try:
                        importlib.import_module(alias.name)
                        result.checks.append(f"import {alias.name}")
                    except ImportError as e:
                        result.problems.append(f"import {alias.name}: {e}")
    # A fragment uses the facade's names (``Client``, ``AutoTLSEndpoint``...) imported by
    # an earlier block of its page: resolve those it neither imports nor defines.
    import txacme

    bound = {
        target.id
        for node in ast.walk(tree)
        for target in getattr(node, "targets", [])
        if isinstance(target, ast.Name)
    } | {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    import txacme.testca

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in imported and node.id not in bound:
            for module in (txacme, txacme.testca):
                if node.id in getattr(module, "__all__", ()):
                    imported[node.id] = getattr(module, node.id)
                    break
    for name, (module, cls) in RECEIVERS.items():
        if name not in imported and name not in bound:
            imported[name] = _Receiver(getattr(importlib.import_module(module), cls))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            _check_call(node, imported, result)


#: The names fragments use for an instance of a txacme class they do not construct
#: (``ca.fail_next(...)`` on docs/testing.rst): their method calls are bound too.
RECEIVERS = {
    "ca": ("txacme.testca", "TestCA"),
    "dns": ("txacme.testca", "TestDNSServer"),
}


@dataclass
class _Receiver:
    cls: type


def _resolve(node: ast.expr, imported: dict[str, object]) -> tuple[str, object] | None:
    if isinstance(node, ast.Name) and node.id in imported:
        return node.id, imported[node.id]
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, imported)
        if base is not None and isinstance(base[1], _Receiver):
            cls = base[1].cls
            if not hasattr(cls, node.attr):
                if re.search(rf"self\.{node.attr}\b", inspect.getsource(cls)):
                    return None  # an instance attribute: its type is not known here
                return f"{base[0]}.{node.attr}", _Missing(cls.__name__, node.attr)
            method = inspect.getattr_static(cls, node.attr)
            bound_method = getattr(cls, node.attr)
            if inspect.isfunction(method):  # an instance method: bind self
                bound_method = functools.partial(bound_method, None)
            return f"{base[0]}.{node.attr}", bound_method
        if base is not None and not isinstance(base[1], _Missing):
            if not hasattr(base[1], node.attr):
                return f"{base[0]}.{node.attr}", _Missing(base[0], node.attr)
            return f"{base[0]}.{node.attr}", getattr(base[1], node.attr)
    return None


@dataclass
class _Missing:
    owner: str
    attr: str


def _check_call(node: ast.Call, imported: dict[str, object], result: Result) -> None:
    resolved = _resolve(node.func, imported)
    if resolved is None:
        return
    name, target = resolved
    if isinstance(target, _Missing):
        result.problems.append(f"{target.owner} has no attribute {target.attr!r}")
        return
    if not callable(target):
        return
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
        k.arg is None for k in node.keywords
    ):
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
    except TypeError as e:
        result.problems.append(f"{name}(...) does not match {name}{signature}: {e}")
        return
    result.checks.append(f"{name}(...) binds")


# -- command lines --------------------------------------------------------------------------------


def shell_commands(block: Block) -> Iterator[str]:
    """
    The command lines of a shell block: ``$``-prompted lines when there are any
    (the rest is output), else every line; comments dropped, ``\\`` continuations
    joined.
    """
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    joined: list[str] = []
    current: str | None = None
    for line in lines:
        if current is not None:
            current += " " + line.strip()
        elif prompted:
            if not line.startswith("$ "):
                continue
            current = line[2:].strip()
        else:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            current = line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current.endswith("|"):
            continue
        joined.append(current)
        current = None
    if current:
        joined.append(current)
    return iter(joined)


def ini_commands(text: str) -> Iterator[str]:
    """The ``ExecStart=``/``ExecStartPost=`` command lines of a systemd unit."""
    current: str | None = None
    for line in text.splitlines():
        if current is not None:
            current += " " + line.strip()
        elif re.match(r"^Exec\w*=", line):
            current = line.split("=", 1)[1].strip()
        else:
            continue
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        yield current
        current = None


def yaml_commands(text: str) -> Iterator[str]:
    """The shell lines of the ``run:`` steps of a CI workflow in YAML."""
    import yaml

    def walk(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "run" and isinstance(item, str):
                    fake = Block(ROOT, 0, "shell", "literal", item, None)
                    yield from shell_commands(fake)
                else:
                    yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    yield from walk(yaml.safe_load(text))


def split_pipeline(command: str) -> list[list[str]]:
    """``a | b && c`` as argument vectors (redirections dropped)."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as e:
        raise ValueError(f"cannot split {command!r}: {e}") from None
    argvs: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in ("|", "||", "&&", ";", "&"):
            argvs.append([])
        elif token in (">", ">>", "<", "2>", "&>", ">&"):
            skip_next = True
        elif re.fullmatch(r"[0-9]*>+&?[0-9]*", token):
            continue
        else:
            argvs[-1].append(token)
    return [argv for argv in argvs if argv]


def check_command(command: str, result: Result) -> None:
    """Check each program of the command line ``command`` that txacme knows how to check."""
    try:
        argvs = split_pipeline(command)
    except ValueError as e:
        result.problems.append(str(e))
        return
    for argv in argvs:
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]  # VAR=value before a command
        if not argv:
            continue
        program = os.path.basename(argv[0])
        if program == "txacme":
            check_txacme_argv(argv[1:], result)
        elif program == "twistd":
            check_twistd_argv(argv[1:], result)
        elif program.startswith("python") and argv[1:3] == ["-m", "txacme.testca"]:
            check_testca_argv(argv[3:], result)
        elif program == "pip" and argv[1:2] == ["install"]:
            check_pip_install(argv[2:], result)
        elif argv[0].startswith("scripts/"):
            path = ROOT / argv[0]
            if path.is_file() and os.access(path, os.X_OK):
                result.checks.append(f"{argv[0]} exists and is executable")
            else:
                result.problems.append(f"{argv[0]}: no such executable script in the repository")


def check_txacme_argv(args: list[str], result: Result) -> None:
    """Parse ``txacme ARGS`` with the real parser."""
    import contextlib
    import io

    from txacme.cli.options import build_parser

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            message = errors.getvalue().strip().splitlines()
            result.problems.append(f"txacme {shlex.join(args)}: {message[-1] if message else e}")
            return
    result.checks.append(f"txacme {args[0] if args else ''} options parse")


def check_twistd_argv(args: list[str], result: Result) -> None:
    """Parse ``twistd ARGS`` with twistd's options; parse each ``--port`` endpoint string."""
    from twisted.python.usage import UsageError
    from twisted.scripts.twistd import ServerOptions

    ports = [a.split("=", 1)[1] for a in args if a.startswith("--port=")]
    ports += [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--port", "-p")]
    options = ServerOptions()
    try:
        options.parseOptions(args)
    except (UsageError, SystemExit) as e:
        result.problems.append(f"twistd {shlex.join(args)}: {e}")
        return
    result.checks.append(f"twistd {options.subCommand} options parse")
    for port in ports:
        check_endpoint(port, result)


@cache
def _testca_options() -> frozenset[str]:
    out = subprocess.run(
        [sys.executable, "-m", "txacme.testca", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)])),
    ).stdout
    return frozenset(re.findall(r"(--[a-z0-9-]+)", out))


def check_testca_argv(args: list[str], result: Result) -> None:
    """Each ``--option`` of ``python -m txacme.testca`` is one it has."""
    known = _testca_options()
    for arg in args:
        if arg.startswith("--") and arg.split("=", 1)[0] not in known:
            result.problems.append(f"python -m txacme.testca has no option {arg.split('=', 1)[0]}")
            return
    result.checks.append("python -m txacme.testca options exist")


def check_pip_install(args: list[str], result: Result) -> None:
    """Each requirement of ``pip install`` parses, names txacme's extras that exist."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([A-Za-z][\w-]*)\s*=", section, re.MULTILINE))
    for arg in args:
        if arg.startswith("-"):
            continue
        local = re.fullmatch(r"(\.{1,2}|\.?\.?/[\w./-]*)(\[([\w,-]+)\])?", arg)
        if local:  # a checkout: its extras must exist
            unknown = set(filter(None, (local.group(3) or "").split(","))) - extras
            if unknown:
                result.problems.append(f"pip install {arg}: no extra {sorted(unknown)}")
            else:
                result.checks.append(f"pip install {arg}: a checkout, extras exist")
            continue
        try:
            requirement = Requirement(arg)
        except InvalidRequirement as e:
            result.problems.append(f"pip install {arg}: {e}")
            continue
        if requirement.name == "txacme" and not requirement.url:  # drop once 1.0 is on PyPI
            result.problems.append(
                f"pip install {arg}: the package index has only txacme 0.9.3 (ACME v1); "
                "install from a checkout"
            )
            continue
        if requirement.name == "txacme":
            unknown = requirement.extras - extras
            if unknown:
                result.problems.append(
                    f"pip install {arg}: no extra {sorted(unknown)} in pyproject.toml"
                )
                continue
        result.checks.append(f"requirement {arg} parses")


def check_endpoint(description: str, result: Result) -> None:
    """Parse an endpoint string with Twisted's splitter and txacme's endpoint parser."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import _parse, serverFromString

    from txacme.config.endpoint import parse_endpoint_string_parts
    from txacme.errors import ConfigurationError

    description = description.replace("%i", "0")  # a systemd template's instance
    args, kwargs = _parse(description)
    prefix = str(args[0])
    try:
        if prefix in ACME_PREFIXES:
            from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY

            url = {"le": LETSENCRYPT_DIRECTORY, "lets": LETSENCRYPT_STAGING_DIRECTORY}.get(prefix)
            config = parse_endpoint_string_parts(prefix, url, [str(a) for a in args[1:]], kwargs)
            serverFromString(reactor, config.sub_endpoint)  # what is left: tcp:443:...
        else:
            serverFromString(reactor, description)
    except (ConfigurationError, ValueError, TypeError) as e:
        result.problems.append(f"endpoint string {description!r}: {e}")
        return
    result.checks.append(f"endpoint string {description[:40]!r}... parses")


def check_block(block: Block) -> Result:
    """Every check that applies to ``block``."""
    result = Result()
    language = block.language
    if language in PYTHON_LANGUAGES or block.kind == "doctest":
        check_python(python_source(block), result)
        return result
    if language in SHELL_LANGUAGES or language == "":
        # Endpoint strings on lines of their own, with ``#`` comments between them.
        lines = [
            line.strip()
            for line in block.text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if lines and all(ENDPOINT_LINE.match(line) for line in lines):
            for line in lines:
                check_endpoint(line, result)
            return result
        for command in shell_commands(block):
            check_command(command, result)
        if language == "" and not result.checks and not result.problems:
            check_python(block.text, result)
            if not result.checks:  # not Python either
                result.problems = []
        return result
    if language == "ini":
        for command in ini_commands(block.text):
            check_command(command, result)
        return result
    if language == "json":
        import json

        try:
            json.loads(block.text)
        except ValueError as e:
            result.problems.append(f"JSON does not parse: {e}")
            return result
        result.checks.append("JSON parses")
        return result
    if language == "toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            return result
        try:
            tomllib.loads(block.text)
        except tomllib.TOMLDecodeError as e:
            result.problems.append(f"TOML does not parse: {e}")
            return result
        result.checks.append("TOML parses")
        return result
    if language == "yaml":
        import yaml

        try:
            yaml.safe_load(block.text)
        except yaml.YAMLError as e:
            result.problems.append(f"YAML does not parse: {e}")
            return result
        result.checks.append("YAML parses")
        for command in yaml_commands(block.text):
            check_command(command, result)
        return result
    return result
