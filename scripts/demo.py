"""
Run twistd web on an ``acme:`` endpoint against a local test CA and fetch a page over HTTPS.

Started by ``scripts/demo``; see README.rst.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "demo.example.test"


def quote(value: str) -> str:
    """Escape a value for an endpoint description."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def fetch(port: int, cafile: str) -> tuple[bytes, x509.Certificate]:
    """GET / over HTTPS for NAME on 127.0.0.1:port, verifying against cafile."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=NAME) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
            body = b""
            while chunk := tls.recv(65536):
                body += chunk
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return body.split(b"\r\n\r\n", 1)[-1], x509.load_der_x509_certificate(der)


class LocalCA:
    """The parts of a local test CA the demo needs, whichever CA it is."""

    def __init__(
        self,
        name: str,
        directory_url: str,
        ca_file: str,
        tls_port: int,
        roots: list[bytes],
        stop: Callable[[], object],
    ) -> None:
        self.name = name
        self.directory_url = directory_url
        self.ca_file = ca_file
        self.tls_port = tls_port
        self._roots = roots
        self.stop = stop

    def roots(self) -> list[bytes]:
        return self._roots


def start_pebble_ca() -> LocalCA:
    from tests.harness.pebble import start_pebble

    pebble = start_pebble()
    return LocalCA(
        "Pebble (Let's Encrypt's test CA)",
        pebble.directory_url,
        pebble.ca_file,
        pebble.tls_port,
        pebble.roots(),
        pebble.stop,
    )


def start_txacme_ca() -> LocalCA:
    from txacme.testca import TestCAProcess, free_port

    tls_port = free_port()
    ca = TestCAProcess.start(tlsalpn01_port=tls_port, retry_after=0)
    return LocalCA(
        "txacme.testca (txacme's own test CA)",
        ca.directory_url,
        ca.https_ca_file,
        tls_port,
        [ca.root_pem],
        ca.stop,
    )


def start_ca(choice: str) -> LocalCA:
    """Pebble when installed (or asked for), else txacme's own test CA."""
    from tests.harness.pebble import PebbleUnavailable

    if choice in ("auto", "pebble"):
        try:
            return start_pebble_ca()
        except PebbleUnavailable as e:
            if choice == "pebble":
                raise
            print(f"Pebble is not available ({e}); using txacme's own test CA.")
    return start_txacme_ca()


def _interrupted(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt (once: cleaning up is not interrupted again)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description="txacme's demo: twistd web on an acme: endpoint")
    parser.add_argument(
        "--ca",
        choices=["auto", "pebble", "testca"],
        default="auto",
        help="which local CA to use (default: Pebble when installed, else txacme's test CA)",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, through the finally below that stops and removes everything.
    signal.signal(signal.SIGTERM, _interrupted)
    ca: LocalCA | None = None
    work = Path(tempfile.mkdtemp(prefix="txacme-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ca = start_ca(args.ca)
        ca_name = ca.name
        certs = work / "certs"
        certs.mkdir()
        (certs / f"{NAME}.pem").write_bytes(b"")  # empty: "issue this name at start-up"
        site = work / "site"
        site.mkdir()
        (site / "index.html").write_text("<h1>Hello from twistd web over txacme</h1>\n")
        roots = work / "pebble-root.pem"
        roots.write_bytes(b"".join(ca.roots()))
        # Pebble's validator connects to every name on 127.0.0.1:<tls_port> for tls-alpn-01,
        # so the web server listens there: one port serves both the site and the challenge.
        port = ca.tls_port
        endpoint = (
            f"acme:{quote(str(certs))}:tcp:{port}:interface=127.0.0.1"
            f":directory={quote(ca.directory_url)}:ca_file={quote(ca.ca_file)}"
        )
        print(f"CA: {ca_name} at {ca.directory_url}")
        print(f"Running: twistd -n web --port '{endpoint}' --path {site}")
        twistd_path = os.path.join(os.path.dirname(sys.executable), "twistd")
        started = time.monotonic()
        log = open(work / "twistd.log", "wb")  # noqa: SIM115
        twistd = subprocess.Popen(
            [twistd_path, "-n", "--pidfile=", "web", "--port", endpoint, "--path", str(site)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(work),
        )
        procs.append(twistd)
        body = b""
        cert = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if twistd.poll() is not None:
                break
            if (certs / f"{NAME}.pem").stat().st_size:
                try:
                    body, cert = fetch(port, str(roots))
                    break
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        if cert is None:
            print("The server did not serve a certificate; its log:", file=sys.stderr)
            print((work / "twistd.log").read_text(errors="replace"), file=sys.stderr)
            return 1
        elapsed = time.monotonic() - started
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        print(f"Certificate obtained and served in {elapsed:.2f}s (server start included)")
        print(f"  names:   {', '.join(sans.get_values_for_type(x509.DNSName))}")
        print(f"  issuer:  {issuer[0].value if issuer else cert.issuer.rfc4514_string()}")
        print(f"  expires: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        print("  chain verified against the CA's root: yes")
        print(f"Page: {body.decode(errors='replace').strip()}")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if ca is not None:
            ca.stop()
        if not os.environ.get("TXACME_DEMO_KEEP"):
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything the demo started was stopped and removed", file=sys.stderr)
        sys.exit(130)
