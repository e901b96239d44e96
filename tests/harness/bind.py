"""
Run BIND (``named``) on loopback for the dns-01 tests.

Each :class:`Bind` is a private ``named`` child process in a temporary
directory, authoritative for a few zones that accept RFC 2136 updates of TXT
records signed with a fresh TSIG key. It listens on UDP and TCP on one port of a
loopback address; :meth:`Bind.stop` stops exactly that process and removes the
directory.

It also recurses, for loopback clients only, over a local root zone: so Pebble
(which asks with recursion desired) gets the whole chain for a CNAME into
another zone, while the server never sends a query beyond the machine (every
name falls under the local root, which delegates nothing).

Debian package: ``bind9`` (``/usr/sbin/named``). The key is generated here, so
``bind9-utils`` is not needed by the fixture.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from tests.harness.pebble import free_udp_tcp_port
from tests.harness.processes import read_log, start_logged, stop_process

NAMED = shutil.which("named") or "/usr/sbin/named"

KEY_NAME = "txacme-test-key"
ALGORITHM = "hmac-sha256"

#: The zones every fixture serves (zone name -> records below the SOA/NS).
DEFAULT_ZONES: Mapping[str, Sequence[str]] = {
    "example.test": [
        "ns1 A 127.0.0.1",
        "www A 127.0.0.1",
        'keep TXT "not ours"',
        # dns-01 for www.example.test is delegated to the other zone by CNAME.
        "_acme-challenge.www CNAME www.acme.delegated.test.",
    ],
    "delegated.test": [],
}


class BindUnavailable(RuntimeError):
    """BIND is not installed or did not start."""


def _zone_file(zone: str, records: Sequence[str]) -> str:
    lines = [
        f"$ORIGIN {zone}.",
        "$TTL 60",
        f"@ IN SOA ns1.example.test. hostmaster.{zone}. ( 1 3600 600 86400 60 )",
        "@ IN NS ns1.example.test.",
    ]
    lines += [f"{r.split(' ', 1)[0]} IN {r.split(' ', 1)[1]}" for r in records]
    return "\n".join(lines) + "\n"


class Bind:
    """
    A running ``named`` serving :data:`DEFAULT_ZONES` (or ``zones``).

    :ivar address: the loopback address it listens on.
    :ivar port: its UDP and TCP port.
    :ivar key_name: the TSIG key name allowed to update TXT records.
    :ivar key_secret: the base64 TSIG secret (a test value).
    :ivar key_file: a ``tsig-keygen``-style key file holding that key.
    """

    def __init__(
        self,
        zones: Mapping[str, Sequence[str]] | None = None,
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        if not os.path.exists(NAMED):
            raise BindUnavailable("BIND is not installed: apt-get install -y bind9")
        self.address = address
        self.port = port if port is not None else free_udp_tcp_port(address)
        self.zones = dict(zones if zones is not None else DEFAULT_ZONES)
        self.key_name = KEY_NAME
        self.algorithm = ALGORITHM
        self.key_secret = base64.b64encode(os.urandom(32)).decode("ascii")
        self.workdir = Path(tempfile.mkdtemp(prefix="txacme-bind-"))
        self.key_file = self.workdir / "tsig.key"
        self.key_file.write_text(
            f'key "{self.key_name}" {{\n\talgorithm {self.algorithm};\n'
            f'\tsecret "{self.key_secret}";\n}};\n'
        )
        self.log_path = self.workdir / "named.log"
        self._proc: subprocess.Popen[bytes] | None = None
        zone_clauses = []
        for zone, records in self.zones.items():
            path = self.workdir / f"{zone}.zone"
            path.write_text(_zone_file(zone, records))
            zone_clauses.append(
                f'zone "{zone}" {{\n\ttype primary;\n\tfile "{path}";\n'
                f'\tupdate-policy {{ grant "{self.key_name}" zonesub TXT; }};\n}};\n'
            )
        listen = "listen-on" if ":" not in address else "listen-on-v6"
        other = "listen-on-v6" if listen == "listen-on" else "listen-on"
        root = self.workdir / "root.zone"
        root.write_text(
            "$TTL 60\n. IN SOA ns1.example.test. hostmaster.example.test. ( 1 3600 600 86400 60 )\n"
            ". IN NS ns1.example.test.\nns1.example.test. IN A 127.0.0.1\n"
        )
        conf = self.workdir / "named.conf"
        conf.write_text(
            f"""
