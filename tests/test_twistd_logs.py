"""
What an operator reads: ``twistd web --port acme:...`` subprocesses against Pebble,
their log lines counted at the default level (a first start, a start over 10,000
stored certificates), no traceback when the CA is down or untrusted, and one-line
errors for bad endpoint strings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from tests.harness.pebble import shared_pebble
from tests.harness.processes import free_port, stop_process
from tests.harness.twistd import quote, start_web, subprocess_env, web_command
from txacme.testing import make_certificate

#: A line logged by txacme itself (not twistd, not twisted.web).
TXACME_LINE = re.compile(r"^\S+ \[txacme\.[^\]]*\] ", re.MULTILINE)
#: Raw reprs that must not reach a message.
RAW_REPRS = ("b'", "IPv4Address(", "<function", " at 0x", "Traceback")


def txacme_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if TXACME_LINE.match(line)]


def write_far_certificates(directory: Path, count: int) -> None:
    """``count`` entries ``n<i>.bulk.test`` valid for ten years (one shared key: fast)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    now = datetime.now(timezone.utc)
    for i in range(count):
        name = f"n{i}.bulk.test"
        # No authority key identifier: no ARI request per certificate.
        cert = make_certificate(
            [name],
            now - timedelta(days=1),
            now + timedelta(days=3650),
            key=key,
            authority_key_id=None,
        )
        (directory / f"{name}.pem").write_bytes(
            key_pem + cert.public_bytes(serialization.Encoding.PEM)
        )


class TwistdLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pebble = shared_pebble()
        self.work = Path(tempfile.mkdtemp(prefix="txacme-logs-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.certs = self.work / "certs"
        self.certs.mkdir()
        self.runs = 0

    def description(
        self, *, directory: str | None = None, ca_file: bool = True, extra: str = ""
    ) -> str:
        text = (
            f"acme:{quote(str(self.certs))}:tcp:{self.pebble.tls_port}:interface=127.0.0.1"
            f":directory={quote(directory or self.pebble.directory_url)}"
        )
        if ca_file:
            text += f":ca_file={quote(self.pebble.ca_file)}"
        return text + extra

    def run_until(
        self,
        description: str,
        done: Callable[[str], bool],
        settle: float = 1.0,
        limit: float = 90.0,
    ) -> str:
        """Run twistd until ``done(log text)``, ``settle`` seconds more, then stop it."""
        self.runs += 1
        log_path = self.work / f"twistd-{self.runs}.log"
        proc = start_web(description, self.work, self.work, log_path)
        try:
            deadline = time.monotonic() + limit
            while not done(log_path.read_text(errors="replace")):
                if proc.poll() is not None:
                    self.fail(f"twistd exited with {proc.returncode}:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    self.fail(f"gave up waiting:\n{log_path.read_text()}")
                time.sleep(0.1)
            time.sleep(settle)
        finally:
            stop_process(proc, timeout=20)
        return log_path.read_text(errors="replace")

    def assert_readable(self, text: str) -> None:
        for line in txacme_lines(text):
            for raw in RAW_REPRS:
                self.assertNotIn(raw, line)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("_HTTP11ClientFactory", text)

    def test_first_start(self) -> None:
        """
        A first start obtaining one certificate: a handful of txacme lines (the
        account key, the summary, obtaining, the account, obtained), no request
        lines, no factory noise, no raw reprs.
        """
        (self.certs / "www.example.test.pem").write_bytes(b"")
        text = self.run_until(self.description(), lambda t: "obtained a certificate" in t)
        lines = txacme_lines(text)
        self.assertLessEqual(len(lines), 8, "\n".join(lines))
        joined = "\n".join(lines)
        self.assertIn("1 certificate in", joined)
        self.assertEqual(joined.count("obtaining a certificate for www.example.test"), 1)
        self.assertRegex(
            joined,
            r"obtained a certificate for www\.example\.test from Pebble Intermediate CA \w+, "
            r"valid until \S+, in [\d.]+ s",
        )
        self.assertEqual(joined.count("obtained a certificate"), 1)
        self.assertIn("registered the ACME account", joined)
        self.assertNotIn("ACME POST", text)
        self.assertNotIn("accountDoesNotExist", text)
        self.assertNotIn("#critical", text)
        self.assertNotIn("#error", text)
        self.assert_readable(text)

    def test_debug_level_on_request(self) -> None:
        """``log_level=debug`` shows every ACME request, once each."""
        (self.certs / "www.example.test.pem").write_bytes(b"")
        text = self.run_until(
            self.description(extra=":log_level=debug"),
            lambda t: "obtained a certificate" in t,
        )
        self.assertIn("ACME POST", text)
        self.assertIn("due at", text)
        self.assertEqual(text.count("-> 400 accountDoesNotExist"), 1)
        self.assert_readable(text)

    def test_start_over_many_certificates(self) -> None:
        """
        The lines of a start over 10,000 stored certificates are as few as over
        10: one summary, no line per name.
        """
        counts = {}
        for count in (10, 10_000):
            for old in self.certs.iterdir():
                old.unlink()
            write_far_certificates(self.certs, count)
            summary = f"{count:,}".replace(",", "") + " certificates in"
            text = self.run_until(self.description(), lambda t, s=summary: s in t, settle=2.0)
            lines = txacme_lines(text)
            counts[count] = len(lines)
            self.assertLessEqual(len(lines), 8, "\n".join(lines))
            self.assertRegex(
                "\n".join(lines), rf"{summary} \S+: 0 due now; next renewal: n\d+\.bulk\.test at "
            )
            self.assertNotIn("due at", text)
            self.assert_readable(text)
        # The account key is created on the first run only.
        self.assertLessEqual(counts[10_000], counts[10])

    def test_ca_down(self) -> None:
        """A refused connection: one failed line naming the URL and the cause, no traceback."""
        (self.certs / "www.example.test.pem").write_bytes(b"")
        url = f"https://127.0.0.1:{free_port()}/dir"
        text = self.run_until(
            self.description(directory=url), lambda t: "next attempt at" in t, settle=0.5
        )
        failed = [line for line in txacme_lines(text) if "failed (attempt 1)" in line]
        self.assertEqual(len(failed), 1, text)
        self.assertIn(f"cannot reach the CA at {url}: connection refused", failed[0])
        self.assertLessEqual(len(txacme_lines(text)), 8, text)
        self.assert_readable(text)

    def test_ca_untrusted(self) -> None:
        """A CA whose certificate does not verify: one line that says to give ca_file=."""
        (self.certs / "www.example.test.pem").write_bytes(b"")
        text = self.run_until(
            self.description(ca_file=False), lambda t: "next attempt at" in t, settle=0.5
        )
        failed = [line for line in txacme_lines(text) if "failed (attempt 1)" in line]
        self.assertEqual(len(failed), 1, text)
        self.assertIn(f"the CA at {self.pebble.directory_url}", failed[0])
        self.assertIn("does not verify", failed[0])
        self.assertIn("ca_file=", failed[0])
        self.assertNotIn("looks temporary", text)
        self.assert_readable(text)


class TwistdEndpointErrorTests(SynchronousTestCase):
    """A bad endpoint string ends twistd with one line, exit status 1."""

    def setUp(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="txacme-logs-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        (self.work / "certs").mkdir()

    def twistd(self, port: str) -> tuple[int, str]:
        env = subprocess_env()
        env.pop("LISTEN_FDS", None)
        proc = subprocess.run(
            web_command(port, self.work),
            capture_output=True,
            cwd=str(self.work),
            env=env,
            timeout=60,
            check=False,
        )
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")

    def assert_one_line(self, port: str, *expected: str) -> None:
        code, output = self.twistd(port)
        self.assertEqual(code, 1, output)
        lines = output.strip().splitlines()
        self.assertEqual(len(lines), 1, output)
        self.assertTrue(lines[0].startswith("txacme: error: "), output)
        for text in expected:
            self.assertIn(text, lines[0])

    def test_misspelt_keyword(self) -> None:
        self.assert_one_line(
            "acme:certs:tcp:0:emial=a@example.test:directory=https\\://ca.test/dir",
            "unknown keyword 'emial'",
            "did you mean 'email'?",
        )

    def test_unescaped_url(self) -> None:
        self.assert_one_line(
            "acme:certs:tcp:0:directory=https://ca.test/dir",
            "directory=https looks like a URL cut at its first colon",
            "\\:",
        )

    def test_systemd_without_sockets(self) -> None:
        self.assert_one_line(
            "le:certs:systemd:domain=INET:index=0",
            "systemd passed this process no such listening socket",
            "LISTEN_FDS",
        )

    def test_bad_value(self) -> None:
        self.assert_one_line("le:certs:tcp:0:log_level=loud", "log_level='loud'")
