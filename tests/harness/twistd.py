"""
Run ``twistd web`` over a txacme endpoint string in a child process, with
txacme imported from the same tree as the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import txacme
from tests.harness.processes import start_logged

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def quote(value: str) -> str:
    """``value`` escaped for one field of an endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def subprocess_env() -> dict[str, str]:
    """The environment for twistd: txacme importable as this test imports it."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(txacme.__file__))
    env["PYTHONPATH"] = os.pathsep.join([package_parent, env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    return env


def web_command(description: str, path: str | Path) -> list[str]:
    """``twistd -n web`` serving ``path`` on the endpoint ``description``, no pid file."""
    return [TWISTD, "-n", "--pidfile=", "web", "--port", description, "--path", str(path)]


def start_web(description: str, path: str | Path, work: Path, log: Path) -> subprocess.Popen[bytes]:
    """:func:`web_command` run in ``work``, its output written to ``log``."""
    return start_logged(web_command(description, path), log, cwd=str(work), env=subprocess_env())
