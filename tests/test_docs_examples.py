"""
Every code example of the documentation is run by a test, or checked with a
stated reason why it cannot run here.

Each code block of ``README.rst`` and ``docs/*.rst`` carries an rst comment
that classifies it (see :mod:`tests.harness.docexamples` and the section
"Documentation examples" of docs/testing.rst):

* ``.. example: run NAME``: ``NAME`` is a runner of this module (``RUNNERS``)
  or an existing test, ``tests/test_x.py::Class::test_y``;
* ``.. example: checked (reason)``: the checks of :mod:`tests.harness.doccheck`;
* ``.. example: text (what it is)``: output, a layout, another program's
  configuration.

The examples that run share one test CA (``python -m txacme.testca`` in a child
process) on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.doccheck import Result, check_block, check_python, python_source, shell_commands
from tests.harness.docexamples import ROOT, Block, all_blocks, unclassified
from tests.harness.processes import free_port, start_logged, stop_process, stop_processes
from tests.harness.twistd import quote

BLOCKS, MARKER_PROBLEMS = all_blocks()
SRC = str(ROOT / "src")
TXACME = os.path.join(os.path.dirname(sys.executable), "txacme")

#: The runners of this module, by the name a ``.. example: run NAME`` marker gives.
RUNNERS: dict[str, str] = {
    "python": "test_python_examples",
    "serve": "test_serve_with_twistd",
    "cli-issue": "test_cli_issue_and_revoke",
    "promtool": "test_promtool",
    "signatures": "test_migration_signatures",
    "cli-postgres": "test_cli_postgres_and_rfc2136",
    "serve-metrics": "test_status_json_of_twistd",
    "bind-setup": "test_bind_setup",
    "pytest-fixture": "test_pytest_fixture",
    "serve-txsni": "test_txsni_serves_the_same_directory",
    "serve-ondemand": "test_on_demand_with_twistd",
    "persist-record": "test_persist_record",
    "deploy-hooks": "test_deploy_hooks",
}


def env() -> dict[str, str]:
    """The environment of the example commands: this checkout's txacme first."""
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in [SRC, str(ROOT), os.environ.get("PYTHONPATH", "")] if p
        ),
        PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    )


def marked(mode: str, argument: str | None = None) -> list[Block]:
    return [
        b
        for b in BLOCKS
        if b.marker is not None
        and b.marker.mode == mode
        and (argument is None or b.marker.argument == argument)
    ]


def block_id(block: Block) -> str:
    return f"{block.path.relative_to(ROOT)}:{block.line}"


# -- the classification ---------------------------------------------------------------------------


def test_every_block_is_classified() -> None:
    """A code block without an ``.. example:`` marker, or a malformed marker, fails here."""
    problems = [str(p) for p in MARKER_PROBLEMS] + list(unclassified(BLOCKS))
    assert not problems, "\n" + "\n".join(problems)


def test_blocks_found() -> None:
    """The extraction finds the blocks of every kind (a broken parser would find none)."""
    kinds = {b.kind for b in BLOCKS}
    assert {"code-block", "literal", "literalinclude"} <= kinds
    assert len(BLOCKS) >= 70


def _test_exists(reference: str) -> bool:
    path, _, rest = reference.partition("::")
    file = ROOT / path
    if not file.is_file() or not rest:
        return False
    text = file.read_text(encoding="utf-8")
    return all(
        re.search(
            rf"^\s*(?:(?:async\s+)?def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*=",
            text,
            re.M,
        )
        for name in rest.split("::")
    )


def test_run_markers_name_a_runner() -> None:
    """``run NAME`` names a runner of this module or an existing test; every runner has a block."""
    wrong = [
        f"{b.where}: '.. example: run {b.marker.argument}' names no runner of "
        f"tests/test_docs_examples.py ({', '.join(sorted(RUNNERS))}) and no existing test "
        "(tests/test_x.py::Class::test_y)"
        for b in marked("run")
        if b.marker is not None
        and b.marker.argument not in RUNNERS
        and not _test_exists(b.marker.argument)
    ]
    assert not wrong, "\n" + "\n".join(wrong)
    used = {b.marker.argument for b in marked("run") if b.marker is not None}
    assert set(RUNNERS) <= used, f"runners with no block: {sorted(set(RUNNERS) - used)}"
    for name in RUNNERS.values():
        assert callable(globals().get(name)), name


def test_every_example_python_file_is_shown() -> None:
    """Each ``docs/examples/*.py`` is included by a page (so it is classified and run)."""
    included = {b.include for b in BLOCKS if b.include is not None}
    for path in sorted((ROOT / "docs" / "examples").glob("*.py")):
        assert path.resolve() in included, f"{path.relative_to(ROOT)} is shown by no page"


def test_unclassified_block_reported_with_page_and_line(tmp_path: Path) -> None:
    """A new page's unmarked block, a stray marker and a malformed one are each reported."""
    from tests.harness import docexamples

    page = tmp_path / "new.rst"
    page.write_text(
        "Title\n=====\n\n"
        ".. example: run python\n\n"
        "Run::\n\n    txacme status -C certs\n\n"
        ".. code-block:: python\n\n   print(1)\n\n"
        ".. example: checked\n\n"
        ".. code-block:: shell\n\n   $ twistd --help\n\n"
        ".. example: text (nothing after it)\n",
        encoding="utf-8",
    )
    root = docexamples.ROOT
    docexamples.ROOT = tmp_path
    try:
        blocks, problems = docexamples.scan(page)
        messages = list(unclassified(blocks)) + [str(p) for p in problems]
    finally:
        docexamples.ROOT = root
    assert [b.line for b in blocks] == [8, 10, 16]
    assert blocks[0].marker is not None and blocks[0].marker.argument == "python"
    assert messages[0].startswith("new.rst line 10: code block has no example classification")
    assert "'.. example: checked' needs a reason in parentheses" in "\n".join(messages)
    assert "example marker followed by no code block" in "\n".join(messages)