include "{self.key_file}";
options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    session-keyfile "{self.workdir}/session.key";
    managed-keys-directory "{self.workdir}";
    {listen} port {self.port} {{ {address}; }};
    {other} {{ none; }};
    recursion yes;
    allow-recursion {{ 127.0.0.0/8; ::1; }};
    notify no;
    dnssec-validation no;
    allow-transfer {{ any; }};
    allow-query {{ any; }};
    minimal-responses no;
}};
controls {{ }};
zone "." {{
    type primary;
    file "{root}";
}};
{"".join(zone_clauses)}
"""
        )
        try:
            self._proc = start_logged(
                [NAMED, "-g", "-n", "1", "-c", str(conf)], self.log_path, cwd=str(self.workdir)
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def server(self) -> str:
        """``host:port`` as the ``dns_server`` option spells it."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def _wait_ready(self, timeout: float = 20.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        zone = next(iter(self.zones))
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BindUnavailable(
                    f"named exited with status {self._proc.returncode}:\n{self.log_text()}"
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=0.2):
                    pass
                response = self.query(zone, "SOA", timeout=0.5)
                if response.rcode() == dns.rcode.NOERROR and response.answer:
                    return
            except (OSError, dns.exception.DNSException):
                pass
            time.sleep(0.02)
        raise BindUnavailable(f"named did not answer within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        """What named has logged so far."""
        return read_log(self.log_path)

    def query(self, name: str, rdtype: str, timeout: float = 2.0) -> dns.message.Message:
        """Ask this server (synchronously, over UDP) for ``name`` / ``rdtype``."""
        query = dns.message.make_query(name, rdtype)
        return dns.query.udp(query, self.address, timeout=timeout, port=self.port)

    def txt(self, name: str) -> set[str]:
        """The TXT strings this server has at ``name`` (each record's strings joined)."""
        values: set[str] = set()
        for rrset in self.query(name, "TXT").answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rdata in rrset:
                    values.add(b"".join(rdata.strings).decode("ascii"))
        return values

    def zone_records(self, zone: str) -> list[str]:
        """
        Every record of ``zone`` by zone transfer, sorted, without the SOA serial.

        Comparing this before and after a test shows the zone was left as it was.
        """
        records: list[str] = []
        for message in dns.query.xfr(self.address, zone, port=self.port, timeout=5):
            for rrset in message.answer:
                for rdata in rrset:
                    if rrset.rdtype == dns.rdatatype.SOA:
                        continue
                    records.append(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}")
        return sorted(set(records))

    def update(
        self, zone: str, add: Sequence[tuple[str, str]] = (), delete: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Add or delete TXT records (``(name, value)``) with the TSIG key, synchronously."""
        key = dns.tsig.Key(self.key_name, self.key_secret, self.algorithm)
        message = dns.update.UpdateMessage(zone, keyring=key)
        for name, value in add:
            message.add(dns.name.from_text(name), 60, "TXT", f'"{value}"')
        for name, value in delete:
            message.delete(dns.name.from_text(name), "TXT", f'"{value}"')
        response = dns.query.tcp(message, self.address, timeout=5, port=self.port)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"update refused: {dns.rcode.to_text(response.rcode())}")

    def stop(self) -> None:
        """Stop the named this fixture started, wait for it, remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Bind:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_bind(
    zones: Mapping[str, Sequence[str]] | None = None,
    *,
    address: str = "127.0.0.1",
    port: int | None = None,
) -> Bind:
    """Start a private BIND; the caller stops it (``addCleanup(b.stop)``)."""
    return Bind(zones, address=address, port=port)
