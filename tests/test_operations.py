"""
What an operator uses day to day (issue 14 points 3-6, issue 17 point 6): deploy
hooks, the http-01 listener's redirect to HTTPS and its answers to other
methods and large bodies, a change of CA noticed, and the command line's
``status``, ``account create``, ``TXACME_CA_FILE``, redaction and usage errors.

The real parts run for real: Pebble issues, ``twistd`` and ``txacme`` run as
subprocesses, HTTP requests go to the listener over loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent
from twisted.trial.unittest import SkipTest, TestCase

from tests.harness import chains
from tests.harness.logcapture import captured_logs
from tests.harness.pebble import Pebble, PebbleUnavailable, pebble_or_skip, start_pebble
from tests.harness.processes import stop_process
from tests.harness.twistd import quote, start_web
from tests.test_cli import SRC, run_cli, stored_certificate
from txacme.certificates import check_ca_file
from txacme.cli import commands as cli
from txacme.config.endpoint import parse_endpoint_string_parts
from txacme.errors import ConfigurationError
from txacme.issuing.hooks import DeployHook, parse_hook_command
from txacme.issuing.provenance import ISSUERS_FILENAME, IssuerRecords
from txacme.stores.url import redact_url

# Records the hook's variables (one JSON line per run) in argv[1]; the other
# TXACME_* variables of the test run (TXACME_NO_SKIPS...) are inherited, not the hook's.
HOOK_SCRIPT = """\
import json, os, sys
HOOK = ("TXACME_NAME", "TXACME_NAMES", "TXACME_EVENT", "TXACME_PEM")
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k in HOOK}) + "\\n")
print("hook ran for", os.environ["TXACME_NAME"])
"""


def run_with_env(extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m txacme ARGS`` with this checkout's txacme and the ``extra`` environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXACME_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("TERM", None)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "txacme", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def hook_runs(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_hook(directory: Path) -> tuple[str, Path]:
    """The hook command line and the file it records into."""
    script = directory / "record-env.py"
    script.write_text(HOOK_SCRIPT)
    out = directory / "hook-runs.jsonl"
    return f"{sys.executable} {script} {out}", out


def wait_for(predicate: Any, what: str, timeout: float = 60, log: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{log() if log else ''}")


def http_request(
    port: int, method: str, path: str, host: str | None = "www.ops.example", **kw: Any
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = dict(kw.pop("headers", {}))
    if host is not None:
        headers["Host"] = host
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders(kw.pop("body", None))
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


# ---------------------------------------------------------------------------
# Deploy hooks, in process with the real reactor
# ---------------------------------------------------------------------------


class DeployHookTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    @inlineCallbacks
    def test_environment_and_output(self) -> Any:
        """The hook gets every variable; its output is kept; no shell is involved."""
        command, out = write_hook(self.dir)
        hook = DeployHook(
            reactor,
            parse_hook_command(command),
            pem_path=lambda name: f"/srv/certs/{name}.pem",
        )
        result = yield hook.run("a.example", ["www.a.example", "a.example"], "renewed")
        self.assertTrue(result.succeeded, result)
        self.assertEqual(result.output, b"hook ran for a.example\n")
        [env] = hook_runs(out)
        self.assertEqual(
            env,
            {
                "TXACME_NAME": "a.example",
                "TXACME_NAMES": "a.example www.a.example",
                "TXACME_EVENT": "renewed",
                "TXACME_PEM": "/srv/certs/a.example.pem",
            },
        )
        # Shell syntax is an argument like any other: no expansion, no pipe.
        marker = self.dir / "marker"
        hook = DeployHook(reactor, parse_hook_command(f"echo $HOME ; touch {marker}"))
        result = yield hook.run("a.example", ["a.example"], "obtained")
        self.assertEqual(result.output, f"$HOME ; touch {marker}\n".encode())
        self.assertFalse(marker.exists())

    @inlineCallbacks
    def test_timeout_kills_the_process_group(self) -> Any:
        """After the time limit the hook and what it started are killed (SIGKILL)."""
        pid_file = self.dir / "child.pid"
        argv = ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"]
        hook = DeployHook(reactor, argv, timeout=0.5)
        started = time.monotonic()
        result = yield hook.run("slow.example", ["slow.example"], "obtained")
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(result.timed_out)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertFalse(result.succeeded)
        child = int(pid_file.read_text())
        wait_for(lambda: not _alive(child), "the hook's child to die", timeout=5)

    @inlineCallbacks
    def test_failure_logged(self) -> Any:
        """A failing hook is one error line with its exit status and output."""
        with captured_logs() as events:
            hook = DeployHook(reactor, ["sh", "-c", "echo broken >&2; exit 3"])
            result = yield hook.run("x.example", ["x.example"], "obtained")
        self.assertEqual(result.exit_code, 3)
        lines = [e for e in events if e.get("event") == "deploy_hook"]
        self.assertEqual(len(lines), 1, events)
        self.assertEqual(
            formatEvent(lines[0]), "deploy hook for x.example failed (exit status 3): broken"
        )

    def test_subscriber_never_waits(self) -> None:
        """The service's callback starts the hook and returns at once."""
        from datetime import datetime, timezone  # noqa: PLC0415

        from txacme.issuing.events import Obtained, Obtaining  # noqa: PLC0415

        hook = DeployHook(reactor, ["sleep", "30"], timeout=30)
        started = time.monotonic()
        hook.subscriber(Obtaining("n.example", ("n.example",), "lifetime", 1))
        hook.subscriber(Obtained("n.example", ("n.example",), datetime.now(timezone.utc), 1.0))
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(len(hook.running), 1)
        [running] = hook.running
        wait_for(lambda: _children_named("sleep"), "the hook process", timeout=10)
        for pid in _children_named("sleep"):  # end it now rather than after 30 s
            os.kill(pid, signal.SIGKILL)
        return running

    def test_bad_commands(self) -> None:
        """Bad hook commands are refused at configuration time, in one line."""
        for text, needle in [
            ("", "names no command"),
            ("'unbalanced", "No closing quotation"),
            ("no-such-program-xyz --now", "not an executable program on PATH"),
            ("/no/such/dir/prog", "'/no/such/dir/prog' is not an executable program"),
        ]:
            with self.assertRaisesRegex(ConfigurationError, needle):
                parse_hook_command(text)