def _checked(language: str, text: str) -> list[str]:
    return check_block(Block(ROOT / "x.rst", 1, language, "code-block", text, None)).problems


def test_checks_catch_wrong_examples() -> None:
    """Each check fails on a wrong example of its kind (and passes the right one)."""
    assert (
        _checked("python", "from txacme import AutoTLSEndpoint\nAutoTLSEndpoint(1, 2, 3, 4)") == []
    )
    assert _checked(
        "python", "from txacme import AutoTLSEndpoint\nAutoTLSEndpoint(1, 2, 3, 4, e=1)"
    )
    assert _checked("python", "from txacme.keys import no_such_name")
    assert _checked("python", "Client.from_url(reactor, url, key, nope=1)")  # the facade's Client
    assert _checked("python", "ca.fail_next(1, 2, 3, 4, 5, 6, 7)")  # a TestCA's method
    assert _checked("python", "def f(:")
    assert _checked("shell", "$ txacme status -C certs") == []
    assert _checked("shell", "$ txacme status -C certs --no-such-option")
    assert _checked("shell", "$ twistd -n web --port le:/srv/certs:tcp:443") == []
    assert _checked("shell", "$ twistd -n web --port le:/srv/certs:tcp:443:no_such_keyword=1")
    assert _checked("shell", "$ python -m txacme.testca --port 1 --no-such-option 2")
    assert _checked("shell", "$ pip install './txacme[postgres]'") == []
    assert _checked("shell", "$ pip install './txacme[nonexistent]'")
    assert _checked("shell", "$ pip install txacme")  # the index has only 0.9.3
    assert _checked("shell", "$ scripts/no-such-script")
    assert _checked("ini", "[Service]\nExecStart=/usr/bin/txacme renew --frobnicate")
    assert _checked("yaml", "- run: txacme issue --no-such-option")
    assert _checked("yaml", "- a: [")
    assert _checked("json", '{"a": 1}') == []
    assert _checked("json", '{"a": 1,}')


# -- checked blocks -------------------------------------------------------------------------------

ABSENT_FILE = re.compile(r"'(/[^']+)' (?:is not a readable file|cannot be read)")


@pytest.mark.parametrize("block", marked("checked"), ids=block_id)
def test_checked_block(block: Block) -> None:
    """A ``checked`` block passes the checks of its language, and at least one applies."""
    result = check_block(block)
    # Files the example names on a production machine are absent here.
    problems = [
        p
        for p in result.problems
        if not ((m := ABSENT_FILE.search(p)) and not os.path.exists(m.group(1)))
    ]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)
    assert result.checks or len(problems) < len(result.problems), (
        f"{block.where}: nothing in this block could be checked (not txacme, twistd, pip or "
        "Python): classify it '.. example: text (what it is)' if it is not a command or code"
    )


# -- the shared test CA ---------------------------------------------------------------------------


