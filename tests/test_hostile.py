"""
Hostile input: SNI values, ACME answers and endpoint strings chosen by an
attacker (or a broken CA, or a typo) never reach the filesystem, never start
issuance, never slow other clients down and never crash the service; they end
in typed, readable errors.

File access is observed with a Python audit hook (:func:`sys.addaudithook`):
every ``open()``, ``os.open()``, directory listing, rename, removal... made by
this process while a test records is seen, whatever module makes it.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from twisted.web.test.requesthelper import DummyRequest

from tests.test_client import BASE, FakeCA, Reply, Responder, drive, ec_key
from txacme import errors
from txacme.challenges.http01 import HTTP01Responder, http01_root
from txacme.config.endpoint import OWN_KEYWORDS, parse_endpoint_string_parts
from txacme.issuing.events import Failed, Obtaining, ServiceEvent
from txacme.issuing.order import obtain_certificate
from txacme.issuing.service import AcmeIssuingService
from txacme.protocol.client import Client
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.serving.index import CertificateIndex
from txacme.serving.tls import SNIConnectionCreator
from txacme.stores.directory import DirectoryStore
from txacme.testing import FakeClient, MemoryStore, make_pem_objects

PAGE = b"hello\n"
GOOD = "good.example"

# -- observing file access ------------------------------------------------------------

FILE_EVENTS = frozenset(
    {
        "open",
        "os.listdir",
        "os.scandir",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.utime",
        "shutil.copyfile",
        "shutil.rmtree",
    }
)
_recording: list[tuple[str, tuple[Any, ...]]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None and event in FILE_EVENTS:
        _recording.append((event, args))


sys.addaudithook(_audit)


@contextmanager
def file_accesses() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Record every file access of this process (all threads) inside the block."""
    global _recording
    seen: list[tuple[str, tuple[Any, ...]]] = []
    _recording = seen
    try:
        yield seen
    finally:
        _recording = None


# -- hostile TLS clients ----------------------------------------------------------------


def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _ext(kind: int, body: bytes) -> bytes:
    return _u16(kind) + _u16(len(body)) + body


def client_hello(sni: bytes | None, alpn: list[bytes] | None = None) -> bytes:
    """
    A TLS 1.3/1.2 ClientHello record carrying ``sni`` byte for byte, so that
    values no TLS library sends (NUL bytes, 300 bytes) reach the server.
    """
    ciphers = b"".join(_u16(c) for c in (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C))
    exts = b""
    if sni is not None:
        entry = b"\x00" + _u16(len(sni)) + sni
        exts += _ext(0, _u16(len(entry)) + entry)
    exts += _ext(10, _u16(4) + _u16(0x001D) + _u16(0x0017))
    exts += _ext(11, b"\x01\x00")
    exts += _ext(13, _u16(6) + _u16(0x0403) + _u16(0x0804) + _u16(0x0401))
    exts += _ext(43, b"\x04\x03\x04\x03\x03")
    share = _u16(0x001D) + _u16(32) + os.urandom(32)
    exts += _ext(51, _u16(len(share)) + share)
    if alpn:
        names = b"".join(bytes([len(p)]) + p for p in alpn)
        exts += _ext(16, _u16(len(names)) + names)
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x20"
        + os.urandom(32)
        + _u16(len(ciphers))
        + ciphers
        + b"\x01\x00"
        + _u16(len(exts))
        + exts
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + _u16(len(handshake)) + handshake


def raw_hello(port: int, sni: bytes | None) -> bytes:
    """Blocking: send a crafted ClientHello, return the server's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(client_hello(sni))
        data = b""
        try:
            while len(data) < 5:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        return data


def openssl_handshake(port: int, sni: bytes | None, alpn: list[bytes] | None = None) -> Any:
    """Blocking: a pyOpenSSL handshake with any SNI bytes; the peer certificate or the error."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        connection = SSL.Connection(context, s)
        if sni is not None:
            connection.set_tlsext_host_name(sni)
        connection.set_connect_state()
        while True:
            try:
                connection.do_handshake()
                break
            except SSL.WantReadError:
                if not select.select([s], [], [], 10)[0]:
                    raise TimeoutError("no answer to the handshake") from None
            except SSL.Error as e:
                return e
        return connection.get_peer_certificate(as_cryptography=True)


