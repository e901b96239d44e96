"""
Find the code examples of the documentation and how each one is classified.

Every code block of ``README.rst`` and ``docs/*.rst`` (``.. code-block::``,
``::`` literal blocks, ``>>>`` doctest blocks and ``.. literalinclude::``) must
be preceded by an rst comment that classifies it::

    .. example: run NAME
    .. example: checked (why it cannot run on a test machine)
    .. example: text (what it is)

The comment classifies the next code block after it, so for a ``::`` block it
goes before the paragraph that introduces the block. ``run NAME`` blocks are run
by the test of that name in ``tests/test_docs_examples.py``; ``checked`` blocks
get the checks of their language (Python compiled and its ``txacme`` imports
resolved, ``txacme``/``twistd``/``python -m txacme.testca`` command lines parsed
by the real parsers, endpoint strings parsed by the endpoint parser);
``text`` blocks are sample output, layouts, another program's commands or
configuration: nothing of txacme's to run or check.

The sources are parsed by docutils, with the Sphinx directives and roles the
pages use registered as plain containers, so what counts as a block is what
docutils (and so Sphinx) sees, with its line number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"

#: The marker syntax, for error messages.
MARKER_HELP = (
    "add '.. example: run NAME', '.. example: checked (why it cannot run here)' or "
    "'.. example: text (what it is)' just before it (before the paragraph ending in '::' "
    "for a literal block); see 'Documentation examples' in docs/testing.rst"
)

MARKER = re.compile(r"^example:\s*(?P<mode>\S+)\s*(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Marker:
    """A ``.. example:`` comment."""

    line: int
    mode: str  #: ``run``, ``checked`` or ``text``
    argument: str  #: the runner or test (``run``) or the reason (``checked``, ``text``)


@dataclass(frozen=True)
class Block:
    """A code block of a documentation page."""

    path: Path
    line: int  #: 1-based line of the block's directive (of its first line for ``::``)
    language: str  #: as written (``python``, ``console``...); ``""`` for ``::``
    kind: str  #: ``code-block``, ``literal``, ``doctest`` or ``literalinclude``
    text: str
    marker: Marker | None
    include: Path | None = None  #: for ``literalinclude``: the included file

    @property
    def where(self) -> str:
        """``docs/x.rst line N``, for messages."""
        return f"{self.path.relative_to(ROOT)} line {self.line}"


@dataclass(frozen=True)
class MarkerProblem:
    """A marker that is malformed or classifies nothing."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)} line {self.line}: {self.message}"


def pages() -> list[Path]:
    """``README.rst`` and every ``docs/*.rst``, sorted."""
    return [ROOT / "README.rst", *sorted(DOCS.glob("*.rst"))]


def _parse_marker(text: str, line: int, path: Path) -> Marker | MarkerProblem | None:
    match = MARKER.match(" ".join(text.split()))
    if match is None:
        return None
    mode, rest = match.group("mode"), match.group("rest").strip()
    if mode == "run":
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*|tests/[\w/]+\.py(::\w+)+", rest):
            return MarkerProblem(
                path,
                line,
                "'.. example: run' needs a runner name or tests/test_x.py::Class::test, "
                f"got {rest!r}",
            )
        return Marker(line, mode, rest)
    if mode in ("checked", "text"):
        if not (rest.startswith("(") and rest.endswith(")") and len(rest) > 2):
            return MarkerProblem(
                path, line, f"'.. example: {mode}' needs a reason in parentheses, got {rest!r}"
            )
        return Marker(line, mode, rest[1:-1].strip())
    return MarkerProblem(
        path, line, f"unknown example classification {mode!r}: use run, checked or text"
    )


def _docutils_setup(sources: Sequence[str]) -> None:
    """
    Register ``code-block`` and the other Sphinx directives and roles in
    ``sources`` with docutils (for one parse: see :func:`_doctree`).
    """
    from docutils import nodes
    from docutils.parsers.rst import Directive, directives, roles

    class AnyOptions(dict):  # type: ignore[type-arg]
        """Accept every option (their values do not matter here)."""

        def __contains__(self, key: object) -> bool:
            return True

        def __bool__(self) -> bool:
            return True

        def __missing__(self, key: str) -> Any:
            return directives.unchanged

    class CodeBlock(Directive):
        optional_arguments = 1
        has_content = True
        option_spec = AnyOptions()

        def run(self) -> list[Any]:
            text = "\n".join(self.content)
            node = nodes.literal_block(text, text)
            node["language"] = self.arguments[0] if self.arguments else ""
            node["kind"] = "code-block"
            node.line = self.lineno
            return [node]

    class LiteralInclude(Directive):
        required_arguments = 1
        has_content = False
        option_spec = AnyOptions()

        def run(self) -> list[Any]:
            node = nodes.literal_block("", "")
            node["language"] = self.options.get("language", "")
            node["kind"] = "literalinclude"
            node["include"] = self.arguments[0]
            node.line = self.lineno
            return [node]

    class Container(Directive):
        """Any other Sphinx directive: its content parsed as rst, its arguments ignored."""

        optional_arguments = 10
        final_argument_whitespace = True
        has_content = True
        option_spec = AnyOptions()

        def run(self) -> list[Any]:
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    for name in ("code-block", "sourcecode", "code"):
        directives.register_directive(name, CodeBlock)
    directives.register_directive("literalinclude", LiteralInclude)
    known = {"code-block", "sourcecode", "code", "literalinclude"}
    for source in sources:
        for name in re.findall(r"^\s*\.\. ([A-Za-z][\w:-]*)::", source, re.MULTILINE):
            if name in known:
                continue
            exists = name in directives._directives or name in directives._directive_registry
            if not exists:
                directives.register_directive(name, Container)
            known.add(name)
        for name in re.findall(r":([a-z][\w:]*):`", source):
            roles.register_generic_role(name, nodes.literal)