class CA:
    """One ``python -m txacme.testca`` for the examples that run."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.http01_port = free_port()
        self.tlsalpn01_port = free_port()
        info_file = home / "ca.json"
        self.log = open(home / "testca.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "txacme.testca",
                "--port",
                str(self.port),
                "--http01-port",
                str(self.http01_port),
                "--tlsalpn01-port",
                str(self.tlsalpn01_port),
                "--info-file",
                str(info_file),
                "--options",
                json.dumps({"retry_after": 0}),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env(),
        )
        for _ in range(300):
            if info_file.exists() and info_file.stat().st_size:
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise AssertionError("the test CA did not start")
        if self.process.poll() is not None:
            raise AssertionError((home / "testca.log").read_text())
        self.info: dict[str, Any] = json.loads(info_file.read_text())
        self.directory_url: str = self.info["directory_url"]
        self.https_ca_file: str = self.info["https_ca_file"]
        self.roots_file: str = self.info["roots_file"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="txacme-docex-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def ca(home: Path) -> Iterator[CA]:
    (home / "ca").mkdir()
    instance = CA(home / "ca")
    yield instance
    instance.stop()


def run_shell(command: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env(),
        text=True,
        capture_output=True,
        timeout=60,
        **kwargs,
    )


def only(name: str, count: int) -> list[Block]:
    """The blocks a runner runs, in page order; the runner expects ``count``."""
    blocks = marked("run", name)
    assert len(blocks) == count, (
        f"the runner {name!r} runs {count} blocks and {len(blocks)} are marked for it: "
        + ", ".join(b.where for b in blocks)
    )
    return blocks


def find(blocks: list[Block], needle: str) -> Block:
    matching = [b for b in blocks if needle in b.text]
    assert len(matching) == 1, f"one block containing {needle!r} expected, found {len(matching)}"
    return matching[0]


# -- Python examples ------------------------------------------------------------------------------


def _python_pages() -> list[Path]:
    return sorted({b.path for b in marked("run", "python")})


@pytest.fixture(scope="module")
def python_results(ca: CA, home: Path) -> dict[str, str | None]:
    """Every ``run python`` block executed (one child process): block location -> error."""
    pages = []
    for page in _python_pages():
        root = home / ("py-" + page.stem)
        root.mkdir()
        blocks = [b for b in marked("run", "python") if b.path == page]
        pages.append(
            {
                "root": str(root),
                "blocks": [{"where": b.where, "source": python_source(b)} for b in blocks],
            }
        )
    request = {
        "examples": str(ROOT / "docs" / "examples"),
        "ca": {"directory_url": ca.directory_url, "https_ca_file": ca.https_ca_file},
        "pages": pages,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.harness.docexec"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return {r["where"]: r["error"] for r in json.loads(done.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples(page: Path, python_results: dict[str, str | None]) -> None:
    """
    The ``run python`` blocks of ``page`` execute, in order, in one namespace with the
    fixtures of :mod:`tests.harness.docexec`, against the test CA.
    """
    blocks = [b for b in marked("run", "python") if b.path == page]
    for block in blocks:
        result = Result()
        check_python(python_source(block), result)
        assert not result.problems, f"{block.where}: {result.problems}"
    failed = [f"{b.where}:\n{python_results[b.where]}" for b in blocks if python_results[b.where]]
    assert not failed, "\n".join(failed)


# -- twistd serving, and txacme status on what it obtained ----------------------------------------


def _start(
    command: str, work: Path, log_name: str = "twistd.log"
) -> tuple[subprocess.Popen[bytes], Path]:
    """Run a shell command of the docs in ``work``, its output in ``work/log_name``."""
    log = work / log_name
    return start_logged(["bash", "-c", "exec " + command], log, cwd=work, env=env()), log


def _wait(
    predicate: Callable[[], bool], what: str, process: subprocess.Popen[Any], log: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what}; twistd log:\n{log.read_text(errors='replace')}")


def _https_get(port: int, host: str, roots: str) -> bytes:
    context = ssl.create_default_context(cafile=roots)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def test_serve_with_twistd(ca: CA, home: Path) -> None:
    """
    quickstart's ``mkdir``/``touch``, endpoints.rst's ``twistd web --port acme:...``
    (the CA, port and directory moved to the test CA, a free loopback port and a
    temporary directory), then ``txacme status`` (quickstart, watching's ``--html``)
    and cli.rst's cron lines on the certificate it obtained.
    """
    blocks = only("serve", 6)
    work = home / "serve"
    work.mkdir()
    certs, root = work / "srv" / "www" / "certs", work / "srv" / "www" / "root"

    def local(text: str) -> str:
        return text.replace("/srv/", f"{work}/srv/").replace("/var/www/", f"{work}/var/www/")

    # quickstart: the certificate directory and one empty file per name.
    touch = find(blocks, "touch ")
    for command in shell_commands(touch):
        done = run_shell(local(command), work)
        assert done.returncode == 0, f"{touch.where}: {command}: {done.stderr}"
    assert sorted(p.name for p in certs.iterdir()) == ["example.com.pem", "www.example.com.pem"]
    root.mkdir()
    (root / "index.html").write_text("hello from the docs\n")

    # endpoints.rst: twistd web on an acme: endpoint string.
    serve = find(blocks, "twistd -n web")
    (command,) = list(shell_commands(serve))
    command = (
        command.replace("/srv/certs", str(certs))
        .replace("tcp:443", f"tcp:{ca.tlsalpn01_port}:interface=127.0.0.1")
        .replace(
            r"https\://ca.internal/directory",
            quote(ca.directory_url) + ":ca_file=" + quote(ca.https_ca_file),
        )
    )
    assert "ca.internal" not in command and str(certs) in command, command
    command += f" --path {root}"
    twistd, log = _start(command, work)
    try:
        _wait(
            lambda: all(
                (certs / f"{n}.pem").stat().st_size > 0 for n in ("example.com", "www.example.com")
            ),
            f"{serve.where}: twistd did not obtain the certificates",
            twistd,
            log,
        )
        page = _https_get(ca.tlsalpn01_port, "www.example.com", ca.roots_file)
        assert page.endswith(b"hello from the docs\n"), page[:200]
    finally:
        stop_process(twistd, timeout=20)
    assert (certs / "client.key").stat().st_mode & 0o777 == 0o600

    # quickstart: txacme status; watching: --html (into an existing web root); cli: cron lines.
    (work / "var" / "www" / "status").mkdir(parents=True)
    # cli.rst's sample output: the same columns, and the name's row in the same form.
    sample = find(blocks, "NAME             STATE")
    done = run_shell(f"txacme status -C {certs}", work)
    header = done.stdout.splitlines()[0]
    documented = sample.text.splitlines()[1]
    assert re.split(r"\s{2,}", header.strip()) == re.split(r"\s{2,}", documented.strip()), (
        f"{sample.where}: the page shows the columns {documented!r}, txacme prints {header!r}"
    )
    row = next(line for line in done.stdout.splitlines() if line.startswith("www.example.com "))
    cells = re.split(r"\s{2,}", row.strip())
    when = r"\d{4}-\d\d-\d\d \d\d:\d\dZ \(in \d+d\)"
    assert (
        len(cells) == len(re.split(r"\s{2,}", header.strip()))
        and cells[1:2] == ["ok"]
        and cells[3] == "ec256"
        and re.fullmatch(when, cells[4])
        and re.fullmatch(when, cells[5])
        and cells[-1] == "-"
    ), f"{sample.where}: a row unlike the page's: {row!r}"
    for needle in ("txacme status -C /srv/www/certs\n", "--html", "--check"):
        block = next(
            b
            for b in blocks
            if needle.strip() in b.text
            and not any(other in b.text for other in ("touch", "twistd", "NAME  "))
        )
        for command in shell_commands(block):
            if "--store postgresql" in command:
                continue  # watching.rst's second line needs a PostgreSQL store: checked below
            done = run_shell(local(command), work)
            assert done.returncode == 0, f"{block.where}: {command}: {done.stdout}{done.stderr}"
            if (
                command.startswith("txacme status -C")
                and "--json" not in command
                and ">" not in command
            ):
                assert "www.example.com" in done.stdout and " ok " in done.stdout, done.stdout
    html = work / "var" / "www" / "status" / "index.html"
    assert "www.example.com" in html.read_text()


# -- txacme issue / revoke ------------------------------------------------------------------------


VARIABLE = re.compile(r"(\d{4}-\d\d-\d\d|\d\d:\d\dZ|serial [0-9a-f]+\.\.\.)")


def _output_pattern(line: str) -> re.Pattern[str]:
    """A documented output line as a pattern: dates, times and serials vary."""
    parts = VARIABLE.split(line)
    pattern = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            pattern += re.escape(part)
        elif part.startswith("serial"):
            pattern += r"serial [0-9a-f]+(\.\.\.)?"  # the page abbreviates it
        elif part.endswith("Z"):
            pattern += r"\d\d:\d\dZ"
        else:
            pattern += r"\d{4}-\d\d-\d\d"
    return re.compile(pattern)


def test_cli_issue_and_revoke(ca: CA, home: Path) -> None:
    """
    cli.rst's ``txacme issue`` (``--le`` moved to the test CA, ``tcp:80`` to its
    http-01 port) and ``txacme revoke``: they succeed and print what the page shows.
    """
    blocks = only("cli-issue", 2)
    work = home / "cli"
    work.mkdir()
    certs = work / "certs"
    certs.mkdir()

    def local(command: str) -> str:
        return (
            command.replace("/srv/www/certs", str(certs))
            .replace("--le", f"--directory {ca.directory_url} --ca-file {ca.https_ca_file}")
            .replace("--http01 tcp:80", f"--http01 tcp:{ca.http01_port}:interface=127.0.0.1")
        )

    for block in blocks:
        lines = block.text.splitlines()
        expected = [line for line in lines if not line.startswith(("$", " "))]
        (command,) = list(shell_commands(block))
        done = run_shell(local(command), work)
        assert done.returncode == 0, f"{block.where}: {local(command)}:\n{done.stdout}{done.stderr}"
        got = done.stdout.splitlines()
        for line in expected:
            assert any(_output_pattern(line).fullmatch(g) for g in got), (
                f"{block.where}: the page shows {line!r}; the command printed:\n{done.stdout}"
            )


# -- promtool -------------------------------------------------------------------------------------


def test_promtool(home: Path) -> None:
    """
    watching.rst's promtool lines pass, run in docs/examples where the files are; its
    ``prometheus.yml`` passes ``promtool check config`` (the rule file moved to the
    example's); metrics.rst's rule passes ``promtool check rules`` in a group, and the
    metrics its expression names are txacme's.
    """
    blocks = only("promtool", 3)
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    examples = ROOT / "docs" / "examples"
    work = home / "promtool"
    work.mkdir()
    commands = find(blocks, "promtool check rules")
    for command in shell_commands(commands):
        done = run_shell(command, examples)
        assert done.returncode == 0, f"{commands.where}: {command}: {done.stdout}{done.stderr}"

    config = find(blocks, "scrape_configs")
    (work / "prometheus.yml").write_text(
        config.text.replace(
            "/etc/prometheus/rules/txacme-alerts.yml", str(examples / "prometheus-alerts.yml")
        )
    )
    done = run_shell("promtool check config prometheus.yml", work)
    assert done.returncode == 0, f"{config.where}: {done.stdout}{done.stderr}"

    rule = find(blocks, "- alert:")
    group = "groups:\n  - name: docs\n    rules:\n" + "".join(
        f"      {line}\n" for line in rule.text.splitlines()
    )
    (work / "rule.yml").write_text(group)
    done = run_shell("promtool check rules rule.yml", work)
    assert done.returncode == 0, f"{rule.where}: {done.stdout}{done.stderr}"
    source = (ROOT / "src" / "txacme" / "reporting" / "metrics.py").read_text(encoding="utf-8")
    for metric in re.findall(r"\b(txacme_\w+)", rule.text):
        base = metric.removeprefix("txacme_")
        assert base in source or metric in source, f"{rule.where}: no metric {metric} in txacme"


# -- the 1.0 signatures of the migration guide --------------------------------------------------


def _documented_signature(text: str) -> tuple[str, list[tuple[str, str, str | None]], bool]:
    """
    The ``# 1.0`` call of a signature block: its callable's dotted name, its parameters as
    (name, kind, default source) and whether it ends with ``...`` (more parameters elided).
    """
    import ast

    part = text.split("# 1.0", 1)[1].strip().split("\n\n", 1)[0]
    name, _, rest = part.partition("(")
    elided = rest.rstrip().endswith(", ...)")
    if elided:
        rest = rest.rstrip()[: -len(", ...)")] + ")"
    tree = ast.parse(f"def f({rest}: pass")
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    args = function.args
    params: list[tuple[str, str, str | None]] = []
    positional = args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    for arg, default in zip(positional, defaults, strict=True):
        source = None if default is None else ast.unparse(default)
        params.append((arg.arg, "POSITIONAL_OR_KEYWORD", source))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        source = None if kw_default is None else ast.unparse(kw_default)
        params.append((arg.arg, "KEYWORD_ONLY", source))
    if args.kwarg is not None:
        params.append((args.kwarg.arg, "VAR_KEYWORD", None))
    return name.strip(), params, elided


def test_migration_signatures() -> None:
    """The ``# 1.0`` signatures of migration.rst are the real ones: names, kinds, defaults."""
    import datetime
    import inspect

    import txacme

    for block in only("signatures", 3):
        name, documented, elided = _documented_signature(block.text)
        target: Any = txacme
        for part in name.split("."):
            target = getattr(target, part)
        real = list(inspect.signature(target).parameters.values())
        if elided:
            real = real[: len(documented)]
        assert [p.name for p in real] == [n for n, _, _ in documented], (
            f"{block.where}: the page lists {[n for n, _, _ in documented]}, "
            f"{name} takes {[p.name for p in real]}"
        )
        for (pname, kind, default), parameter in zip(documented, real, strict=True):
            assert parameter.kind.name == kind, f"{block.where}: {pname} is {parameter.kind.name}"
            if default is None:
                assert parameter.default is parameter.empty, f"{block.where}: {pname} has a default"
                continue
            if default == "...":
                continue  # the page does not say
            value = eval(default, {"timedelta": datetime.timedelta})  # noqa: S307 - the page's text
            assert parameter.default == value, (
                f"{block.where}: the page says {pname}={default}, the default is "
                f"{parameter.default!r}"
            )
        if "# options:" in block.text:  # the keywords **options takes
            from txacme.issuing.settings import ServiceOptions

            listed = block.text.split("# options:", 1)[1].split("\n", 1)[1]
            names = re.findall(r"(\w+)=", listed)
            assert names == list(ServiceOptions.__annotations__), (
                f"{block.where}: the page lists {names}, ServiceOptions has "
                f"{list(ServiceOptions.__annotations__)}"
            )


# -- txacme on a PostgreSQL store with RFC 2136 dns-01 ------------------------------------------


def test_cli_postgres_and_rfc2136(home: Path) -> None:
    """
    cli.rst's ``txacme renew`` with RFC 2136 and its ``TXACME_STORE=postgresql://...``
    commands, run against this machine's BIND and PostgreSQL, with a test CA that validates
    dns-01 through that BIND: the database, DNS server, CA and paths moved to the local
    ones (and the zone looked up through BIND), the commands as written.
    """
    block, renew = only("cli-postgres", 2)
    from tests.harness.bind import BindUnavailable, start_bind
    from tests.harness.postgres import PostgresUnavailable, shared_postgres
    from txacme.stores.postgres import KeyEncryption
    from txacme.testca import TestCAProcess

    try:
        postgres = shared_postgres()
        bind = start_bind({"example.com": ["ns1 A 127.0.0.1"]})
    except (BindUnavailable, PostgresUnavailable) as e:
        pytest.skip(str(e))
    work = home / "cli-postgres"
    (work / "var" / "lib" / "txacme").mkdir(parents=True)
    (work / "etc" / "txacme").mkdir(parents=True)
    shutil.copy(bind.key_file, work / "etc" / "txacme" / "tsig.key")
    KeyEncryption.generate_key_file(str(work / "etc" / "txacme" / "store.key"))  # as cluster.rst
    database = postgres.new_database()
    try:
        with TestCAProcess.start(dns_server=[bind.address, bind.port], retry_after=0) as dns_ca:

            def local(commands: str) -> str:
                return (
                    commands.replace("postgresql://txacme@db.example.com/txacme", database)
                    .replace("/var/lib/", f"{work}/var/lib/")
                    .replace("/srv/", f"{work}/srv/")
                    .replace("/etc/txacme/", f"{work}/etc/txacme/")
                    # example.com's zone is found through BIND, not the public DNS.
                    .replace(
                        "dns_server=192.0.2.53",
                        f"dns_server={bind.server} --dns-option dns_resolvers={bind.server}",
                    )
                    .replace(
                        "--le",
                        f"--directory {dns_ca.directory_url} --ca-file {dns_ca.https_ca_file}",
                    )
                )

            # renew: a directory with one empty entry, which is due.
            certs = work / "srv" / "www" / "certs"
            certs.mkdir(parents=True)
            (certs / "www.example.com.pem").touch()
            script = local("\n".join(shell_commands(renew)))
            done = run_shell(script, work)
            assert done.returncode == 0, f"{renew.where}:\n{script}\n{done.stdout}{done.stderr}"
            assert (certs / "www.example.com.pem").stat().st_size > 0, done.stdout

            script = local("\n".join(shell_commands(block)))
            done = run_shell(script, work)
            assert done.returncode == 0, f"{block.where}:\n{script}\n{done.stdout}{done.stderr}"
            assert re.search(r"^new\.example\.com: obtained", done.stdout, re.M), done.stdout
            # The certificate is in the database: status through the store sees it.
            exports = "\n".join(line for line in script.splitlines() if line.startswith("export"))
            status = run_shell(f"{exports}\ntxacme status -C {work}/var/lib/txacme --json", work)
            assert status.returncode == 0, status.stderr
            rows = json.loads(status.stdout)["certificates"]
            assert [r["name"] for r in rows] == ["new.example.com"], rows
            assert bind.txt("_acme-challenge.new.example.com") == set()  # cleaned up
    finally:
        bind.stop()
        postgres.drop_database(database)


# -- the status page of a served directory ---------------------------------------------------


def test_status_json_of_twistd(ca: CA, home: Path) -> None:
    """
    metrics.rst's and watching.rst's ``twistd web`` with ``metrics=``, the latter's ``curl |
    jq`` line and the former's ``/metrics``: ``le:`` moved
    to the test CA (``acme:...:directory=...:ca_file=...``), ports 443 and 9100 to free
    loopback ones. A wildcard entry, which tls-alpn-01 cannot obtain, is the one the jq
    filter prints as needing attention.
    """
    scrape, block = only("serve-metrics", 2)  # metrics.rst, watching.rst
    # metrics.rst's command is the same as watching.rst's first: running one runs both.
    assert list(shell_commands(scrape)) == list(shell_commands(block))[:1], scrape.where
    work = home / "serve-metrics"
    certs, root = work / "srv" / "www" / "certs", work / "srv" / "www" / "root"
    certs.mkdir(parents=True)
    root.mkdir()
    (certs / "www.example.org.pem").touch()
    (certs / "*.example.net.pem").touch()
    metrics_port = free_port()
    serve, fetch = list(shell_commands(block))
    serve = (
        serve.replace("/srv/", f"{work}/srv/")
        .replace(
            f"'le:{certs}:tcp:443:", f"'acme:{certs}:tcp:{ca.tlsalpn01_port}:interface=127.0.0.1:"
        )
        .replace("tcp\\:9100", f"tcp\\:{metrics_port}")
    )
    serve = serve.replace(
        ":metrics=",
        f":directory={quote(ca.directory_url)}:ca_file={quote(ca.https_ca_file)}:metrics=",
    )
    assert "acme:" in serve and str(metrics_port) in serve, serve
    twistd, log = _start(serve, work)
    try:
        _wait(
            lambda: (certs / "www.example.org.pem").stat().st_size > 0,
            f"{block.where}: twistd did not obtain www.example.org",
            twistd,
            log,
        )
        command = fetch.replace("9100", str(metrics_port))
        deadline = time.monotonic() + 20
        while True:
            done = run_shell(command, work)
            if done.returncode == 0 and done.stdout.strip() == "*.example.net":
                break
            assert time.monotonic() < deadline, (
                f"{block.where}: {command}: {done.returncode} {done.stdout!r} {done.stderr}\n"
                + log.read_text(errors="replace")
            )
            time.sleep(0.3)
        # metrics.rst: "and scrape http://127.0.0.1:9100/metrics".
        done = run_shell(f"curl -sf http://127.0.0.1:{metrics_port}/metrics", work)
        assert done.returncode == 0, done.stderr
        assert re.search(
            r'^txacme_certificate_not_after_timestamp_seconds\{name="www\.example\.org"\} [1-9]',
            done.stdout,
            re.M,
        ), f"{scrape.where}: {done.stdout[:2000]}"
    finally:
        stop_process(twistd, timeout=20)


# -- BIND's side of dns-01 ----------------------------------------------------------------------


def test_bind_setup() -> None:
    """
    dns01.rst's BIND commands, paths moved to a temporary directory: ``tsig-keygen`` makes
    a key file txacme reads as it is, and ``named-checkconf`` accepts the ``named.conf``
    excerpt with it.
    """
    commands, conf = only("bind-setup", 2)
    for tool in ("tsig-keygen", "named-checkconf"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} (Debian's bind9 packages) is not installed")
    from txacme.challenges.dnsproviders.rfc2136 import read_tsig_key_file

    with tempfile.TemporaryDirectory(prefix="txacme-docex-bind-") as directory:
        work = Path(directory)
        for path in ("etc/bind", "etc/txacme"):
            (work / path).mkdir(parents=True)

        def local(text: str) -> str:
            return text.replace("/etc/", f"{work}/etc/").replace("/var/lib/", f"{work}/var/lib/")

        script = "export PATH=$PATH:/usr/sbin\n" + "\n".join(
            local(c) for c in shell_commands(commands)
        )
        done = run_shell(script, work)
        assert done.returncode == 0, f"{commands.where}: {done.stderr}"
        key_file = work / "etc" / "txacme" / "tsig.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = read_tsig_key_file(str(key_file))
        assert (str(key.name).rstrip("."), str(key.algorithm).rstrip(".")) == (
            "txacme",
            "hmac-sha256",
        ), (key.name, key.algorithm)
        (work / "named.conf").write_text(local(conf.text) + "\n")
        check = run_shell(f"named-checkconf {work / 'named.conf'}", work)
        assert check.returncode == 0, f"{conf.where}: {check.stdout}{check.stderr}"


# -- the pytest fixture -------------------------------------------------------------------------


def test_pytest_fixture(home: Path) -> None:
    """
    testing.rst's ``conftest.py`` and test module, run by pytest in a child process, with
    ``run_my_client`` (the reader's client) fetching the directory over HTTPS with the
    bundle, and port 8080 moved to a free one.
    """
    (block,) = only("pytest-fixture", 1)
    conftest, _, module = block.text.partition("# test_something.py")
    work = home / "pytest-fixture"
    work.mkdir()
    client = (
        "import json, ssl, urllib.request\n\n\n"
        "def run_my_client(directory, ca_bundle):\n"
        "    context = ssl.create_default_context(cafile=ca_bundle)\n"
        "    with urllib.request.urlopen(directory, context=context, timeout=10) as r:\n"
        "        assert 'newOrder' in json.load(r)\n\n\n"
    )
    (work / "conftest.py").write_text(conftest.replace("8080", str(free_port())))
    (work / "test_something.py").write_text(client + module)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work)],
        cwd=work,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "1 passed" in done.stdout, (
        f"{block.where}:\n{done.stdout}{done.stderr}"
    )


