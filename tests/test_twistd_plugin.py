"""
``twistd web --port acme:...`` as a user runs it: a real twistd subprocess using
the installed endpoint plugin obtains certificates from Pebble over tls-alpn-01
and serves HTTPS that curl accepts for the name, verifying against Pebble's root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, utils
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.harness.pebble import shared_pebble
from tests.harness.processes import stop_process
from tests.harness.twistd import TWISTD, quote, start_web, subprocess_env

CURL = shutil.which("curl") or "/usr/bin/curl"


class TwistdPluginTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.pebble = shared_pebble()
        self.work = Path(tempfile.mkdtemp(prefix="txacme-twistd-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.certs = self.work / "certs"
        self.certs.mkdir()
        self.site = self.work / "site"
        self.site.mkdir()
        (self.site / "index.html").write_text("served by twistd over txacme\n")
        self.roots = self.work / "roots.pem"
        self.roots.write_bytes(b"".join(self.pebble.roots()))

    def start_twistd(self, port_description: str) -> subprocess.Popen[bytes]:
        proc = start_web(port_description, self.site, self.work, self.work / "twistd.log")
        self.addCleanup(stop_process, proc)
        return proc

    def log_text(self) -> str:
        return (self.work / "twistd.log").read_text(errors="replace")

    @inlineCallbacks
    def wait_for_file(self, path: Path, proc: subprocess.Popen[bytes]) -> Any:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.fail(f"twistd exited with {proc.returncode}:\n{self.log_text()}")
            if path.stat().st_size:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{path.name} was not issued:\n{self.log_text()}")

    @inlineCallbacks
    def curl(self, name: str) -> Any:
        """curl https://name/ on the serving port, trusting only Pebble's root."""
        port = self.pebble.tls_port
        for _ in range(100):
            out, err, code = yield utils.getProcessOutputAndValue(
                CURL,
                [
                    "-sS",
                    "--max-time",
                    "10",
                    "--cacert",
                    str(self.roots),
                    "--resolve",
                    f"{name}:{port}:127.0.0.1",
                    f"https://{name}:{port}/",
                ],
            )
            if code != 7:  # 7: could not connect (not listening yet)
                return out, err, code
            yield deferLater(reactor, 0.05, lambda: None)
        return out, err, code

    @inlineCallbacks
    def test_twistd_web_issues_and_serves(self) -> Any:
        """
        An empty ``<name>.pem`` is issued at start-up and served; a name whose
        empty file appears while twistd runs is issued and served without restart.
        """
        (self.certs / "www.example.test.pem").write_bytes(b"")
        description = (
            f"acme:{quote(str(self.certs))}:tcp:{self.pebble.tls_port}:interface=127.0.0.1"
            f":directory={quote(self.pebble.directory_url)}"
            f":ca_file={quote(self.pebble.ca_file)}:watch_interval=0.2"
        )
        proc = self.start_twistd(description)
        yield self.wait_for_file(self.certs / "www.example.test.pem", proc)
        out, err, code = yield self.curl("www.example.test")
        self.assertEqual(code, 0, err.decode() + self.log_text())
        self.assertEqual(out, b"served by twistd over txacme\n")
        self.assertTrue((self.certs / "client.key").exists())
        self.assertEqual(os.stat(self.certs / "client.key").st_mode & 0o777, 0o600)

        (self.certs / "late.example.test.pem").write_bytes(b"")
        yield self.wait_for_file(self.certs / "late.example.test.pem", proc)
        out, err, code = yield self.curl("late.example.test")
        self.assertEqual(code, 0, err.decode() + self.log_text())
        self.assertEqual(out, b"served by twistd over txacme\n")

        # A name nobody asked for is refused cleanly; nothing is issued for it.
        out, err, code = yield self.curl("unknown.example.test")
        self.assertNotEqual(code, 0)
        self.assertFalse((self.certs / "unknown.example.test.pem").exists())

    @inlineCallbacks
    def test_bad_endpoint_string_error_names_input(self) -> Any:
        """twistd exits with an error that names the bad keyword."""
        description = f"acme:{quote(str(self.certs))}:tcp:0:key=dsa512:directory=https\\://x/d"
        out, err, code = yield utils.getProcessOutputAndValue(
            TWISTD,
            ["-n", "--pidfile=", "web", "--port", description, "--path", str(self.site)],
            env=subprocess_env(),
            path=str(self.work),
        )
        self.assertNotEqual(code, 0)
        self.assertIn("key='dsa512'", (out + err).decode())

    @inlineCallbacks
    def test_missing_certificate_directory(self) -> Any:
        """A certificate directory that does not exist is named in the error."""
        missing = self.work / "no-such-dir"
        description = f"le:{quote(str(missing))}:tcp:0"
        out, err, code = yield utils.getProcessOutputAndValue(
            TWISTD,
            ["-n", "--pidfile=", "web", "--port", description, "--path", str(self.site)],
            env=subprocess_env(),
            path=str(self.work),
        )
        self.assertNotEqual(code, 0)
        self.assertIn(str(missing), (out + err).decode())
