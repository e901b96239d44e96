"""Suite-wide test set-up."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _work_in_temporary_directory() -> Iterator[None]:
    """
    Run the suite from a throw-away directory.

    trial's ``TestCase.mktemp()`` creates directories relative to the current
    directory; this keeps them out of the source tree.
    """
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="txacme-tests-") as directory:
        os.chdir(directory)
        try:
            yield
        finally:
            os.chdir(previous)


_skipped: list[str] = []
_left_out: list[str] = []

#: Optional interop tools: the environment variable that names each.
OPTIONAL_TOOLS = {"acme.sh": "TXACME_ACMESH"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Leave out the interop tests whose tool Debian does not package unless the
    tool is given (``TXACME_ACMESH=/path/to/acme.sh``): they are listed as left
    out at the end of the run, not reported as skipped or passed.
    """
    kept = []
    for item in items:
        marker = item.get_closest_marker("optional_interop")
        variable = OPTIONAL_TOOLS.get(marker.args[0]) if marker is not None else None
        if variable is not None and not (os.environ.get(variable) or shutil.which(marker.args[0])):
            _left_out.append(f"{item.nodeid} (needs {marker.args[0]}: set {variable})")
        else:
            kept.append(item)
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the optional interop tests that did not run."""
    for nodeid in _left_out:
        terminalreporter.write_line(f"not run (optional interop tool absent): {nodeid}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """
    With ``TXACME_NO_SKIPS=1`` (set by ``scripts/test``, so in CI) a skipped test
    fails the run: a test against a real part (Pebble, BIND, PostgreSQL) that
    could not run must not pass for green.
    """
    if os.environ.get("TXACME_NO_SKIPS") == "1" and _skipped:
        print(f"\n{len(_skipped)} test(s) skipped, which TXACME_NO_SKIPS=1 forbids:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
