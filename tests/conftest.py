"""Suite-wide test set-up."""

from __future__ import annotations

import os
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
