"""
The ``txacme`` command line, run as a subprocess (``python -m txacme``) against
Pebble, plus unit tests of its pieces.

Pebble really validates: ``issue`` and ``renew`` listen for http-01 on
``p.http_port`` (or tls-alpn-01 on ``p.tls_port``) inside the subprocess.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pem
from cryptography import x509
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

import txacme
from tests.harness import chains
from tests.harness.pebble import EAB_KEYS, PebbleUnavailable, pebble_or_skip, start_pebble
from txacme.cli import commands as cli
from txacme.errors import ACMETimeout, IssuanceFailed, RateLimited, ServerInternal
from txacme.reporting.state import STATE_FILENAME, StateFile

SRC = os.path.dirname(os.path.dirname(txacme.__file__))


def run_cli(
    *args: str, cwd: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m txacme ARGS`` with this checkout's txacme; capture output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXACME_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("TERM", None)
    return subprocess.run(
        [sys.executable, "-m", "txacme", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def stored_certificate(path: str) -> x509.Certificate:
    objects = pem.parse_file(path)
    return x509.load_pem_x509_certificate(
        next(o for o in objects if isinstance(o, pem.Certificate)).as_bytes()
    )


def verify_entry(path: str, roots: list[bytes], name: str) -> x509.Certificate:
    """The entry is key + leaf + chain, the chain verifies to a root, the leaf is for ``name``."""
    return chains.verify_entry(path, roots, [name])


class PebbleCLITestCase(TestCase):
    """Commands against the shared Pebble, in a fresh certificate directory."""

    timeout = 300

    def setUp(self) -> None:
        self.pebble = pebble_or_skip()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = ["--directory", self.pebble.directory_url, "--ca-file", self.pebble.ca_file]
        self.http01 = ["--http01", f"tcp:{self.pebble.http_port}:interface=127.0.0.1"]

    def txacme(self, command: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """Run a command on the directory and check its exit status."""
        words = command.split()
        result = run_cli(*words, "-C", self.dir, *args)
        self.assertEqual(
            result.returncode,
            expect,
            f"txacme {command} {' '.join(args)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}",
        )
        return result

    def issue(self, *names: str) -> subprocess.CompletedProcess[str]:
        return self.txacme("issue", *self.ca, *self.http01, "--email", "ops@cli.example", *names)

    def status(self, *args: str, expect: int = 0) -> dict[str, Any]:
        result = self.txacme("status", "--json", *args, expect=expect)
        document: dict[str, Any] = json.loads(result.stdout)
        return {row["name"]: row for row in document["certificates"]}


class IssueTests(PebbleCLITestCase):
    def test_issue(self) -> None:
        """
        ``issue`` obtains one certificate per name over http-01, stores it
        (0600, chain verifying to Pebble's root), records the success, and is
        quiet on a pipe: one result line per name, nothing on stderr.
        """
        result = self.issue("one.cli.example", "TWO.cli.example")
        self.assertEqual(result.stderr, "")
        lines = sorted(result.stdout.splitlines())  # names are issued concurrently
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("one.cli.example: obtained, valid until "), lines)
        self.assertTrue(lines[1].startswith("two.cli.example: obtained"), lines)
        roots = self.pebble.roots()
        for name in ("one.cli.example", "two.cli.example"):
            path = os.path.join(self.dir, name + ".pem")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            cert = verify_entry(path, roots, name)
            self.assertIn(f"serial {cert.serial_number:x}", result.stdout)
            record = StateFile.for_directory(self.dir).get(name)
            self.assertIsNone(record.last_error)
            self.assertEqual(record.not_after, cert.not_valid_after_utc)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "client.key")))
        with open(os.path.join(self.dir, STATE_FILENAME), encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("PRIVATE KEY", text)

        path = os.path.join(self.dir, "one.cli.example.pem")
        before = stored_certificate(path)
        again = self.issue("one.cli.example")
        self.assertIn("already has a certificate valid until", again.stdout)
        self.assertEqual(stored_certificate(path), before)

    def test_issue_tls_alpn(self) -> None:
        """``--tls-alpn`` answers tls-alpn-01 on a listener of its own."""
        self.txacme(
            "issue",
            *self.ca,
            "--tls-alpn",
            f"tcp:{self.pebble.tls_port}:interface=127.0.0.1",
            "alpn.cli.example",
        )
        verify_entry(
            os.path.join(self.dir, "alpn.cli.example.pem"), self.pebble.roots(), "alpn.cli.example"
        )

    def test_failure_recorded(self) -> None:
        """
        A name Pebble cannot validate (nothing listens where it connects)
        exits 1 naming the CA's problem, leaves the empty entry, and records
        the error for ``status``.
        """
        result = self.txacme(
            "issue",
            *self.ca,
            "--http01",
            "tcp:0:interface=127.0.0.1",
            "lost.cli.example",
            expect=1,
        )
        self.assertIn("lost.cli.example: failed: connection:", result.stderr)
        with open(os.path.join(self.dir, "lost.cli.example.pem"), "rb") as f:
            self.assertEqual(f.read(), b"")
        record = StateFile.for_directory(self.dir).get("lost.cli.example")
        assert record.last_error is not None
        self.assertEqual(record.last_error.problem, "urn:ietf:params:acme:error:connection")
        self.assertEqual(record.last_error.attempt, 1)


class StatusTests(PebbleCLITestCase):
    def test_status_json(self) -> None:
        """
        ``status --json`` reports each entry: names, issuer, key type, serial,
        validity, the renewal time (a third of the lifetime before expiry)
        and why, and the last error; ``--check`` exits 3 while one needs
        attention.
        """
        self.issue("ok.cli.example")
        self.txacme(
            "issue",
            *self.ca,
            "--http01",
            "tcp:0:interface=127.0.0.1",
            "bad.cli.example",
            "--key-type",
            "rsa2048",
            expect=1,
        )
        rows = self.status()
        self.assertEqual(sorted(rows), ["bad.cli.example", "ok.cli.example"])
        ok = rows["ok.cli.example"]
        cert = stored_certificate(os.path.join(self.dir, "ok.cli.example.pem"))
        self.assertEqual(ok["state"], "ok")
        self.assertFalse(ok["attention"])
        self.assertEqual(ok["names"], ["ok.cli.example"])
        self.assertTrue(ok["issuer"].startswith("Pebble Intermediate CA"), ok["issuer"])
        self.assertEqual(ok["key_type"], "ec256")
        self.assertEqual(ok["serial"], f"{cert.serial_number:x}")
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        self.assertEqual(parse(ok["not_after"]), not_after)
        self.assertEqual(parse(ok["not_before"]), not_before)
        expected = not_after - (not_after - not_before) / 3
        self.assertLess(abs((parse(ok["renewal_at"]) - expected).total_seconds()), 1)
        self.assertEqual(ok["renewal_reason"], "lifetime")
        self.assertEqual(ok["renewal_source"], "policy")
        self.assertIs(ok["due"], False)
        self.assertIsNone(ok["last_error"])
        self.assertIsNotNone(ok["last_success"])

        bad = rows["bad.cli.example"]
        self.assertEqual(bad["state"], "missing")
        self.assertTrue(bad["attention"])
        self.assertEqual(bad["renewal_reason"], "missing")
        self.assertIs(bad["due"], True)
        self.assertEqual(bad["last_error"]["problem"], "urn:ietf:params:acme:error:connection")
        self.assertIn("bad.cli.example", bad["last_error"]["detail"])
        self.assertNotIn("not_after", bad)

        self.status("--check", expect=cli.EXIT_ATTENTION)
        self.assertEqual(list(self.status("ok.cli.example", "--check")), ["ok.cli.example"])

        table = self.txacme("status").stdout.splitlines()
        self.assertEqual(table[0].split()[:3], ["NAME", "STATE", "ISSUER"])
        self.assertTrue(table[1].startswith("bad.cli.example  missing"), table)
        self.assertIn("connection:", table[1])
        self.assertTrue(table[2].startswith("ok.cli.example   ok"), table)

    def test_status_damaged_and_empty(self) -> None:
        """A damaged file shows up as ``damaged`` (not silently skipped)."""
        self.assertIn("no certificate entries", self.txacme("status").stdout)
        with open(os.path.join(self.dir, "broken.cli.example.pem"), "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        rows = self.status("--check", expect=cli.EXIT_ATTENTION)
        self.assertEqual(rows["broken.cli.example"]["state"], "damaged")
        self.assertIn("broken.cli.example.pem", rows["broken.cli.example"]["error"])


class RenewRevokeTests(PebbleCLITestCase):
    def test_renew(self) -> None:
        """
        ``renew`` leaves certificates that are not due alone (and prints
        nothing on a pipe); ``--force`` replaces them, here over tls-alpn-01.
        """
        self.issue("renew.cli.example")
        path = os.path.join(self.dir, "renew.cli.example.pem")
        first = stored_certificate(path)
        result = self.txacme("renew", *self.ca, *self.http01)
        self.assertEqual((result.stdout, result.stderr), ("", ""))
        self.assertEqual(stored_certificate(path), first)

        tls = ["--tls-alpn", f"tcp:{self.pebble.tls_port}:interface=127.0.0.1"]
        result = self.txacme("renew", *self.ca, *tls, "--force", "renew.cli.example")
        second = verify_entry(path, self.pebble.roots(), "renew.cli.example")
        self.assertNotEqual(second.serial_number, first.serial_number)
        self.assertIn("renew.cli.example: obtained", result.stdout)
        self.assertIn(f"serial {second.serial_number:x}", result.stdout)

    def test_revoke(self) -> None:
        """
        ``revoke`` revokes at the CA (a second revocation is refused as
        ``alreadyRevoked``), ``status`` then flags the certificate, and a
        plain ``renew`` replaces it.
        """
        self.issue("revoke.cli.example")
        path = os.path.join(self.dir, "revoke.cli.example.pem")
        cert = stored_certificate(path)
        serial = f"{cert.serial_number:x}"
        result = self.txacme("revoke", *self.ca, "revoke.cli.example", "--reason", "superseded")
        self.assertEqual(
            result.stdout.strip(), f"revoke.cli.example: revoked (serial {serial}, superseded)"
        )
        again = self.txacme(
            "revoke", *self.ca, "revoke.cli.example", "--certificate-key", "--reason", "1"
        )
        self.assertIn("already revoked", again.stdout)
        row = self.status("--check", expect=cli.EXIT_ATTENTION)["revoke.cli.example"]
        self.assertEqual(row["state"], "revoked")
        self.assertEqual(row["revoked"]["serial"], serial)

        self.txacme("renew", *self.ca, *self.http01)
        self.assertNotEqual(stored_certificate(path).serial_number, cert.serial_number)
        self.assertEqual(self.status("--check")["revoke.cli.example"]["state"], "ok")


class AccountTests(PebbleCLITestCase):
    def test_account_lifecycle(self) -> None:
        """
        ``account create`` makes the key and account, ``show`` finds it,
        ``rollover`` gives it a new key the CA accepts, ``deactivate`` needs
        ``--yes`` and retires the key.
        """
        result = run_cli("account", "show", "-C", self.dir, *self.ca)
        self.assertEqual(result.returncode, cli.EXIT_FAILURE)
        self.assertIn("account create", result.stderr)

        created = self.txacme("account create", *self.ca, "--email", "ops@cli.example")
        self.assertIn("created", created.stdout)
        key_path = os.path.join(self.dir, "client.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        shown = json.loads(self.txacme("account show", *self.ca, "--json").stdout)
        self.assertEqual(shown["status"], "valid")
        self.assertEqual(shown["contact"], ["mailto:ops@cli.example"])
        self.assertEqual(shown["key_type"], "ec256")
        with open(key_path, "rb") as f:
            old_key = f.read()

        rolled = self.txacme("account rollover", *self.ca, "--account-key-type", "ec384")
        self.assertIn(shown["url"], rolled.stdout)
        with open(key_path, "rb") as f:
            self.assertNotEqual(f.read(), old_key)
        self.assertFalse(os.path.exists(key_path + ".new"))
        after = json.loads(self.txacme("account show", *self.ca, "--json").stdout)
        self.assertEqual(after["url"], shown["url"])
        self.assertEqual(after["key_type"], "ec384")
        self.assertNotEqual(after["thumbprint"], shown["thumbprint"])
        # The account still works with the new key: it can order certificates.
        self.issue("rolled.cli.example")

        refused = self.txacme("account deactivate", *self.ca, expect=cli.EXIT_USAGE)
        self.assertIn("--yes", refused.stderr)
        self.txacme("account deactivate", *self.ca, "--yes")
        self.assertFalse(os.path.exists(key_path))
        self.assertTrue(os.path.exists(key_path + ".deactivated"))

    def test_eab(self) -> None:
        """A CA that requires external account binding gets it from --eab-* options."""
        try:
            pebble = start_pebble(eab=True)
        except PebbleUnavailable as e:
            raise SkipTest(str(e))
        self.addCleanup(pebble.stop)
        ca = ["--directory", pebble.directory_url, "--ca-file", pebble.ca_file]
        missing = self.txacme("account create", *ca, expect=cli.EXIT_USAGE)
        self.assertIn("external account binding", missing.stderr)
        hmac_file = os.path.join(self.dir, "..", "eab.hmac")
        with open(hmac_file, "w") as f:
            f.write(EAB_KEYS["kid-1"] + "\n")
        self.txacme("account create", *ca, "--eab-kid", "kid-1", "--eab-hmac-file", hmac_file)
        shown = json.loads(self.txacme("account show", *ca, "--json").stdout)
        self.assertEqual(shown["status"], "valid")


class ARITests(TestCase):
    """
    Against txacme's own test CA (in a child process), which offers ARI
    (RFC 9773) windows that the test moves.
    """

    timeout = 300

    def setUp(self) -> None:
        from tests.harness.pebble import free_port
        from txacme.testca import TestCAProcess

        self.http_port = free_port()
        self.ca_process = TestCAProcess.start(http01_port=self.http_port, retry_after=0)
        self.addCleanup(self.ca_process.stop)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = [
            "--directory",
            self.ca_process.directory_url,
            "--ca-file",
            self.ca_process.https_ca_file,
        ]
        self.http01 = ["--http01", f"tcp:{self.http_port}:interface=127.0.0.1"]

    def txacme(self, command: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        result = run_cli(*command.split(), "-C", self.dir, *args)
        self.assertEqual(result.returncode, expect, (result.stdout, result.stderr))
        return result

    def test_ari_window(self) -> None:
        """
        With CA options, ``status`` plans by the CA's window; when the CA moves
        the window into the past, a plain ``renew`` replaces the certificate
        and tells the CA which one it replaces.
        """
        self.txacme("issue", *self.ca, *self.http01, "ari.cli.example")
        path = os.path.join(self.dir, "ari.cli.example.pem")
        first = stored_certificate(path)
        now = datetime.now(timezone.utc)
        start, end = now + timedelta(days=20), now + timedelta(days=21)
        self.ca_process.set_renewal_window(first, start, end)

        row = json.loads(self.txacme("status", "--json", *self.ca).stdout)["certificates"][0]
        self.assertEqual((row["renewal_reason"], row["renewal_source"]), ("ari", "ari"))
        self.assertTrue(start <= parse(row["renewal_at"]) <= end, row["renewal_at"])
        offline = json.loads(self.txacme("status", "--json").stdout)["certificates"][0]
        self.assertEqual(offline["renewal_source"], "policy")

        self.assertEqual(self.txacme("renew", *self.ca, *self.http01).stdout, "")
        self.assertEqual(stored_certificate(path), first)

        self.ca_process.set_renewal_window(
            first, now - timedelta(hours=2), now - timedelta(hours=1)
        )
        self.txacme("renew", *self.ca, *self.http01)
        second = stored_certificate(path)
        self.assertNotEqual(second.serial_number, first.serial_number)
        status = self.ca_process.certificate_status(first)
        self.assertIsNotNone(status["replaced_by"], status)

        self.txacme("revoke", *self.ca, "ari.cli.example", "--reason", "keyCompromise")
        revoked = self.ca_process.certificate_status(second)
        self.assertTrue(revoked["revoked"], revoked)
        self.assertEqual(revoked["revocation_reason"], 1)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class UsageErrorTests(TestCase):
    """Bad input exits 2 and names what was wrong, before any network use."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "known.example.pem"), "w"):
            pass

    def check(self, args: list[str], code: int, *needles: str) -> None:
        result = run_cli(*args)
        self.assertEqual(result.returncode, code, (args, result.stdout, result.stderr))
        for needle in needles:
            self.assertIn(needle, result.stderr, args)
        self.assertEqual(result.stdout, "", args)

    def test_usage_errors(self) -> None:
        ca = ["--directory", "https://ca.invalid/dir"]
        d = ["-C", self.dir]
        cases: list[tuple[list[str], str]] = [
            (["status"], "--cert-dir DIR"),
            (["status", "-C", self.dir + "/nope"], "not an existing directory"),
            (["status", *d, "unknown.example"], "NAME 'unknown.example': no entry"),
            (["status", *d, "bad_name.example"], "NAME 'bad_name.example'"),
            (["issue", *d, "a.example", "--http01", "80"], "choose the CA"),
            (["issue", *d, "a.example", *ca], "--http01 tcp:80, --tls-alpn tcp:443 or --dns"),
            (["issue", *d, "a..example", *ca, "--http01", "80"], "NAME 'a..example': empty label"),
            (
                ["issue", *d, "a.example", *ca, "--http01", "80", "--key-type", "rsa1024"],
                "--key-type 'rsa1024'",
            ),
            (["issue", *d, "a.example", *ca, "--http01", "bogus:1"], "--http01 'bogus:1'"),
            (
                ["issue", *d, "a.example", *ca, "--http01", "80", "--concurrency", "0"],
                "--concurrency 0",
            ),
            (
                ["issue", *d, "a.example", "--directory", "http://ca.invalid/", "--http01", "80"],
                "--directory 'http://ca.invalid/'",
            ),
            (
                ["issue", *d, "a.example", *ca, "--ca-file", "/no/such.pem", "--http01", "80"],
                "--ca-file '/no/such.pem'",
            ),
            (
                ["issue", *d, "a.example", *ca, "--email", "nobody", "--http01", "80"],
                "--email 'nobody'",
            ),
            (
                ["issue", *d, "a.example", *ca, "--eab-kid", "k", "--http01", "80"],
                "--eab-kid and --eab-hmac-file",
            ),
            (
                [
                    "issue",
                    *d,
                    "a.example",
                    *ca,
                    "--eab-kid",
                    "k",
                    "--eab-hmac-file",
                    "/no/file",
                    "--http01",
                    "80",
                ],
                "--eab-hmac-file '/no/file'",
            ),
            (["issue", *d, "a.example", *ca, "--dns", "carrier-pigeon"], "--dns carrier-pigeon"),
            (
                ["issue", *d, "a.example", *ca, "--dns", "rfc2136", "--dns-option", "dns_server"],
                "--dns-option 'dns_server'",
            ),
            (
                ["issue", *d, "a.example", *ca, "--dns", "rfc2136", "--dns-option", "colour=red"],
                "colour",
            ),
            (
                ["issue", *d, "a.example", *ca, "--http01", "80", "--dns-option", "a=b"],
                "--dns-option needs --dns",
            ),
            (["revoke", *d, "known.example", *ca, "--reason", "boredom"], "--reason 'boredom'"),
            (["revoke", *d, "known.example", *ca], "holds no certificate"),
            (["revoke", *d, "other.example", *ca], "NAME 'other.example'"),
            (["status", *d, "--timeout", "-1", *ca], "--timeout -1.0"),
        ]
        for args, needle in cases:
            self.check(args, cli.EXIT_USAGE, needle)

    def test_argparse_errors(self) -> None:
        """argparse's own errors exit 2 too, with its usage line."""
        self.check(["frobnicate"], cli.EXIT_USAGE, "invalid choice")
        self.check(["account", "-C", self.dir], cli.EXIT_USAGE, "ACTION")
        self.check(["status", "--le", "--lets", "-C", self.dir], cli.EXIT_USAGE, "not allowed")

    def test_unreachable_ca(self) -> None:
        """A CA nobody answers for is a temporary failure (4) naming the URL."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
            port = s.getsockname()[1]
            url = f"https://127.0.0.1:{port}/dir"
            result = run_cli("renew", "-C", self.dir, "--directory", url, "--http01", "tcp:0")
        self.assertEqual(result.returncode, cli.EXIT_TEMPORARY, result.stderr)
        self.assertIn(url, result.stderr)
        self.assertIn("try again later", result.stderr)

    def test_port_in_use(self) -> None:
        """A challenge listener that cannot listen fails (1) naming the option."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            result = run_cli(
                "issue",
                "-C",
                self.dir,
                "new.example",
                "--directory",
                "https://ca.invalid/",
                "--http01",
                f"tcp:{port}:interface=127.0.0.1",
            )
        self.assertEqual(result.returncode, cli.EXIT_FAILURE, result.stderr)
        self.assertIn(f"--http01 tcp:{port}:interface=127.0.0.1: cannot listen", result.stderr)

    def test_help_and_version(self) -> None:
        result = run_cli("--help")
        self.assertEqual(result.returncode, 0)
        for command in ("status", "issue", "renew", "revoke", "account"):
            self.assertIn(command, result.stdout)
        result = run_cli("--version")
        self.assertEqual(result.stdout.strip(), f"txacme {txacme.__version__}")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class UITests(TestCase):
    """Progress is drawn on a terminal only, and never mixes with results."""

    def test_terminal_progress(self) -> None:
        out, err, clock = io.StringIO(), FakeTerminal(), Clock()
        ui = cli.UI(out, err, clock=clock)
        self.assertTrue(ui.progress_enabled)
        ui.step("a.example", "ordering")
        clock.advance(3)
        self.assertIn("a.example: ordering (3s)", err.getvalue())
        ui.result("a.example: obtained")
        self.assertEqual(out.getvalue(), "a.example: obtained\n")
        ui.done("a.example")
        self.assertTrue(err.getvalue().endswith("\r\x1b[K"), repr(err.getvalue()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_pipe_is_quiet(self) -> None:
        out, err, clock = io.StringIO(), io.StringIO(), Clock()
        ui = cli.UI(out, err, clock=clock)
        self.assertFalse(ui.progress_enabled)
        ui.step("a.example", "ordering")
        ui.hint("nothing to do")
        ui.done("a.example")
        ui.result("a.example: obtained")
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(out.getvalue(), "a.example: obtained\n")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_quiet(self) -> None:
        out, err = io.StringIO(), FakeTerminal()
        ui = cli.UI(out, err, quiet=True, clock=Clock())
        ui.result("x")
        ui.error("y")
        self.assertEqual((out.getvalue(), err.getvalue()), ("", "y\n"))


class ExitCodeTests(TestCase):
    def test_classification(self) -> None:
        """Temporary trouble exits 4, the CA's refusals 1, bad input 2."""
        self.assertEqual(cli.exit_code(ACMETimeout("slow")), cli.EXIT_TEMPORARY)
        self.assertEqual(
            cli.exit_code(RateLimited("urn:ietf:params:acme:error:rateLimited")),
            cli.EXIT_TEMPORARY,
        )
        self.assertEqual(cli.exit_code(ServerInternal()), cli.EXIT_TEMPORARY)
        self.assertEqual(cli.exit_code(ConnectionRefusedError()), cli.EXIT_FAILURE)
        self.assertEqual(cli.exit_code(IssuanceFailed("invalid")), cli.EXIT_FAILURE)
        self.assertEqual(cli.exit_code(cli.UsageError("bad")), cli.EXIT_USAGE)
        self.assertEqual(cli.combine([0, 4, 0]), cli.EXIT_TEMPORARY)
        self.assertEqual(cli.combine([4, 1]), cli.EXIT_FAILURE)
        self.assertEqual(cli.combine([0, 0]), cli.EXIT_OK)

    def test_reasons(self) -> None:
        self.assertEqual(cli.revocation_reason("keyCompromise"), (1, "keyCompromise"))
        self.assertEqual(cli.revocation_reason("key-compromise"), (1, "keyCompromise"))
        self.assertEqual(cli.revocation_reason("4"), (4, "superseded"))
        self.assertRaises(cli.UsageError, cli.revocation_reason, "7")


class StateFileTests(TestCase):
    def test_round_trip_and_damage(self) -> None:
        """Records survive a round trip; a damaged file reads as empty."""
        from txacme.reporting.state import ErrorRecord

        directory = self.mktemp()
        os.makedirs(directory)
        state = StateFile.for_directory(directory)
        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        state.record_failure(
            "a.example",
            ErrorRecord(
                at=now,
                problem="urn:ietf:params:acme:error:dns",
                detail="x" * 5000,
                attempt=2,
                retry_at=now + timedelta(minutes=10),
            ),
        )
        record = state.get("a.example")
        assert record.last_error is not None
        self.assertEqual(record.last_error.code, "dns")
        self.assertEqual(record.last_error.attempt, 2)
        self.assertEqual(len(record.last_error.detail), 1000)
        self.assertEqual(stat.S_IMODE(os.stat(state.path).st_mode), 0o600)
        state.record_success("a.example", now, now + timedelta(days=90))
        self.assertIsNone(state.get("a.example").last_error)
        with open(state.path, "w") as f:
            f.write("{not json")
        self.assertEqual(state.read(), {})


class StateRecorderTests(TestCase):
    """The state file follows the issuing service's events, in batched writes."""

    def test_records_events(self) -> None:
        from txacme.errors import IssuanceFailed, RateLimited
        from txacme.issuing.service import AcmeIssuingService
        from txacme.reporting.state import StateRecorder
        from txacme.testing import FakeClient, FakeIssuer, MemoryStore

        directory = self.mktemp()
        os.makedirs(directory)
        state = StateFile.for_directory(directory)
        writes: list[list[str]] = []
        original = state.update

        def counting_update(changes: Any) -> None:
            writes.append(sorted(changes))
            original(changes)

        state.update = counting_update  # type: ignore[method-assign]
        clock = Clock()
        clock.advance(1_800_000_000)
        issuer = FakeIssuer(clock.seconds)
        service = AcmeIssuingService(
            MemoryStore({"a.example": [], "b.example": []}),
            None,
            clock,
            [],
            client=FakeClient(),
            issue=issuer,
        )
        detach = StateRecorder(state, clock).attach(service)
        service.startService()
        a, b = sorted(issuer.calls, key=lambda call: call.names)
        issued = a.succeed()
        b.fail(
            IssuanceFailed(
                "no",
                RateLimited("urn:ietf:params:acme:error:rateLimited", "too many", retry_after=7200),
            )
        )
        self.assertEqual(writes, [])  # nothing written inside the burst
        clock.advance(0)
        self.assertEqual(writes, [["a.example", "b.example"]])

        records = state.read()
        a_record, b_record = records["a.example"], records["b.example"]
        self.assertEqual(a_record.not_after, issued.not_after)
        self.assertIsNotNone(a_record.last_success)
        self.assertIsNone(a_record.last_error)
        self.assertEqual(a_record.scheduled_reason, "lifetime")
        error = b_record.last_error
        assert error is not None
        self.assertEqual((error.code, error.detail, error.attempt), ("rateLimited", "too many", 1))
        self.assertTrue(error.emergency)
        assert error.retry_at is not None
        self.assertGreaterEqual(error.retry_at.timestamp(), clock.seconds() + 7200)
        service.stopService()
        detach()
        self.assertEqual(clock.getDelayedCalls(), [])


class StoreURLTests(PebbleCLITestCase):
    """``--store URL`` keeps the certificates in a real PostgreSQL database."""

    def setUp(self) -> None:
        super().setUp()
        from tests.harness.postgres import PostgresUnavailable, shared_postgres

        try:
            self.postgres = shared_postgres()
        except PostgresUnavailable as e:
            raise SkipTest(str(e))
        self.url = self.postgres.new_database()
        self.addCleanup(self.postgres.drop_database, self.url)
        from txacme.stores.postgres import KeyEncryption

        self.key_file = os.path.abspath(self.mktemp())
        KeyEncryption.generate_key_file(self.key_file)
        self.store = ["--store", self.url, "--store-key-file", self.key_file]

    def test_issue_and_status_through_the_database(self) -> None:
        """
        ``issue --store`` writes the certificate (its key sealed) to the
        database, not the directory; ``status --store`` reads it back, from
        this cert dir and from another one; the processes exit (the store's
        threads are stopped).
        """
        name = "db.cli.example"
        result = self.issue(name, *self.store)
        self.assertTrue(result.stdout.startswith(f"{name}: obtained"), result.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.dir, name + ".pem")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "client.key")))
        self.assertIsNone(StateFile.for_directory(self.dir).get(name).last_error)

        [(stored, key_data, certificates)] = self.postgres.execute(
            self.url, "SELECT name, key_data, certificates FROM txacme_certificates"
        )
        self.assertEqual(stored, name)
        self.assertNotIn(b"PRIVATE KEY", bytes(key_data))  # sealed with the key file
        leaf = x509.load_pem_x509_certificate(certificates.encode("ascii"))

        rows = self.status(*self.store)
        self.assertEqual(list(rows), [name])
        self.assertEqual(rows[name]["state"], "ok")
        self.assertEqual(rows[name]["serial"], f"{leaf.serial_number:x}")
        self.assertIsNotNone(rows[name]["last_success"])

        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        seen = run_cli("status", "--json", "-C", other, *self.store)
        self.assertEqual(seen.returncode, 0, seen.stderr)
        document = json.loads(seen.stdout)
        self.assertEqual(document["store"], self.url)
        [row] = document["certificates"]
        self.assertEqual((row["name"], row["serial"]), (name, f"{leaf.serial_number:x}"))
        self.assertIsNone(row["last_success"])  # the history stays in the first cert dir
        self.assertEqual(os.listdir(other), [])

        # Without the key file the sealed entry cannot be read: it is left out.
        blind = run_cli("status", "--json", "-C", other, "--store", self.url)
        self.assertEqual(blind.returncode, 0, blind.stderr)
        self.assertEqual(json.loads(blind.stdout)["certificates"], [])

        again = self.issue(name, *self.store)
        self.assertIn("already has a certificate valid until", again.stdout)

    def test_environment_variables(self) -> None:
        """``$TXACME_STORE`` and ``$TXACME_STORE_KEY_FILE`` are the defaults."""
        self.issue("env.cli.example", *self.store)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TXACME_")}
        env.update(
            PYTHONPATH=os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])]),
            TXACME_CERT_DIR=self.dir,
            TXACME_STORE=self.url,
            TXACME_STORE_KEY_FILE=self.key_file,
        )
        env.pop("TERM", None)
        result = subprocess.run(
            [sys.executable, "-m", "txacme", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        rows = json.loads(result.stdout)["certificates"]
        self.assertEqual([row["name"] for row in rows], ["env.cli.example"])


class StoreUsageErrorTests(TestCase):
    """A ``--store`` that cannot be used exits 2 naming it, before any work."""

    def test_bad_store(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key_file = os.path.join(directory, "store.key")
        with open(key_file, "w") as f:
            f.write("not a key\n")
        missing = os.path.join(directory, "no-such-dir")
        cases: list[tuple[list[str], list[str]]] = [
            (["--store", "bogus://db.example/x"], ["--store", "'bogus://db.example/x'"]),
            (["--store", "bogus://u:hunter2@db.example/x"], ["bogus://u:***@db.example/x"]),
            (["--store", missing], ["--store", missing]),
            (["--store", directory, "--store-key-file", key_file], ["--store", "key_file"]),
            (["--store-key-file", key_file], ["--store-key-file", "needs --store"]),
        ]
        for args, needles in cases:
            result = run_cli("status", "-C", directory, *args)
            self.assertEqual(result.returncode, cli.EXIT_USAGE, (args, result.stderr))
            self.assertEqual(result.stdout, "", args)
            for needle in needles:
                self.assertIn(needle, result.stderr, args)
            self.assertNotIn("hunter2", result.stderr)

    def test_store_directory(self) -> None:
        """A directory ``--store`` holds the entries; ``-C`` keeps only the state."""
        cert_dir = os.path.abspath(self.mktemp())
        store_dir = os.path.abspath(self.mktemp())
        os.makedirs(cert_dir)
        os.makedirs(store_dir)
        with open(os.path.join(store_dir, "elsewhere.example.pem"), "w"):
            pass
        result = run_cli("status", "--json", "-C", cert_dir, "--store", "file://" + store_dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        document = json.loads(result.stdout)
        self.assertEqual(document["store"], store_dir)
        self.assertEqual(
            [(r["name"], r["state"]) for r in document["certificates"]],
            [("elsewhere.example", "missing")],
        )
        plain = json.loads(run_cli("status", "--json", "-C", cert_dir).stdout)
        self.assertEqual((plain["store"], plain["certificates"]), (None, []))