def _doctree(path: Path, source: str) -> Any:
    from docutils.core import publish_doctree
    from docutils.parsers.rst import directives, roles

    # docutils keeps its directives and roles in globals: register ours for this parse
    # only, so that a Sphinx build in the same process sees docutils as it was.
    saved = dict(directives._directives), dict(roles._roles), dict(roles._role_registry)
    try:
        _docutils_setup([source])
        return publish_doctree(
            source,
            source_path=str(path),
            settings_overrides={
                "report_level": 5,
                "halt_level": 5,
                "file_insertion_enabled": False,
                "raw_enabled": False,
            },
        )
    finally:
        directives._directives.clear()
        directives._directives.update(saved[0])
        roles._roles.clear()
        roles._roles.update(saved[1])
        roles._role_registry.clear()
        roles._role_registry.update(saved[2])


def scan(path: Path) -> tuple[list[Block], list[MarkerProblem]]:
    """The code blocks of the page ``path`` and the problems with its markers."""
    from docutils import nodes

    source = path.read_text(encoding="utf-8")
    doctree = _doctree(path, source)
    blocks: list[Block] = []
    problems: list[MarkerProblem] = []
    pending: Marker | None = None
    for node in doctree.findall(
        lambda n: isinstance(n, (nodes.comment, nodes.literal_block, nodes.doctest_block))
    ):
        if isinstance(node, nodes.comment):
            line = _comment_line(node, source)
            parsed = _parse_marker(node.astext(), line, path)
            if isinstance(parsed, MarkerProblem):
                problems.append(parsed)
            elif parsed is not None:
                if pending is not None:
                    problems.append(
                        MarkerProblem(
                            path, pending.line, "example marker followed by no code block"
                        )
                    )
                pending = parsed
            continue
        if any(isinstance(parent, nodes.system_message) for parent in _ancestors(node)):
            continue  # docutils quoting a directive it could not run: not a block of the page
        if isinstance(node, nodes.doctest_block):
            kind, language = "doctest", "pycon"
        else:
            kind = node.get("kind", "literal")
            language = node.get("language", "")
        include = None
        if kind == "literalinclude":
            include = (path.parent / node["include"]).resolve()
            text = include.read_text(encoding="utf-8") if include.is_file() else ""
            if not language and include.suffix == ".py":
                language = "python"
        else:
            text = node.astext()
        line = node.line or 0
        blocks.append(Block(path, line, language, kind, text, pending, include))
        pending = None
    if pending is not None:
        problems.append(
            MarkerProblem(path, pending.line, "example marker followed by no code block")
        )
    return blocks, problems


def _ancestors(node: Any) -> Iterator[Any]:
    while node.parent is not None:
        node = node.parent
        yield node


def _comment_line(node: Any, source: str) -> int:
    """The 1-based line of a comment node (docutils does not set it for comments)."""
    if node.line:
        return int(node.line)
    text = node.astext().split("\n", 1)[0]
    for number, line in enumerate(source.splitlines(), 1):
        if line.strip() == f".. {text}".strip():
            return number
    return 0


def all_blocks() -> tuple[list[Block], list[MarkerProblem]]:
    """The code blocks of every page and every marker problem."""
    blocks: list[Block] = []
    problems: list[MarkerProblem] = []
    for page in pages():
        found, wrong = scan(page)
        blocks.extend(found)
        problems.extend(wrong)
    return blocks, problems


def unclassified(blocks: Sequence[Block]) -> Iterator[str]:
    """One message per block without a marker."""
    for block in blocks:
        if block.marker is None:
            first = block.text.strip().splitlines()[0] if block.text.strip() else ""
            yield (
                f"{block.where}: code block has no example classification "
                f"({block.language or block.kind}: {first[:50]!r}); {MARKER_HELP}"
            )