# -- txsni: on the same directory ---------------------------------------------------------------


def test_txsni_serves_the_same_directory(ca: CA, home: Path) -> None:
    """
    certs-dir.rst's two twistd lines: an ``le:`` endpoint (moved to the test CA) obtains
    the certificate, then a second twistd (its own pid file) serves the same directory
    with ``txsni:`` on another port, and a client verifies it against the CA's roots.
    """
    (block,) = only("serve-txsni", 1)
    work = home / "serve-txsni"
    certs = work / "srv" / "www" / "certs"
    certs.mkdir(parents=True)
    for site in ("root", "other"):
        (work / "srv" / site).mkdir(parents=True, exist_ok=True)
    (work / "srv" / "other" / "index.html").write_text("the other site\n")
    (certs / "shop.example.org.pem").touch()
    txsni_port = free_port()
    first, second = (c.replace("/srv/", f"{work}/srv/") for c in shell_commands(block))
    first = first.replace(
        f"le:{certs}:tcp:443",
        shlex.quote(
            f"acme:{certs}:tcp:{ca.tlsalpn01_port}:interface=127.0.0.1"
            f":directory={quote(ca.directory_url)}:ca_file={quote(ca.https_ca_file)}"
        ),
    )
    second = second.replace("tcp:8443", f"tcp:{txsni_port}:interface=127.0.0.1")
    assert "acme:" in first and str(txsni_port) in second, (first, second)
    processes = []
    try:
        for number, command in enumerate((first, second)):
            process, log = _start(command, work, f"twistd-{number}.log")
            processes.append(process)
            if number == 0:
                _wait(
                    lambda: (certs / "shop.example.org.pem").stat().st_size > 0,
                    f"{block.where}: the le: twistd did not obtain shop.example.org",
                    processes[0],
                    log,
                )
        deadline = time.monotonic() + 20
        while True:
            try:
                page = _https_get(txsni_port, "shop.example.org", ca.roots_file)
                break
            except OSError:
                if time.monotonic() > deadline or processes[1].poll() is not None:
                    raise AssertionError(
                        f"{block.where}: txsni did not serve:\n"
                        + (work / "twistd-1.log").read_text(errors="replace")
                    ) from None
                time.sleep(0.2)
        assert page.endswith(b"the other site\n"), page[:200]
        assert (work / "other.pid").exists() and (work / "twistd.pid").exists()
    finally:
        stop_processes(processes, timeout=20)