HOSTILE_SNI = [
    b"../good.example",
    b"../../etc/passwd",
    b"good.example/../../x",
    b"/etc/passwd",
    b"..",
    b".",
    b"good.example/",
    b"*.example",
    b"client.key",
    b"DEFAULT",
    b"default",
    "b\u00fccher.example".encode(),
    b"\xff\xfe\xfd.example",
    b"a" * 64 + b".example",
    (b"a" * 63 + b".") * 3 + b"a" * 63,
    b"x" * 255,
]
HOSTILE_RAW_SNI = [b"good.example\x00", b"\x00" * 8, b"a" * 256, b"a." * 200 + b"example"]


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    return Site(root)


class HostileSNITests(TestCase):
    """Real handshakes against AutoTLSEndpoint with SNI values chosen by an attacker."""

    timeout = 60

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.store = DirectoryStore(self.directory)
        now = datetime.now(timezone.utc)
        self.good = make_pem_objects([GOOD], now - timedelta(days=1), now + timedelta(days=89))
        self.successResultOf(self.store.store(GOOD, self.good))
        self.events: list[ServiceEvent] = []
        self.clients = 0

    def client_creator(self) -> FakeClient:
        self.clients += 1
        return FakeClient()

    async def listen(self) -> tuple[AutoTLSEndpoint, int]:
        endpoint = AutoTLSEndpoint(
            reactor,
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=512),
            self.store,
            self.client_creator,
            watch_interval=None,
        )
        port = await endpoint.listen(site())
        self.addCleanup(port.stopListening)
        endpoint.service.subscribe(self.events.append)
        return endpoint, port.getHost().port

    def test_hostile_sni_values(self) -> Deferred[None]:
        """
        ``../``, ``/``, NUL, non-ASCII, upper case, 255+ byte names: no file is
        touched, nothing is issued or created in the store, each handshake
        ends cleanly (refused, or the right certificate for a name that is
        ours in another spelling), and the server keeps serving.
        """

        async def check() -> None:
            _, port = await self.listen()
            listing = sorted(os.listdir(self.directory))
            clients = self.clients
            with file_accesses() as accesses:
                for sni in HOSTILE_SNI:
                    result = await deferToThread(openssl_handshake, port, sni)
                    self.assertIsInstance(result, SSL.Error, sni)
                for sni in HOSTILE_RAW_SNI:
                    answer = await deferToThread(raw_hello, port, sni)
                    # A TLS alert record (or a closed connection), no ServerHello.
                    self.assertIn(answer[:1], (b"", b"\x15"), sni)
                for sni in (b"GOOD.EXAMPLE", b"Good.Example", b"good.example."):
                    cert = await deferToThread(openssl_handshake, port, sni)
                    self.assertEqual(cert, self.good_certificate(), sni)
            self.assertEqual(accesses, [])
            self.assertEqual(sorted(os.listdir(self.directory)), listing)
            self.assertEqual([e for e in self.events if isinstance(e, Obtaining)], [])
            self.assertEqual(self.clients, clients)
            cert = await deferToThread(openssl_handshake, port, GOOD.encode())
            self.assertEqual(cert, self.good_certificate())

        return Deferred.fromCoroutine(check())

    def good_certificate(self) -> Any:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.good[1].as_bytes())

    def test_ten_thousand_random_names_a_second(self) -> None:
        """
        The SNI callback handles 10,000 random hostile names well within a
        second, touches no file, builds no OpenSSL context and grows no state.
        """
        index = CertificateIndex()
        self.successResultOf(index.load_from(self.store))
        creator = SNIConnectionCreator(index, acceptable_protocols=[b"http/1.1"])
        rng = random.Random(7)
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./\x00\xff*_"
        names = []
        for i in range(10_000):
            length = rng.choice((1, 8, 30, 64, 255, 300))
            names.append(bytes(rng.choice(alphabet) for _ in range(length)))
            if i % 5 == 0:
                names[-1] = b"../" * rng.randint(1, 20) + names[-1]
        connections = [_FakeConnection(n) for n in names]
        good = _FakeConnection(GOOD.encode())
        creator._on_server_name(good)  # warm: builds good.example's context once
        contexts = dict(creator._contexts)
        with file_accesses() as accesses:
            started = time.perf_counter()
            for connection in connections:
                creator._on_server_name(connection)
            elapsed = time.perf_counter() - started
        self.assertEqual(accesses, [])
        self.assertLess(elapsed, 1.0, f"10,000 SNI look-ups took {elapsed:.3f} s")
        self.assertEqual(dict(creator._contexts), contexts)
        self.assertEqual(sorted(index.names()), [GOOD])
        served = [c for c in connections if c.context is not None]
        self.assertEqual(served, [])

    def test_flood_does_not_slow_other_handshakes(self) -> Deferred[None]:
        """
        A separate process sends about 1,000 hostile ClientHellos a second
        (random names, ``../``, NUL, 300 bytes) while another measures
        ordinary handshakes: none of those fails and their median latency
        stays within a small factor of the quiet one.
        """

        async def check() -> None:
            _, port = await self.listen()
            quiet = await deferToThread(_run_json, MEASURE, port, 1.0)
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOOD, str(port), "1000"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.addCleanup(_stop, flood)
            assert flood.stdout is not None
            flood.stdout.readline()  # "started"
            loaded = await deferToThread(_run_json, MEASURE, port, 1.5)
            report = await deferToThread(_stop, flood)
            self.assertEqual(quiet["failures"], 0)
            self.assertEqual(loaded["failures"], 0)
            self.assertGreater(report["sent"], 800, report)
            self.assertEqual(report["served"], 0, report)
            base = statistics.median(quiet["latencies"])
            under = statistics.median(loaded["latencies"])
            print(
                f"\nhandshake median quiet {base * 1000:.1f} ms, under flood "
                f"{under * 1000:.1f} ms ({report['sent'] / report['seconds']:.0f} hostile/s)"
            )
            self.assertLess(under, base * 4 + 0.010)

        return Deferred.fromCoroutine(check())


