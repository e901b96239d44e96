"""
Run Pebble, Let's Encrypt's test CA, and its mock DNS server for the tests.

Pebble ships no certificate for its own HTTPS listener, so each instance gets a
fresh CA and a ``localhost`` / ``127.0.0.1`` / ``::1`` certificate in a temporary
directory. Every port is picked free on 127.0.0.1. ``pebble-challtestsrv``
answers every DNS name with 127.0.0.1 (and no IPv6 address, or Pebble would dial
only ``[::1]``); its own challenge listeners are switched off.

:func:`shared_pebble` starts one instance per test process; :func:`start_pebble`
starts a private one (with EAB or fault knobs) that the caller stops.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.harness.processes import (
    SharedInstance,
    free_port,
    read_log,
    start_logged,
    stop_processes,
)
from txacme.testca._pki import HTTPSIdentity

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"

# Fixed EAB keys for the EAB-required instance (test values, not secrets).
EAB_KEYS = {
    "kid-1": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    "kid-2": "b10lLJs8l1GPIzsLP0s6pMt8O0XVGnfTaCeROxQM0BIt2XrJMDHJZBM5NuQmQJQH",
}


class PebbleUnavailable(RuntimeError):
    """Pebble is not installed or did not start."""


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a port free for both UDP and TCP on ``host`` (for a DNS server)."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((host, port))
            except OSError:
                continue
            return port
    raise PebbleUnavailable("no free UDP+TCP port found")


def make_tls_ca(directory: Path) -> tuple[Path, Path, Path]:
    """
    Write a throw-away CA and a ``localhost`` / ``127.0.0.1`` / ``::1`` server
    certificate into ``directory``, built by the test CA's own
    :class:`~txacme.testca._pki.HTTPSIdentity`.

    :return: (CA certificate path, server certificate path, server key path).
    """
    identity = HTTPSIdentity.generate(datetime.datetime.now(datetime.timezone.utc))
    ca_path = directory / "https-ca.pem"
    cert_path = directory / "https-cert.pem"
    key_path = directory / "https-key.pem"
    ca_path.write_bytes(identity.ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(identity.certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


def _wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PebbleUnavailable(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise PebbleUnavailable(f"{what} did not listen on {host}:{port} within {timeout}s")


class Pebble:
    """A running Pebble and pebble-challtestsrv pair on loopback."""

    def __init__(
        self,
        *,
        eab: bool = False,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
        dns_server: str | None = None,
        http_port: int | None = None,
        tls_port: int | None = None,
    ) -> None:
        if not (os.path.exists(PEBBLE) and os.path.exists(CHALLTESTSRV)):
            raise PebbleUnavailable(
                "pebble is not installed: run 'apt-get install -y pebble' "
                "(the README's test command does this)"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix="txacme-pebble-"))
        self.ca_path, cert_path, key_path = make_tls_ca(self.workdir)
        self.ca_file = str(self.ca_path)
        self.port = free_port()
        self.mgmt_port = free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.tls_port = tls_port if tls_port is not None else free_port()
        self.eab_keys = dict(EAB_KEYS) if eab else {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self.log_path = self.workdir / "pebble.log"
        self.dns_port: int | None = None
        self.dns_mgmt_port: int | None = None
        self.dns_mgmt_url: str | None = None
        try:
            if dns_server is None:
                self.dns_port = free_udp_tcp_port()
                self.dns_mgmt_port = free_port()
                self.dns_mgmt_url = f"http://127.0.0.1:{self.dns_mgmt_port}"
                proc = start_logged(
                    [
                        CHALLTESTSRV,
                        "-dns01",
                        f"127.0.0.1:{self.dns_port}",
                        "-management",
                        f"127.0.0.1:{self.dns_mgmt_port}",
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                    ],
                    self.workdir / "challtestsrv.log",
                )
                self._procs.append(proc)
                _wait_for_port("127.0.0.1", self.dns_mgmt_port, proc, "pebble-challtestsrv")
                dns_server = f"127.0.0.1:{self.dns_port}"
            self.dns_server = dns_server
            pebble_config: dict[str, object] = {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
                "certificate": str(cert_path),
                "privateKey": str(key_path),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": eab,
            }
            if eab:
                pebble_config["externalAccountMACKeys"] = dict(EAB_KEYS)
            if config:
                pebble_config.update(config)
            config_path = self.workdir / "pebble-config.json"
            config_path.write_text(json.dumps({"pebble": pebble_config}, indent=2))
            full_env = dict(os.environ)
            full_env["PEBBLE_VA_NOSLEEP"] = "1"
            if env:
                full_env.update(env)
            proc = start_logged(
                [PEBBLE, "-config", str(config_path), "-dnsserver", dns_server],
                self.log_path,
                env=full_env,
                cwd=str(self.workdir),
            )
            self._procs.append(proc)
            _wait_for_port("127.0.0.1", self.port, proc, "pebble")
            _wait_for_port("127.0.0.1", self.mgmt_port, proc, "pebble management")
        except BaseException:
            self.stop()
            raise
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"
        self.mgmt_url = f"https://127.0.0.1:{self.mgmt_port}"

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _mgmt_get(self, path: str) -> bytes:
        with urllib.request.urlopen(
            self.mgmt_url + path, context=self._ssl_context(), timeout=10
        ) as response:
            return bytes(response.read())

    def roots(self) -> list[bytes]:
        """PEM of the root(s) that sign issued certificates (new on every start)."""
        return [self._mgmt_get("/roots/0")]

    def intermediates(self) -> list[bytes]:
        """PEM of the intermediate(s) that sign issued certificates."""
        return [self._mgmt_get("/intermediates/0")]

    def directory(self) -> dict[str, object]:
        """The ACME directory, fetched synchronously (for test set-up)."""
        with urllib.request.urlopen(
            self.directory_url, context=self._ssl_context(), timeout=10
        ) as response:
            return dict(json.loads(response.read()))

    def log_text(self) -> str:
        """What Pebble has logged so far (to count orders, or to explain a failure)."""
        return read_log(self.log_path)

    def set_txt(self, host: str, value: str) -> None:
        """Ask the mock DNS server to answer ``host`` TXT with ``value``."""
        self._dns_post("/set-txt", {"host": host, "value": value})

    def clear_txt(self, host: str) -> None:
        """Remove TXT records for ``host`` from the mock DNS server."""
        self._dns_post("/clear-txt", {"host": host})

    def _dns_post(self, path: str, body: Mapping[str, object]) -> None:
        if self.dns_mgmt_url is None:
            raise PebbleUnavailable("this Pebble uses an external DNS server")
        request = urllib.request.Request(
            self.dns_mgmt_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        """Stop exactly the processes this instance started, and wait for them."""
        stop_processes(self._procs[::-1])
        self._procs = []
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Pebble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_pebble(
    *,
    eab: bool = False,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, object] | None = None,
    dns_server: str | None = None,
) -> Pebble:
    """Start a private Pebble; the caller stops it (``addCleanup(p.stop)``)."""
    return Pebble(eab=eab, env=env, config=config, dns_server=dns_server)


_shared = SharedInstance(Pebble)


def shared_pebble() -> Pebble:
    """The Pebble shared by every test of this process, started on first use."""
    return _shared.get()


def pebble_or_skip() -> Pebble:
    """
    :func:`shared_pebble`, or ``SkipTest`` when Pebble cannot run here (CI sets
    ``TXACME_NO_SKIPS=1``, which turns such a skip into a failure).
    """
    try:
        return shared_pebble()
    except PebbleUnavailable as e:
        raise unittest.SkipTest(str(e)) from None