# -- on-demand issuance --------------------------------------------------------------------------


def test_on_demand_with_twistd(ca: CA, home: Path) -> None:
    """
    ondemand.rst's ``twistd web`` with ``on_demand=``: ``le:`` moved to the test CA, port
    443 to a free loopback one, an empty directory. A client asking for an allowed name
    gets a certificate for it, issued during its handshake; a name outside the list is
    refused and never issued.
    """
    (block,) = only("serve-ondemand", 1)
    work = home / "serve-ondemand"
    certs = work / "srv" / "www" / "certs"
    certs.mkdir(parents=True)
    (work / "srv" / "www" / "root").mkdir()
    (work / "srv" / "www" / "root" / "index.html").write_text("on demand\n")
    (command,) = (c.replace("/srv/", f"{work}/srv/") for c in shell_commands(block))
    command = command.replace(
        f"'le:{certs}:tcp:443:",
        f"'acme:{certs}:tcp:{ca.tlsalpn01_port}:interface=127.0.0.1"
        f":directory={quote(ca.directory_url)}:ca_file={quote(ca.https_ca_file)}:",
    )
    assert "acme:" in command, command
    twistd, log = _start(command, work)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = _https_get(ca.tlsalpn01_port, "a.customers.example.net", ca.roots_file)
                break
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline or twistd.poll() is not None:
                    raise AssertionError(
                        f"{block.where}: no certificate on demand:\n"
                        + log.read_text(errors="replace")
                    ) from None
                time.sleep(0.3)
        assert page.endswith(b"on demand\n"), page[:200]
        assert (certs / "a.customers.example.net.pem").stat().st_size > 0  # stored
        with pytest.raises((OSError, ssl.SSLError)):
            _https_get(ca.tlsalpn01_port, "other.example.org", ca.roots_file)
        assert not (certs / "other.example.org.pem").exists()
    finally:
        stop_process(twistd, timeout=20)