def _children_named(name: str) -> list[int]:
    """This process's children named ``name`` (the hook launcher execs the command)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split()
        except OSError:
            continue
        if fields[1] == f"({name})" and int(fields[3]) == os.getpid():
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" not in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------
# Endpoint keywords and shared checks
# ---------------------------------------------------------------------------


def parse(description: str) -> Any:
    from twisted.internet.endpoints import _parse  # noqa: PLC0415

    prefix, rest = description.split(":", 1)
    args, kwargs = _parse(rest)
    return parse_endpoint_string_parts(
        prefix, "https://ca.example/dir" if prefix == "le" else None, args, kwargs
    )


class KeywordTests(TestCase):
    def test_operations_keywords(self) -> None:
        config = parse(
            "le:/c:tcp:443:challenge=http-01:http01=tcp\\:80:http01_redirect=yes"
            ":deploy_hook=sh -c 'systemctl reload nginx':deploy_hook_timeout=5"
            ":preferred_chain=ISRG Root X1"
        )
        self.assertEqual(config.deploy_hook, ("sh", "-c", "systemctl reload nginx"))
        self.assertEqual(config.deploy_hook_timeout, 5.0)
        self.assertEqual(config.http01_redirect, 443)
        self.assertEqual(config.preferred_chain, "ISRG Root X1")
        self.assertEqual(config.sub_endpoint, "tcp:443")
        port = parse("le:/c:tcp:443:challenge=http-01:http01=tcp\\:80:http01_redirect=8443")
        self.assertEqual(port.http01_redirect, 8443)
        self.assertIsNone(parse("le:/c:tcp:443").http01_redirect)

    def test_operations_keyword_errors(self) -> None:
        for description, needle in [
            ("le:/c:tcp:443:http01_redirect=yes", "needs the http01="),
            (
                "le:/c:tcp:443:challenge=http-01:http01=tcp\\:80:http01_redirect=maybe",
                "http01_redirect='maybe' must be yes or no",
            ),
            (
                "le:/c:tcp:443:challenge=http-01:http01=tcp\\:80:http01_redirect=70000",
                "the HTTPS port",
            ),
            ("le:/c:tcp:443:deploy_hook=no-such-program-xyz", "not an executable program"),
            ("le:/c:tcp:443:deploy_hook_timeout=5", "without deploy_hook="),
            (
                "le:/c:tcp:443:deploy_hook=true:deploy_hook_timeout=0",
                "deploy_hook_timeout='0' must be above 0",
            ),
            ("le:/c:tcp:443:ca_file=/etc/passwd", "ca_file='/etc/passwd' holds no PEM"),
            ("le:/c:tcp:443:ca_file=/no/such.pem", "ca_file='/no/such.pem' cannot be read"),
        ]:
            with self.assertRaisesRegex(ConfigurationError, needle, msg=description):
                parse(description)

    def test_ca_file_shared_check(self) -> None:
        """One check for the endpoint and the CLI: a readable file with a PEM certificate."""
        with self.assertRaisesRegex(ConfigurationError, "^--ca-file '/etc/passwd' holds no PEM"):
            check_ca_file("/etc/passwd", "--ca-file")
        with self.assertRaisesRegex(ConfigurationError, "is a directory"):
            check_ca_file("/etc", "--ca-file")
        bad = Path(self.mktemp())
        bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with self.assertRaisesRegex(ConfigurationError, "does not parse"):
            check_ca_file(str(bad))

    def test_redaction(self) -> None:
        """Every form of a PostgreSQL password is hidden."""
        for url in [
            "postgresql://txacme:s3cret@db.example/certs",
            "postgresql://db.example/certs?password=s3cret&sslmode=require",
            "postgresql://db.example/certs?sslmode=require&Password=s3cret",
            "host=db.example password=s3cret dbname=certs",
            "host=db.example password = 's3 cret' dbname=certs",
        ]:
            shown = redact_url(url)
            self.assertNotIn("s3", shown, url)
            self.assertIn("***", shown, url)
        self.assertEqual(redact_url("/srv/certs"), "/srv/certs")


# ---------------------------------------------------------------------------
# The CLI against Pebble
# ---------------------------------------------------------------------------


class CLIOperationsTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.pebble = pebble_or_skip()
        self.work = Path(tempfile.mkdtemp(prefix="txacme-ops-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.dir = self.work / "certs"
        self.dir.mkdir()
        self.ca = ["--directory", self.pebble.directory_url, "--ca-file", self.pebble.ca_file]
        self.http01 = ["--http01", f"tcp:{self.pebble.http_port}:interface=127.0.0.1"]

    def txacme(
        self, *args: str, expect: int = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = run_with_env(env or {}, *args, "-C", str(self.dir))
        self.assertEqual(result.returncode, expect, f"{args}: {result.stdout}\n{result.stderr}")
        return result

    def test_deploy_hook_after_issue_and_renew(self) -> None:
        """
        ``--deploy-hook`` runs after Pebble's certificate is stored, with every
        variable: ``obtained`` for a new name, ``renewed`` for a replacement.
        """
        command, out = write_hook(self.work)
        name = "hook.cli.example"
        self.txacme("issue", *self.ca, *self.http01, "--deploy-hook", command, name)
        pem_path = str(self.dir / f"{name}.pem")
        chains.verify_entry(pem_path, self.pebble.roots(), [name])
        self.assertEqual(
            hook_runs(out),
            [
                {
                    "TXACME_NAME": name,
                    "TXACME_NAMES": name,
                    "TXACME_EVENT": "obtained",
                    "TXACME_PEM": pem_path,
                }
            ],
        )
        self.txacme("renew", *self.ca, *self.http01, "--force", "--deploy-hook", command)
        self.assertEqual(hook_runs(out)[1]["TXACME_EVENT"], "renewed")
        self.assertEqual(len(hook_runs(out)), 2)

    def test_deploy_hook_timeout_through_the_cli(self) -> None:
        """A hook over its time limit is killed; the command says so and exits 1."""
        name = "slowhook.cli.example"
        started = time.monotonic()
        result = self.txacme(
            "issue",
            *self.ca,
            *self.http01,
            "--deploy-hook",
            "sleep 60",
            "--deploy-hook-timeout",
            "1",
            name,
            expect=cli.EXIT_FAILURE,
        )
        self.assertLess(time.monotonic() - started, 50)
        self.assertIn(f"{name}: the deploy hook failed (killed after 1 s)", result.stderr)
        self.assertTrue((self.dir / f"{name}.pem").stat().st_size)  # stored all the same

    def test_ca_change_renews_through_the_cli(self) -> None:
        """``renew`` against another CA replaces a certificate that is not due, saying why."""
        name = "switch.cli.example"
        self.txacme("issue", *self.ca, *self.http01, name)
        records = json.loads((self.dir / ISSUERS_FILENAME).read_text())
        self.assertEqual(records["certificates"][name]["directory"], self.pebble.directory_url)
        before = stored_certificate(str(self.dir / f"{name}.pem"))
        # Nothing due at the same CA.
        quiet = self.txacme("renew", *self.ca, *self.http01)
        self.assertEqual(quiet.stdout, "")
        other = self.pebble.directory_url.replace("/dir", "/dir?ca=b")  # another URL, same CA
        result = self.txacme(
            "renew", "--directory", other, "--ca-file", self.pebble.ca_file, *self.http01
        )
        self.assertIn(
            f"{name}: renewing now: the certificate was issued by {self.pebble.directory_url}, "
            f"not the configured {other}",
            result.stdout,
        )
        after = stored_certificate(str(self.dir / f"{name}.pem"))
        self.assertNotEqual(after.serial_number, before.serial_number)
        records = json.loads((self.dir / ISSUERS_FILENAME).read_text())
        self.assertEqual(records["certificates"][name]["directory"], other)

    def test_status_without_the_ca_and_revoked(self) -> None:
        """
        ``status`` prints the local table even when the CA is unreachable or
        untrusted, and says so apart; a revoked certificate shows "now".
        """
        name = "status.cli.example"
        self.txacme("issue", *self.ca, *self.http01, name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"https://127.0.0.1:{s.getsockname()[1]}/dir"
            down = self.txacme("status", "--directory", url, expect=cli.EXIT_TEMPORARY)
        self.assertIn(name, down.stdout)
        self.assertIn("NAME", down.stdout)
        self.assertEqual(len(down.stderr.strip().splitlines()), 1, down.stderr)
        self.assertTrue(down.stderr.startswith("CA: unreachable: "), down.stderr)
        self.assertIn(url, down.stderr)

        # Pebble's own TLS certificate is not trusted without its CA file.
        untrusted = self.txacme(
            "status", "--directory", self.pebble.directory_url, expect=cli.EXIT_FAILURE
        )
        self.assertIn(name, untrusted.stdout)
        self.assertIn("CA: untrusted:", untrusted.stderr)
        self.assertIn("--ca-file", untrusted.stderr)

        self.txacme("revoke", *self.ca, name)
        table = self.txacme("status", *self.ca).stdout
        row = next(line for line in table.splitlines() if line.startswith(name))
        self.assertIn("revoked", row)
        self.assertIn(" now ", row + " ")
        self.assertNotIn("60d", row)
        document = json.loads(self.txacme("status", "--json", *self.ca).stdout)
        [cert] = document["certificates"]
        self.assertEqual((cert["renewal_reason"], cert["due"]), ("revoked", True))

    def test_ca_file_from_the_environment(self) -> None:
        """``TXACME_CA_FILE`` goes with ``TXACME_DIRECTORY``; a bad one is a usage error."""
        env = {"TXACME_DIRECTORY": self.pebble.directory_url, "TXACME_CA_FILE": self.pebble.ca_file}
        self.txacme("issue", *self.http01, "env.cli.example", env=env)
        env["TXACME_CA_FILE"] = "/etc/passwd"
        bad = self.txacme("status", env=env, expect=cli.EXIT_USAGE)
        self.assertEqual(
            bad.stderr.strip(),
            "txacme: error: $TXACME_CA_FILE '/etc/passwd' holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)",
        )
        bad = self.txacme("status", "--ca-file", "/etc/group", env=env, expect=cli.EXIT_USAGE)
        self.assertIn("--ca-file '/etc/group' holds no PEM certificate", bad.stderr)

    def test_account_create_says_what_changed(self) -> None:
        created = self.txacme("account", "create", *self.ca, "--email", "one@cli.example")
        self.assertRegex(created.stdout, r"account \S+ created")
        same = self.txacme("account", "create", *self.ca, "--email", "one@cli.example")
        self.assertRegex(same.stdout.strip(), r"^account \S+ exists; unchanged$")
        changed = self.txacme("account", "create", *self.ca, "--email", "two@cli.example")
        self.assertRegex(
            changed.stdout.strip(),
            r"^account \S+ exists; contact updated from one@cli.example to two@cli.example$",
        )

    def test_preferred_chain_option(self) -> None:
        """``--preferred-chain`` picks Pebble's alternate chain by its root's name."""
        pebble = start_pebble(env={"PEBBLE_ALTERNATE_ROOTS": "1"})
        self.addCleanup(pebble.stop)
        ca = ["--directory", pebble.directory_url, "--ca-file", pebble.ca_file]
        http01 = ["--http01", f"tcp:{pebble.http_port}:interface=127.0.0.1"]
        roots = [pebble._mgmt_get(f"/roots/{i}") for i in (0, 1)]
        names = [
            x509.load_pem_x509_certificate(r)
            .subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0]
            .value
            for r in roots
        ]
        for index, name in [(1, "alt.cli.example"), (0, "default.cli.example")]:
            self.txacme("issue", *ca, *http01, "--preferred-chain", str(names[index]), name)
            path = str(self.dir / f"{name}.pem")
            chains.verify_entry(path, [roots[index]], [name])
            with self.assertRaises(VerificationError):
                chains.verify_entry(path, [roots[1 - index]], [name])


class UsageTests(TestCase):
    def test_bad_endpoint_descriptions(self) -> None:
        """Bad listener descriptions are one-line usage errors (2), never a traceback."""
        d = self.mktemp()
        os.makedirs(d)
        ca = ["--directory", "https://ca.invalid/dir"]
        for listener, needle in [
            ("tcp:99999", "--http01 'tcp:99999': port '99999' is not 0-65535"),
            ("99999", "--http01 'tcp:99999': port '99999' is not 0-65535"),
            ("tcp:80:bogus=1", "--http01 'tcp:80:bogus=1' is not a usable endpoint"),
            ("nonsense:1", "--http01 'nonsense:1' is not a usable endpoint"),
        ]:
            result = run_cli("issue", "-C", d, *ca, "--http01", listener, "a.example")
            self.assertEqual(result.returncode, cli.EXIT_USAGE, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(needle, result.stderr)
            self.assertNotIn("Traceback", result.stderr)
        result = run_cli(
            "issue", "-C", d, *ca, "--http01", "80", "--deploy-hook", "nope-xyz", "a.example"
        )
        self.assertEqual(result.returncode, cli.EXIT_USAGE, result.stderr)
        self.assertIn("--deploy-hook='nope-xyz'", result.stderr)

    def test_store_password_never_echoed(self) -> None:
        d = self.mktemp()
        os.makedirs(d)
        for url in [
            "postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=1",
            "postgresql://127.0.0.1:1/db?password=s3cret&connect_timeout=1",
            "postgresql://127.0.0.1:1/db?bogus_option=1&password=s3cret",
        ]:
            result = run_cli("status", "-C", d, "--store", url, "--json")
            self.assertNotIn("s3cret", result.stdout + result.stderr, url)


# ---------------------------------------------------------------------------
# twistd against Pebble
# ---------------------------------------------------------------------------


class TwistdOperationsTests(TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.pebble = pebble_or_skip()
        self.work = Path(tempfile.mkdtemp(prefix="txacme-ops-twistd-"))
        self.addCleanup(shutil.rmtree, self.work, True)
        self.certs = self.work / "certs"
        self.certs.mkdir()
        self.site = self.work / "site"
        self.site.mkdir()
        (self.site / "index.html").write_text("ok\n")
        self.logs: list[Path] = []

    def start_twistd(self, description: str) -> subprocess.Popen[bytes]:
        log_path = self.work / f"twistd-{len(self.logs)}.log"
        self.logs.append(log_path)
        proc = start_web(description, self.site, self.work, log_path)
        self.addCleanup(stop_process, proc)
        return proc

    def log_text(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def description(self, pebble: Pebble, *extra: str) -> str:
        return ":".join(
            [
                f"acme:{quote(str(self.certs))}:tcp:{pebble.tls_port}:interface=127.0.0.1",
                f"directory={quote(pebble.directory_url)}",
                f"ca_file={quote(pebble.ca_file)}",
                *extra,
            ]
        )

    def test_hook_and_http01_listener(self) -> None:
        """
        Under twistd: the deploy hook records its environment after Pebble's
        certificate (validated over http-01) is stored; the http-01 listener
        redirects to HTTPS, answers 405 with Allow, refuses a large body at
        once with 413 and logs no warning for HEAD.
        """
        name = "www.ops.example"
        (self.certs / f"{name}.pem").write_bytes(b"")
        command, out = write_hook(self.work)
        http_port = self.pebble.http_port
        proc = self.start_twistd(
            self.description(
                self.pebble,
                "challenge=http-01",
                f"http01={quote(f'tcp:{http_port}:interface=127.0.0.1')}",
                "http01_redirect=8443",
                f"deploy_hook={quote(command)}",
            )
        )

        def hooked() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"twistd exited {proc.returncode}\n{self.log_text()}")
            return bool(hook_runs(out))

        wait_for(hooked, "the deploy hook", log=self.log_text)
        pem_path = str(self.certs / f"{name}.pem")
        chains.verify_entry(pem_path, self.pebble.roots(), [name])
        self.assertEqual(
            hook_runs(out),
            [
                {
                    "TXACME_NAME": name,
                    "TXACME_NAMES": name,
                    "TXACME_EVENT": "obtained",
                    "TXACME_PEM": pem_path,
                }
            ],
        )
        wait_for(
            lambda: "deploy hook for www.ops.example finished" in self.log_text(),
            "the hook's log line",
            log=self.log_text,
        )
        self.assertIn(f"hook ran for {name}", self.log_text())

        # The redirect: same host (port dropped, the HTTPS port named), path and query.
        response = http_request(
            http_port, "GET", "/some/page?a=1&b=2", host=f"{name.upper()}:{http_port}"
        )
        self.assertEqual(response.status, 301)
        self.assertEqual(response.getheader("location"), f"https://{name}:8443/some/page?a=1&b=2")
        head = http_request(http_port, "HEAD", "/")
        self.assertEqual((head.status, head.getheader("location")), (301, f"https://{name}:8443/"))
        post = http_request(
            http_port, "POST", "/form", body=b"x=1", headers={"Content-Length": "3"}
        )
        self.assertEqual(post.status, 308)
        self.assertEqual(http_request(http_port, "GET", "/", host=None).status, 400)
        self.assertEqual(http_request(http_port, "GET", "/", host="evil.example/x").status, 400)
        # Challenge paths are not redirected: an unknown token is a plain 404 (HEAD too).
        token = "/.well-known/acme-challenge/unknownToken"
        self.assertEqual(http_request(http_port, "GET", token).status, 404)
        self.assertEqual(http_request(http_port, "HEAD", token).status, 404)
        for method in ("PUT", "DELETE", "OPTIONS", "TRACE", "POST"):
            response = http_request(http_port, method, token)
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.getheader("allow"), "GET, HEAD", method)

        # A 10 MB body is refused from its Content-Length, before any of it is sent.
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
            s.sendall(
                f"POST {token} HTTP/1.1\r\nHost: {name}\r\n"
                "Content-Length: 10485760\r\n\r\n".encode()
            )
            answer = s.recv(4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        # Without a length (chunked), the body is counted as it comes.
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
            s.sendall(
                f"POST {token} HTTP/1.1\r\nHost: {name}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            chunk = b"x" * 70000
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            answer = s.recv(4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertNotIn("I think I'll eat it", self.log_text())
        self.assertNotIn("Traceback", self.log_text())

    def test_ca_switch_renews_at_once(self) -> None:
        """
        A certificate issued by CA A is replaced as soon as twistd starts
        configured for CA B, with one log line saying why.
        """
        name = "switch.ops.example"
        (self.certs / f"{name}.pem").write_bytes(b"")
        first = self.start_twistd(self.description(self.pebble, "watch_interval=0.2"))
        path = self.certs / f"{name}.pem"
        wait_for(
            lambda: path.stat().st_size > 0 or first.poll() is not None,
            "issuance by A",
            log=self.log_text,
        )
        chains.verify_entry(str(path), self.pebble.roots(), [name])
        wait_for(lambda: (self.certs / ISSUERS_FILENAME).exists(), "the issuer record")
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
        before = stored_certificate(str(path))
        self.assertEqual(
            IssuerRecords.in_directory(str(self.certs), "x").directory_of(name, before),
            self.pebble.directory_url,
        )

        try:
            other = Pebble(tls_port=self.pebble.tls_port, http_port=self.pebble.http_port)
        except PebbleUnavailable as e:
            raise SkipTest(str(e))
        self.addCleanup(other.stop)
        second = self.start_twistd(self.description(other, "watch_interval=0.2"))

        def replaced() -> bool:
            if second.poll() is not None:
                raise AssertionError(f"twistd exited\n{self.log_text()}")
            try:
                return stored_certificate(str(path)).serial_number != before.serial_number
            except (StopIteration, ValueError, OSError):
                return False

        wait_for(replaced, "renewal by B", log=self.log_text)
        chains.verify_entry(str(path), other.roots(), [name])
        wait_for(lambda: "renewed the certificate for" in self.log_text(), "the renewed line")
        lines = [line for line in self.log_text().splitlines() if "renewing it now" in line]
        self.assertEqual(len(lines), 1, self.log_text())
        self.assertIn(
            f"certificate for {name} was issued by {self.pebble.directory_url}, "
            f"not the configured {other.directory_url}: renewing it now",
            lines[0],
        )
        after = stored_certificate(str(path))
        self.assertEqual(
            IssuerRecords.in_directory(str(self.certs), "x").directory_of(name, after),
            other.directory_url,
        )


# ---------------------------------------------------------------------------
# The issuer record
# ---------------------------------------------------------------------------


def _certificate(issuer_cn: str, serial: int) -> x509.Certificate:
    from datetime import datetime, timedelta, timezone  # noqa: PLC0415

    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=80))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("r.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )


class IssuerRecordTests(TestCase):
    def test_records_are_bound_to_the_certificate(self) -> None:
        import pem  # noqa: PLC0415
        from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

        directory = self.mktemp()
        os.makedirs(directory)
        a = IssuerRecords.in_directory(directory, "https://a.example/dir")
        cert = _certificate("Some CA", 0x1234)
        a.stored("r.example", pem.parse(cert.public_bytes(Encoding.PEM)))
        path = Path(directory) / ISSUERS_FILENAME
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertIsNone(a.stale("r.example", cert))
        b = IssuerRecords.in_directory(directory, "https://b.example/dir")
        with captured_logs() as events:
            self.assertEqual(
                b.stale("r.example", cert),
                "issued by https://a.example/dir, not the configured https://b.example/dir",
            )
            b.stale("r.example", cert)  # said once per certificate
        said = [formatEvent(e) for e in events if e.get("event") == "ca_changed"]
        self.assertEqual(
            said,
            [
                "certificate for r.example was issued by https://a.example/dir, not the "
                "configured https://b.example/dir: renewing it now"
            ],
        )
        # Another certificate under the same name has no record: not judged by the old one.
        self.assertIsNone(b.stale("r.example", _certificate("Some CA", 0x9999)))

    def test_unrecorded_staging_certificate(self) -> None:
        """Without a record, only a staging issuer under a production CA is renewed at once."""
        directory = self.mktemp()
        os.makedirs(directory)
        production = IssuerRecords.in_directory(
            directory, "https://acme-v02.api.letsencrypt.org/directory"
        )
        staging = _certificate("(STAGING) Counterfeit Cashew R10", 1)
        self.assertIn("issued by a staging CA", production.stale("s.example", staging) or "")
        self.assertIsNone(production.stale("s.example", _certificate("R10", 2)))
        on_staging = IssuerRecords.in_directory(
            directory, "https://acme-staging-v02.api.letsencrypt.org/directory"
        )
        self.assertIsNone(on_staging.stale("s.example", staging))

    def test_damaged_file_reads_as_empty(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        (Path(directory) / ISSUERS_FILENAME).write_text("{not json")
        records = IssuerRecords.in_directory(directory, "https://b.example/dir")
        with captured_logs():
            self.assertIsNone(records.stale("r.example", _certificate("X", 5)))


class OperationsWiringTests(TestCase):
    def test_endpoint_options(self) -> None:
        """The endpoint string's keywords reach the issuing service."""
        import functools  # noqa: PLC0415

        from txacme.config.operations import operations  # noqa: PLC0415
        from txacme.stores.directory import DirectoryStore  # noqa: PLC0415
        from txacme.stores.memory import MemoryStore  # noqa: PLC0415

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = parse(f"le:{directory}:tcp:443:deploy_hook=true:preferred_chain=Alt Root")
        options, subscribers = operations(reactor, config, DirectoryStore(directory))
        records = options["issuer_records"]
        self.assertEqual(records.path, os.path.join(directory, ISSUERS_FILENAME))
        self.assertEqual(records.directory_url, "https://ca.example/dir")
        issue = options["issue"]
        self.assertIsInstance(issue, functools.partial)
        self.assertEqual(issue.keywords, {"preferred_chain": "Alt Root"})
        [subscriber] = subscribers
        hook = subscriber.__self__
        self.assertEqual(hook.argv, ("true",))
        self.assertEqual(
            hook.environment("a.example", ["a.example"], "obtained")["TXACME_PEM"],
            os.path.join(directory, "a.example.pem"),
        )
        # Another store has no files: no TXACME_PEM.
        _, subscribers = operations(reactor, config, MemoryStore())
        env = subscribers[0].__self__.environment("a.example", ["a.example"], "obtained")
        self.assertNotIn("TXACME_PEM", env)
        # Without the keywords: only the record of the issuer.
        options, subscribers = operations(reactor, parse(f"le:{directory}:tcp:443"), MemoryStore())
        self.assertEqual((sorted(options), subscribers), (["issuer_records"], []))