class _FakeConnection:
    """What the SNI callback uses of an ``SSL.Connection``."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.context: Any = None

    def get_servername(self) -> bytes:
        return self.name

    def set_context(self, context: Any) -> None:
        self.context = context

    def get_app_data(self) -> Any:
        return None


MEASURE = r"""
import json, socket, ssl, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
latencies, failures = [], 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="good.example") as tls:
                pass
        latencies.append(time.perf_counter() - started)
    except OSError:
        failures += 1
print(json.dumps({"latencies": latencies, "failures": failures}))
"""

FLOOD = r"""
import json, os, random, socket, sys, time
port, rate = int(sys.argv[1]), float(sys.argv[2])
def u16(n): return n.to_bytes(2, "big")
def ext(k, b): return u16(k) + u16(len(b)) + b
def hello(sni):
    ciphers = b"".join(u16(c) for c in (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F))
    entry = b"\x00" + u16(len(sni)) + sni
    exts = ext(0, u16(len(entry)) + entry) + ext(10, u16(4) + u16(0x1D) + u16(0x17))
    exts += ext(13, u16(4) + u16(0x0403) + u16(0x0804)) + ext(43, b"\x04\x03\x04\x03\x03")
    share = u16(0x1D) + u16(32) + os.urandom(32)
    exts += ext(51, u16(len(share)) + share)
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + u16(len(ciphers)) + ciphers
            + b"\x01\x00" + u16(len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + u16(len(hs)) + hs
rng = random.Random(3)
alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./\x00\xff"
import select
select_stdin = sys.stdin
print("started", flush=True)
sent = served = errors = 0
started = time.monotonic()
while True:
    if select.select([select_stdin], [], [], 0)[0]:
        break
    due = started + sent / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    name = bytes(rng.choice(alphabet) for _ in range(rng.choice((5, 30, 120, 250, 300))))
    if rng.random() < 0.3:
        name = b"../" * 5 + name
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(hello(name))
            first = s.recv(5)
            if first[:1] == b"\x16":
                served += 1
    except OSError:
        errors += 1
    sent += 1
print(json.dumps({"sent": sent, "served": served, "errors": errors,
                  "seconds": time.monotonic() - started}), flush=True)
"""


def _run_json(script: str, *args: Any) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def _stop(process: subprocess.Popen[str]) -> Any:
    if process.poll() is not None:
        return None
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write("stop\n")
        process.stdin.flush()
        line = process.stdout.readline()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return json.loads(line) if line else None


class HostileHTTP01Tests(SynchronousTestCase):
    def test_hostile_paths_never_touch_files(self) -> None:
        """Traversal, NUL and encoded paths under the challenge directory: 404, no file access."""
        responder = HTTP01Responder()
        root = http01_root(responder)
        with file_accesses() as accesses:
            for path in (
                b"../../etc/passwd",
                b"..%2f..%2fetc%2fpasswd",
                b"token\x00.txt",
                b"%00",
                b"a" * 5000,
                b"token/extra",
            ):
                segments = [b".well-known", b"acme-challenge", *path.split(b"/")]
                request = DummyRequest(segments)
                resource = root
                while request.postpath and not getattr(resource, "isLeaf", False):
                    segment = request.postpath.pop(0)
                    request.prepath.append(segment)
                    resource = resource.getChildWithDefault(segment, request)
                body = resource.render(request)
                self.assertEqual(request.responseCode, 404, path)
                self.assertNotIn(b"root:", body if isinstance(body, bytes) else b"")
        self.assertEqual(accesses, [])


# -- fuzzed ACME answers ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
PROBLEM_TYPES = [
    "urn:ietf:params:acme:error:" + c
    for c in (
        "badNonce",
        "rateLimited",
        "malformed",
        "serverInternal",
        "accountDoesNotExist",
        "unauthorized",
        "orderNotReady",
        "compound",
        "nonsense",
    )
]
problem_documents = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(PROBLEM_TYPES) | json_values,
        "detail": json_values,
        "status": json_values,
        "identifier": json_values
        | st.fixed_dictionaries({"type": json_values, "value": json_values}),
        "subproblems": st.lists(
            json_values
            | st.fixed_dictionaries(
                {
                    "type": st.sampled_from(PROBLEM_TYPES) | json_values,
                    "detail": json_values,
                    "identifier": json_values,
                }
            ),
            max_size=3,
        )
        | json_values,
    },
)
STAGES = [
    "/dir",
    "/nonce",
    "/new-acct",
    "/new-order",
    "/authz/",
    "/chall/",
    "/finalize/",
    "/order/",
    "/cert/",
    "/ari/",
]
KNOWN_KEYS = [
    "status",
    "identifiers",
    "authorizations",
    "finalize",
    "certificate",
    "challenges",
    "identifier",
    "type",
    "url",
    "token",
    "error",
    "expires",
    "wildcard",
    "contact",
    "newNonce",
    "newAccount",
    "newOrder",
    "renewalInfo",
    "meta",
    "suggestedWindow",
    "start",
    "end",
    "explanationURL",
    "orders",
    "key",
    "validated",
]

mutations = st.one_of(
    st.tuples(st.just("body"), st.binary(max_size=200)),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("set"), st.sampled_from(KNOWN_KEYS), json_values),
    st.tuples(st.just("delete"), st.sampled_from(KNOWN_KEYS)),
    st.tuples(
        st.just("nested"), st.sampled_from(KNOWN_KEYS), st.sampled_from(KNOWN_KEYS), json_values
    ),
    # 1xx are not final answers: the HTTP layer itself waits for another one.
    st.tuples(st.just("problem"), st.integers(min_value=200, max_value=599), problem_documents),
    st.tuples(st.just("status"), st.integers(min_value=200, max_value=599)),
    st.tuples(
        st.just("header"),
        st.sampled_from(["Retry-After", "Location", "Link", "Content-Type", "Replay-Nonce"]),
        st.text(max_size=40),
    ),
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=400)),
)


def _mutate(reply: Reply, mutation: tuple[Any, ...]) -> Reply:
    code, headers, body = reply
    headers = dict(headers)
    kind = mutation[0]
    if kind == "body":
        return code, headers, mutation[1]
    if kind == "json":
        return code, headers, json.dumps(mutation[1]).encode()
    if kind == "truncate":
        return code, headers, body[: mutation[1]]
    if kind == "status":
        return mutation[1], headers, body
    if kind == "header":
        headers[mutation[1]] = mutation[2]
        return code, headers, body
    if kind == "problem":
        headers["Content-Type"] = "application/problem+json"
        return mutation[1], headers, json.dumps(mutation[2]).encode()
    try:
        document = json.loads(body)
    except ValueError:
        return code, headers, body
    if not isinstance(document, dict):
        return code, headers, body
    if kind == "set":
        document[mutation[1]] = mutation[2]
    elif kind == "delete":
        document.pop(mutation[1], None)
    elif kind == "nested":
        inner = document.get(mutation[1])
        targets = inner if isinstance(inner, list) else [inner]
        for target in targets:
            if isinstance(target, dict):
                target[mutation[2]] = mutation[3]
    return code, headers, json.dumps(document).encode()


class FuzzCA(FakeCA):
    """The client tests' fake CA, with the first answer at one stage mutated."""

    def __init__(self, clock: Clock, stage: str, mutation: tuple[Any, ...]) -> None:
        super().__init__(clock, ari=True)
        self.stage = stage
        self.mutation = mutation
        self.mutated = 0

    def _maybe(self, path: str, reply: Reply) -> Reply:
        if not self.mutated and path.startswith(self.stage):
            self.mutated += 1
            return _mutate(reply, self.mutation)
        return reply

    def route(self, seen: Any) -> Reply:
        return self._maybe(seen.path, super().route(seen))

    def route_get(self, seen: Any) -> Reply:
        return self._maybe(seen.path, super().route_get(seen))


def _fuzz_flow(stage: str, mutation: tuple[Any, ...]) -> tuple[FuzzCA, Deferred[Any]]:
    from treq.testing import StubTreq

    clock = Clock()
    ca = FuzzCA(clock, stage, mutation)

    async def flow() -> Any:
        client = await Client.from_url(
            clock, BASE + "/dir", _ACCOUNT_KEY, http=StubTreq(ca), timeout=5, poll_timeout=30
        )
        await client.start(email="fuzz@example.com")
        issued = await obtain_certificate(client, ["fuzz.example"], [Responder("http-01")])
        await client.renewal_info(issued.certificate)
        return issued

    d = Deferred.fromCoroutine(flow())
    drive(clock, d)
    return ca, d


from josepy.jwk import JWKEC  # noqa: E402

_ACCOUNT_KEY = JWKEC(key=ec_key())


class FuzzedACMETests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(stage=st.sampled_from(STAGES), mutation=mutations)
    def test_malformed_answers_give_typed_errors(
        self, stage: str, mutation: tuple[Any, ...]
    ) -> None:
        """
        Whatever one answer of the CA is (any status, body, JSON shape,
        problem document or header), the client and the issuance end: with
        a certificate or with a :class:`txacme.errors.TxACMEError`.
        """
        ca, d = _fuzz_flow(stage, mutation)
        self.assertTrue(d.called, f"hung at {stage} with {mutation!r}")
        failures: list[Any] = []
        d.addErrback(failures.append)
        if failures:
            error = failures[0].value
            if not isinstance(error, errors.TxACMEError):
                raise AssertionError(
                    f"{stage} answered {mutation!r}: {type(error).__name__}: {error}"
                ) from error
            self.assertTrue(str(error))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(stage=st.sampled_from(STAGES[2:]), mutation=mutations)
    def test_service_survives_malformed_answers(
        self, stage: str, mutation: tuple[Any, ...]
    ) -> None:
        """
        The service, given a client talking to such a CA: the attempt ends
        with a typed failure (or a certificate), and the service runs on.
        """
        from treq.testing import StubTreq

        clock = Clock()
        clock.advance(time.time())
        ca = FuzzCA(clock, stage, mutation)
        client = self.successResultOf(
            Client.from_url(
                clock,
                BASE + "/dir",
                JWKEC(key=ec_key()),
                http=StubTreq(ca),
                timeout=5,
                poll_timeout=30,
            )
        )
        store = MemoryStore({"fuzz.example": []})
        service = AcmeIssuingService(store, None, clock, [Responder("http-01")], client=client)
        events: list[ServiceEvent] = []
        service.subscribe(events.append)
        service.startService()
        drive(clock, service.when_certs_valid())
        for _ in range(300):
            if any(isinstance(e, Failed) for e in events) or store.certs["fuzz.example"]:
                break
            clock.advance(1)
        self.assertTrue(service.running)
        for event in events:
            if isinstance(event, Failed):
                self.assertIsInstance(
                    event.failure.value,
                    errors.TxACMEError,
                    f"{stage} answered {mutation!r}: {event.failure.value!r}",
                )
        self.successResultOf(service.stopService())


# -- fuzzed endpoint strings ---------------------------------------------------------------

_keyword = st.sampled_from(
    sorted(OWN_KEYWORDS) + ["dns", "tsig_key", "tsig_secret", "dns_server", "interface", "backlog"]
)
_value = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "nan",
            "inf",
            "1e400",
            "../../etc",
            "/dev/null",
            "\x00",
            "tls-alpn-01,http-01",
            "acme-tls/1",
            "h2,,",
            "ec256",
            "RSA4096",
            "https://ca.example/dir",
            "http://ca.example/dir",
            "a@b",
            "x" * 500,
        ]
    ),
)
SECRET = "c2VjcmV0LWZ1enotdmFsdWUtMTIzNDU2Nzg5MA"


class FuzzedEndpointStringTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @example(prefix="le", args=["/c", "tcp", "443"], kwargs={"alpn": "h2,\x80"}, secret_in=None)
    @given(
        prefix=st.sampled_from(["le", "lets", "acme"]),
        args=st.lists(st.text(max_size=30), max_size=4),
        kwargs=st.dictionaries(_keyword, _value, max_size=6),
        secret_in=st.sampled_from(["eab_hmac", "tsig_secret", None]),
    )
    def test_structured_fuzz_gives_clear_errors(
        self, prefix: str, args: list[str], kwargs: dict[str, str], secret_in: str | None
    ) -> None:
        """
        Any mix of our keywords, the sub-endpoint's and junk values either
        parses or raises ConfigurationError whose message names what is
        wrong (a keyword, a value, the prefix) and never shows a secret.
        """
        directory = {"le": "https://le.example/dir", "lets": "https://lets.example/dir"}.get(prefix)
        if secret_in is not None:
            kwargs = {**kwargs, secret_in: SECRET}
        try:
            parse_endpoint_string_parts(prefix, directory, args, kwargs)
        except errors.ConfigurationError as e:
            message = str(e)
            self.assertNotIn(SECRET, message)
            hints = [prefix, "directory", *kwargs, *(repr(v)[1:-1][:20] for v in kwargs.values())]
            self.assertTrue(any(h and h in message for h in hints), f"unclear error: {message!r}")

    @settings(max_examples=300, deadline=None)
    @example(kind="tcp", rest="http")
    @example(kind="nonsense", rest="")
    @given(
        kind=st.sampled_from(["tcp", "tcp6", "unix", "ssl", "systemd", "nonsense", ""]),
        rest=st.text(max_size=30),
    )
    def test_server_from_string_gives_clear_errors(self, kind: str, rest: str) -> None:
        """
        Through Twisted's ``serverFromString`` (the plugins), with an existing
        certificate directory and a valid ``directory=``, and a fuzzed
        sub-endpoint: an endpoint, or a ConfigurationError naming the
        sub-endpoint, never Twisted's bare ``ValueError`` / ``TypeError``.
        """
        certs = _certs_directory()
        description = f"acme:{certs}:{kind}:{rest}:directory=https\\://ca.example/dir"
        try:
            endpoints._parse(description)
        except Exception:
            return  # Twisted's own splitter refused it, before txacme.
        try:
            endpoints.serverFromString(reactor, description)
        except errors.ConfigurationError as e:
            message = str(e)
            self.assertTrue(
                any(w in message for w in ("endpoint", "acme:", *OWN_KEYWORDS)),
                f"unclear error: {message!r}",
            )