# -- dns-persist-01: the record to publish --------------------------------------------------------


def test_persist_record(ca: CA, home: Path) -> None:
    """
    dns-persist-01.rst's ``txacme account create`` and ``txacme persist-record`` lines,
    ``--le`` moved to the test CA: they succeed and print the page's records, with the
    test CA's issuer domain name (its ``caaIdentities``) for ``letsencrypt.org`` and the
    account URL the CA gave for the page's (``...`` on the page: any).
    """
    (block,) = only("persist-record", 1)
    work = home / "persist-record"
    certs = work / "certs"
    certs.mkdir(parents=True)

    def local(command: str) -> str:
        return command.replace("/srv/certs", str(certs)).replace(
            "--le", f"--directory {ca.directory_url} --ca-file {ca.https_ca_file}"
        )

    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            steps[-1][1].append(line)
    assert [c.split()[1] for c, _ in steps] == ["account", "persist-record", "persist-record"]
    issuer = ca.info.get("issuer_domain_names", ["testca.invalid"])[0]
    account = None
    for command, expected in steps:
        done = run_shell(local(command), work)
        assert done.returncode == 0, f"{block.where}: {local(command)}:\n{done.stdout}{done.stderr}"
        for line in expected:
            pattern = re.escape(line).replace(
                re.escape("letsencrypt.org;"), re.escape(issuer + ";")
            )
            pattern = re.sub(
                r"accounturi=(?:https://acme\\-v02\\.api\\.letsencrypt\\.org/acme/acct/123|\\\.\\\.\\\.)",
                'accounturi=(?P<account>[^;"]+)',
                pattern,
            )
            assert "(?P<account>" in pattern, line
            match = re.fullmatch(pattern, done.stdout.strip())
            assert match, (
                f"{block.where}: the page shows {line!r}; {local(command)} printed {done.stdout!r}"
            )
            # The same account, registered at this CA, in every record.
            assert match["account"].startswith(ca.directory_url.rsplit("/", 1)[0]), match["account"]
            assert account in (None, match["account"]), (account, match["account"])
            account = match["account"]
    assert account is not None