class HTTP01SiteTests(TestCase):
    """The site without redirects (the CLI's listener), over a real loopback port."""

    @inlineCallbacks
    def test_methods_head_and_bodies(self) -> Any:
        from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: PLC0415
        from twisted.internet.threads import deferToThread  # noqa: PLC0415

        from txacme.challenges.http01 import HTTP01Responder, HTTP01Site, http01_root  # noqa: PLC0415

        site = HTTP01Site(http01_root(HTTP01Responder()))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def requests() -> list[tuple[int, str | None]]:
            answers = []
            for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "POST"):
                response = http_request(number, method, "/anything")
                answers.append((response.status, response.getheader("allow")))
            return answers

        with captured_logs() as events:
            answers = yield deferToThread(requests)
        self.assertEqual(answers[:2], [(404, None), (404, None)])
        self.assertEqual(answers[2:], [(405, "GET, HEAD")] * 5)
        from twisted.logger import LogLevel  # noqa: PLC0415

        warnings = [
            formatEvent(e)
            for e in events
            if e.get("log_level", LogLevel.info) >= LogLevel.warn or "eat it" in formatEvent(e)
        ]
        self.assertEqual(warnings, [])

        def expect_continue() -> bytes:
            with socket.create_connection(("127.0.0.1", number), timeout=10) as s:
                s.sendall(
                    b"PUT /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1048576\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data

        answer = yield deferToThread(expect_continue)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertNotIn(b"100 Continue", answer)