def _certs_directory() -> str:
    """A certificate directory under the (temporary) working directory of the tests."""
    path = os.path.abspath("hostile-endpoint-certs")
    os.makedirs(path, exist_ok=True)
    return path


# -- on-demand issuance: only what the policy allows ------------------------------------

_hello_bytes = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda sni, cut, flip: _damaged(client_hello(sni), cut, flip),
        st.binary(min_size=1, max_size=300),
        st.integers(min_value=0, max_value=700),
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=699), st.integers(min_value=0, max_value=255)
            ),
            max_size=3,
        ),
    ),
)


def _damaged(hello: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(hello[: cut or None])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    return bytes(data)


class OnDemandHostileTests(SynchronousTestCase):
    """
    The on-demand path reads the ClientHello itself (before OpenSSL): any
    bytes parse without an exception, and only names the policy allows are
    ever issued, whatever a flood of hostile names asks for.
    """

    @settings(max_examples=500, deadline=None)
    @given(data=_hello_bytes)
    def test_client_hello_parser_takes_any_bytes(self, data: bytes) -> None:
        from txacme.serving.hello import NEED_MORE, ClientHello, parse_client_hello

        result = parse_client_hello(data)
        self.assertTrue(result is None or result is NEED_MORE or isinstance(result, ClientHello))
        if isinstance(result, ClientHello) and result.server_name is not None:
            self.assertTrue(result.server_name.isascii())

    def test_only_allowed_names_are_issued(self) -> None:
        from txacme.issuing.ondemand import OnDemandIssuer, OnDemandPolicy
        from txacme.serving.hello import ClientHello, parse_client_hello

        clock = Clock()
        asked: list[str] = []

        def issue(name: str) -> Deferred[Any]:
            asked.append(name)
            return Deferred()  # never done: each name is asked for once

        policy = OnDemandPolicy(allow=["*.allowed.example"], clock=clock)
        issuer = OnDemandIssuer(
            policy, issue, CertificateIndex(), rate=10**6, max_pending=10**6, clock=clock
        )
        rng = random.Random(11)
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-./\x00\xff*_"
        names = [
            bytes(rng.choice(alphabet) for _ in range(rng.choice((3, 20, 80, 250))))
            for _ in range(10_000)
        ]
        names += [
            b"allowed.example",
            b"*.allowed.example",
            b"../x.allowed.example",
            b"x.allowed.example.evil",
            b"a.b.allowed.example",
            b"x.allowed.example\x00",
            b"Ok.Allowed.Example",
            b"ok.allowed.example.",
        ]
        with file_accesses() as accesses:
            for name in names:
                hello = parse_client_hello(client_hello(name))
                if isinstance(hello, ClientHello):
                    issuer.hello_hook(hello)
        self.assertEqual(accesses, [])
        self.assertEqual(asked, ["ok.allowed.example"])