# -- deploy hooks -------------------------------------------------------------------------------

_HOOKS_SCRIPT = r"""
import json, sys
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.logger import formatEvent, globalLogPublisher
from txacme.issuing.hooks import DeployHook

lines = []
globalLogPublisher.addObserver(
    lambda event: event.get("event") == "deploy_hook" and lines.append(formatEvent(event))
)

async def main(reactor):
    for argv, timeout, pem in json.load(sys.stdin):
        hook = DeployHook(reactor, argv, timeout=timeout, pem_path=lambda name, pem=pem: pem)
        await hook.run("example.com", ["example.com", "www.example.com"], "obtained")
    print(json.dumps(lines))

react(lambda reactor: ensureDeferred(main(reactor)))
"""


def test_deploy_hooks(home: Path) -> None:
    """
    hooks.rst's ``deploy_hook=sh -c '...'`` run by txacme's hook runner: with the
    HAProxy directory and reload moved to local ones, ``$TXACME_PEM`` expands in the
    shell and the certificate is copied; as written on a machine without
    ``/etc/haproxy/certs``, it fails with the page's ``cp: cannot create regular file``
    line. The page's three log lines (finished, failed, killed) are what it logs.
    """
    from txacme.issuing.hooks import parse_hook_command

    keyword, lines = only("deploy-hooks", 2)
    (value,) = [
        line.strip().removeprefix("deploy_hook=")
        for line in keyword.text.splitlines()
        if line.strip().startswith("deploy_hook=")
    ]
    work = home / "deploy-hooks"
    target = work / "haproxy-certs"
    target.mkdir(parents=True)
    pem = work / "example.com.pem"
    pem.write_text("the certificate\n")
    local = value.replace("/etc/haproxy/certs/", f"{target}/").replace(
        "systemctl reload haproxy", "echo Reloading haproxy"
    )
    assert local != value and "$TXACME_PEM" in local, local
    written = list(parse_hook_command(value))  # sh is on PATH; quoting as the page has it
    assert written[:2] == ["sh", "-c"], written
    runs = [
        [list(parse_hook_command(local)), 10, str(pem)],
        [written, 10, str(pem)],  # /etc/haproxy/certs/ does not exist here
        [["sh", "-c", "sleep 30"], 1, str(pem)],
    ]
    assert not Path("/etc/haproxy/certs").exists()
    done = subprocess.run(
        [sys.executable, "-c", _HOOKS_SCRIPT],
        input=json.dumps(runs),
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    logged = json.loads(done.stdout.strip().splitlines()[-1])
    assert (target / "example.com.pem").read_text() == "the certificate\n", logged
    documented = [line for line in lines.text.splitlines() if line.strip()]
    assert len(logged) == len(documented) == 3, (logged, documented)
    patterns = [
        r"deploy hook for example\.com finished in [\d.]+ s: Reloading \w+",
        r"deploy hook for example\.com failed \(exit status 1\): cp: cannot create regular "
        r"file .*",
        r"deploy hook for example\.com killed after \d+ s \(deploy_hook_timeout\)",
    ]
    for page, got, pattern in zip(documented, logged, patterns, strict=True):
        assert re.fullmatch(pattern, page.strip()), f"{lines.where}: {page!r} !~ {pattern}"
        assert re.fullmatch(pattern, got), f"{lines.where}: the page shows {page!r}, logged {got!r}"
