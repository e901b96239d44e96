"""
Reliability when the CA misbehaves: Pebble, with the fault-injecting proxy of
:mod:`tests.harness.faultproxy` between the client and Pebble for the faults Pebble
cannot produce itself.

The issuing service runs on a :class:`~twisted.internet.task.Clock` set to the
real time, so its backoff schedule is checked exactly (the test advances the
clock) while the client talks to the CA over real loopback connections. Backoff
jitter is removed with a random generator whose ``uniform`` gives the middle of
the range: 60, 600, 6000 s.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.harness.faultproxy import RESET, STALL, FaultProxy, Rewrite, Seen, problem, respond
from tests.harness.pebble import Pebble, shared_pebble, start_pebble
from tests.harness.tlsclient import http_get, tls_exchange
from txacme import errors
from txacme.challenges.http01 import HTTP01Responder, http01_root
from txacme.issuing.events import Failed, Obtained, Obtaining, ServiceEvent
from txacme.issuing.service import AcmeIssuingService
from txacme.keys import generate_private_key, jwk_for
from txacme.protocol.client import Client
from txacme.serving import endpoint as service_module
from txacme.serving.endpoint import AutoTLSEndpoint
from txacme.stores.directory import DirectoryStore
from txacme.testing import FakeClient, FakeIssuer, MemoryStore, make_pem_objects

NEW_ORDER = r"^/order-plz$"
AUTHZ = r"^/authZ/"
FINALIZE = r"^/finalize-order/"
CERTIFICATE = r"^/certZ/"
PAGE = b"still serving\n"


class MiddleRandom(random.Random):
    """``uniform`` gives the middle of the range: backoff without jitter."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def site() -> Site:
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/plain"))
    return Site(root)


def handshake(port: int, name: str, cafile: str | None = None) -> x509.Certificate:
    """Blocking: a TLS handshake plus GET / with SNI ``name``; the served certificate."""
    answer = tls_exchange(port, name, cafile, request=http_get(name))
    assert answer.der is not None
    assert answer.data.endswith(PAGE), answer.data
    return answer.certificate


def pending_authz(seen: Seen, body: bytes) -> bytes:
    """An authorization (and its challenges) rewritten as still ``pending``."""
    document = json.loads(body)
    document["status"] = "pending"
    for challenge in document.get("challenges", []):
        challenge["status"] = "pending"
        challenge.pop("validated", None)
    return json.dumps(document).encode()


def leaf(pem_objects: list[Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem_objects[1].as_bytes())


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


async def wait_for_client_connections_to_close(limit: float = 5.0) -> None:
    """Let the reactor finish closing TCP client connections (at most ``limit`` s)."""
    from twisted.internet import tcp

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        selectables = list(reactor.getReaders()) + list(reactor.getWriters())
        if not any(isinstance(s, tcp.Client) for s in selectables):
            return
        await deferLater(reactor, 0.01, lambda: None)


class CAFaultTestCase(TestCase):
    """
    A store, a proxy in front of a Pebble, an http-01 responder on the
    Pebble's validation port, a client creator going through the proxy, and a
    service on a fake clock whose events the test can wait for.
    """

    timeout = 90

    def setUp(self) -> None:
        # Registered first, so it runs last: requests the client abandoned (a
        # timeout on a stalled CA) are aborted, and the abort needs a few reactor
        # turns to finish; trial's check of a clean reactor comes right after.
        self.addCleanup(lambda: Deferred.fromCoroutine(wait_for_client_connections_to_close()))
        self.clock = Clock()
        self.clock.advance(time.time())
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.store = DirectoryStore(self.directory)
        self.account_key = jwk_for(generate_private_key())
        self.clients: list[Client] = []
        self.events: list[ServiceEvent] = []
        self.marks: list[int] = []  # requests the proxy had seen at each event
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []
        self.responder = HTTP01Responder()
        self.client_timeout = 5.0
        self.client_options: dict[str, Any] = {}

    def use_ca(self, pebble: Pebble, *, http01: bool = True) -> FaultProxy:
        """Put the proxy in front of ``pebble`` (and answer http-01 on its port)."""
        self.pebble = pebble
        self.proxy = FaultProxy(pebble.directory_url, pebble.ca_file)
        self.addCleanup(self.proxy.stop)
        self.addCleanup(self._close_clients)
        if http01:
            port = reactor.listenTCP(
                pebble.http_port, Site(http01_root(self.responder)), interface="127.0.0.1"
            )
            self.addCleanup(port.stopListening)
        return self.proxy

    def _close_clients(self) -> Deferred[Any]:
        return DeferredList([c.close() for c in self.clients])

    def client_creator(self) -> Deferred[Client]:
        def keep(client: Client) -> Client:
            self.clients.append(client)
            return client

        return Client.from_url(
            reactor,
            self.proxy.directory_url,
            self.account_key,
            ca_file=self.proxy.ca_file,
            timeout=self.client_timeout,
            **self.client_options,
        ).addCallback(keep)

    def make_service(self, **kwargs: Any) -> AcmeIssuingService:
        service = AcmeIssuingService(
            self.store,
            self.client_creator,
            self.clock,
            [self.responder],
            rng=MiddleRandom(),
            **kwargs,
        )
        service.subscribe(self.on_event)
        self.addCleanup(service.stopService)
        return service

    def want(self, *names: str) -> None:
        for name in names:
            with open(os.path.join(self.directory, name + ".pem"), "wb"):
                pass

    # -- events -------------------------------------------------------------------------

    def on_event(self, event: ServiceEvent) -> None:
        self.events.append(event)
        self.marks.append(len(self.proxy.seen))
        for waiter in list(self._waiters):
            check, d = waiter
            if check():
                self._waiters.remove(waiter)
                # Resume the test once the service has finished handling the event.
                reactor.callLater(0.01, d.callback, None)

    def of(self, kind: type[Any], name: str | None = None) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and (name is None or e.name == name)]

    def until(self, check: Callable[[], bool], what: str, timeout: float = 30) -> Deferred[None]:
        """Fire once ``check()`` is true after some event (real-time ``timeout``)."""
        d: Deferred[None] = Deferred()
        if check():
            d.callback(None)
            return d
        waiter = (check, d)
        self._waiters.append(waiter)

        def expire() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                d.errback(AssertionError(f"timed out waiting for {what}; events: {self.events}"))

        timer = reactor.callLater(timeout, expire)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def count(self, kind: type[Any], n: int, name: str | None = None) -> Deferred[None]:
        return self.until(lambda: len(self.of(kind, name)) >= n, f"{n} {kind.__name__} {name}")

    async def quiet(self) -> None:
        """Let the reactor run a little: room for any request made too early."""
        await deferLater(reactor, 0.05, lambda: None)

    async def retry(self, failed: Failed, delay: float) -> None:
        """
        Advance the clock by ``delay``: check that the backoff after ``failed``
        is ``delay`` and that no request reached the CA before it was over.
        """
        self.assertEqual(self.retry_delay(failed), delay)
        mark = next(m for e, m in zip(self.events, self.marks, strict=True) if e is failed)
        self.clock.advance(delay - 1)
        await self.quiet()
        self.assertEqual(self.proxy.seen[mark:], [], f"requests before the {delay} s backoff")
        self.clock.advance(1)

    def retry_delay(self, event: Failed) -> float:
        return (
            event.retry_at - datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        ).total_seconds()


class NonceRejectionTests(CAFaultTestCase):
    def test_half_of_nonces_rejected(self) -> Deferred[None]:
        """
        With Pebble rejecting 50% of good nonces, every issuance still succeeds
        at its first attempt (the client retries ``badNonce`` with the fresh
        nonce each rejection carries).
        """
        pebble = start_pebble(env={"PEBBLE_WFE_NONCEREJECT": "50"})
        self.addCleanup(pebble.stop)
        proxy = self.use_ca(pebble)
        names = [f"nonce{i}.example" for i in range(5)]
        self.want(*names)
        service = self.make_service()

        async def check() -> None:
            service.startService()
            await service.when_certs_valid()
            self.assertEqual(self.of(Failed), [])
            self.assertEqual(sorted(e.name for e in self.of(Obtained)), names)
            entries = await self.store.as_dict()
            self.assertTrue(all(entries[n] for n in names))
            rejected = [s for s in proxy.requests("POST") if s.status == 400]
            self.assertGreater(len(rejected), 5, "Pebble did not reject nonces")

        return Deferred.fromCoroutine(check())


class CADownAtStartTests(CAFaultTestCase):
    def test_serves_stored_then_issues_when_ca_returns(self) -> Deferred[None]:
        """
        The CA resets every connection at start-up: AutoTLSEndpoint still
        listens and serves the stored certificate, the missing name is retried
        at 60 s then 600 s (no request in between), and is issued and served
        once the CA answers again.
        """
        pebble = shared_pebble()
        proxy = self.use_ca(pebble, http01=False)
        now = datetime.now(timezone.utc)
        stored = make_pem_objects(["up.example"], now - timedelta(days=1), now + timedelta(days=89))
        self.successResultOf(self.store.store("up.example", stored))
        self.want("later.example")
        proxy.inject(RESET, times=None)
        endpoint = AutoTLSEndpoint(
            self.clock,
            TCP4ServerEndpoint(reactor, pebble.tls_port, interface="127.0.0.1", backlog=128),
            self.store,
            self.client_creator,
            watch_interval=None,
            service_options={"rng": MiddleRandom()},
        )
        on_event = self.on_event

        class Observed(AcmeIssuingService):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.subscribe(on_event)

        # AutoTLSEndpoint builds its service in listen(): watch its events from the start.
        self.patch(service_module, "AcmeIssuingService", Observed)
        roots = os.path.join(self.directory, "..", "roots.pem")
        with open(roots, "wb") as f:
            f.write(b"".join(pebble.roots()))

        async def check() -> None:
            port = await endpoint.listen(site())
            self.addCleanup(port.stopListening)
            # listen() fired after the first attempt for later.example failed.
            await self.count(Failed, 1, "later.example")
            served = await deferToThread(handshake, pebble.tls_port, "up.example")
            self.assertEqual(der(served), der(leaf(stored)))
            with self.assertRaises(ssl.SSLError):
                await deferToThread(handshake, pebble.tls_port, "later.example")

            await self.retry(self.of(Failed, "later.example")[0], 60)
            await self.count(Failed, 2, "later.example")
            self.assertEqual(len(self.of(Obtaining, "later.example")), 2)
            proxy.clear()  # The CA comes back.
            await self.retry(self.of(Failed, "later.example")[1], 600)
            await self.count(Obtained, 1, "later.example")
            issued = await deferToThread(handshake, pebble.tls_port, "later.example", roots)
            self.assertEqual(issued.subject.rfc4514_string(), "CN=later.example")
            served = await deferToThread(handshake, pebble.tls_port, "up.example")
            self.assertEqual(der(served), der(leaf(stored)))

        d = Deferred.fromCoroutine(check())
        return d.addBoth(self._flush, ResponseNeverReceived)

    def _flush(self, result: Any, *kinds: type[BaseException]) -> Any:
        self.flushLoggedErrors(*kinds)
        return result


class CARestartTests(CAFaultTestCase):
    def test_killed_mid_order_then_replaced(self) -> Deferred[None]:
        """
        Pebble is stopped right after it created an order; a new Pebble (which
        knows no account) takes its place behind the same address. The
        service recovers by itself: the responders are stopped after the
        failed attempt and the next attempt registers a new account and
        obtains the certificate.
        """
        first = start_pebble()
        self.addCleanup(first.stop)
        proxy = self.use_ca(first)
        self.want("restart.example")
        killed: list[Seen] = []

        def kill_after_new_order(seen: Seen) -> None:
            if not killed and seen.method == "POST" and seen.path == "/order-plz":
                killed.append(seen)
                first.stop()

        proxy.after(kill_after_new_order)
        service = self.make_service()

        async def check() -> None:
            service.startService()
            await self.count(Failed, 1)
            self.assertEqual(len(killed), 1)
            self.assertEqual(self.responder.active_tokens(), frozenset())
            second = Pebble(http_port=first.http_port)
            self.addCleanup(second.stop)
            proxy.set_upstream(second.directory_url, second.ca_file)
            # One more attempt, after the first backoff step, is enough.
            await self.retry(self.of(Failed)[0], 60)
            await self.count(Obtained, 1)
            self.assertEqual(len(self.of(Failed)), 1, self.events)
            accounts = [
                s
                for s in proxy.requests("POST", "^/sign-me-up$")
                if s.status == 201 and s.time >= killed[0].time
            ]
            self.assertEqual(len(accounts), 1, "a new account at the new CA")
            entry = await self.store.get("restart.example")
            self.assertIn(
                x509.load_pem_x509_certificate(second.intermediates()[0]).subject,
                [leaf(entry).issuer],
            )

        d = Deferred.fromCoroutine(check())
        return d.addBoth(lambda r: (self.flushLoggedErrors(ConnectionRefusedError), r)[1])


class ServerErrorTests(CAFaultTestCase):
    async def attempt_fails(self, n: int, delay: float | None) -> Failed:
        """Advance to attempt ``n`` (after ``delay``), expect it to fail; check no early retry."""
        if delay is not None:
            await self.retry(self.of(Failed)[-1], delay)
        await self.count(Failed, n)
        self.assertEqual(self.responder.active_tokens(), frozenset())
        return self.of(Failed)[n - 1]

    def test_500_503_and_resets(self) -> Deferred[None]:
        """
        A 500 problem, a 503 HTML page and a reset during finalize each fail
        one attempt with a typed, readable error and the backoff schedule
        (60, 600, 6000 s); a reset of a POST-as-GET (the certificate download)
        is resent at once; the fourth attempt succeeds.
        """
        proxy = self.use_ca(shared_pebble())
        self.want("errors.example")
        proxy.inject(problem(500, "serverInternal", "database on fire"), path=NEW_ORDER)
        service = self.make_service()

        async def check() -> None:
            service.startService()
            failed = await self.attempt_fails(1, None)
            self.assertEqual(failed.problem, "urn:ietf:params:acme:error:serverInternal")
            self.assertEqual(failed.detail, "database on fire")

            proxy.inject(
                respond(503, b"<html><h1>Down for maintenance</h1></html>"), path=NEW_ORDER
            )
            failed = await self.attempt_fails(2, 60)
            self.assertEqual(failed.problem, "urn:ietf:params:acme:error:serverInternal")
            self.assertIn("503", failed.detail)
            self.assertIn("Down for maintenance", failed.detail)

            proxy.inject(RESET, method="POST", path=FINALIZE)
            failed = await self.attempt_fails(3, 600)
            self.assertEqual(failed.problem, "CAUnreachable")
            self.assertIn("the connection was lost before an answer", failed.detail)

            proxy.inject(RESET, method="POST", path=CERTIFICATE)
            await self.retry(failed, 6000)
            await self.count(Obtained, 1)
            # The reset download, then the one resent at once that succeeded.
            # (Pebble rejects a few good nonces: a 400 badNonce retry in between
            # is the client's nonce handling, not a second download.)
            downloads = [
                (s.fault, s.status) for s in proxy.requests("POST", CERTIFICATE) if s.status != 400
            ]
            self.assertEqual(downloads, [("reset", None), (None, 200)])
            self.assertTrue(service.running)
            self.assertEqual(len(self.of(Failed)), 3)
            self.assertTrue(await self.store.get("errors.example"))

        d = Deferred.fromCoroutine(check())
        return d.addBoth(lambda r: (self.flushLoggedErrors(ResponseNeverReceived), r)[1])


class RateLimitTests(CAFaultTestCase):
    def test_retry_after_obeyed(self) -> Deferred[None]:
        """
        ``rateLimited`` with ``Retry-After: 3600``: no request reaches the CA
        before the hour is over, ``issue_cert`` meanwhile fails at once with
        the problem (without a request), then issuance succeeds. A 503 with
        ``Retry-After: 900`` (above the 600 s backoff) is honoured too.
        """
        proxy = self.use_ca(shared_pebble())
        self.want("limited.example")
        proxy.inject(problem(429, "rateLimited", "too many certificates", 3600), path=NEW_ORDER)
        service = self.make_service()

        async def check() -> None:
            service.startService()
            await self.count(Failed, 1)
            failed = self.of(Failed)[0]
            self.assertEqual(failed.problem, "urn:ietf:params:acme:error:rateLimited")
            self.assertEqual(self.retry_delay(failed), 3600)
            refused = service.issue_cert("limited.example")
            error = self.failureResultOf(refused, errors.RateLimited)
            self.assertEqual(error.value.retry_after, 3600)
            proxy.inject(respond(503, b"busy", retry_after=900), path=NEW_ORDER)
            await self.retry(failed, 3600)
            await self.count(Failed, 2)
            self.assertEqual(len(self.of(Obtaining)), 2)
            await self.retry(self.of(Failed)[1], 900)
            await self.count(Obtained, 1)

        return Deferred.fromCoroutine(check())


class SlowCATests(CAFaultTestCase):
    def test_every_request_times_out(self) -> Deferred[None]:
        """
        A CA that never answers: the directory fetch, a finalize and an
        authorization that stays ``pending`` forever each end with
        ``ACMETimeout`` after the configured time; the fourth attempt succeeds.
        """
        pebble = start_pebble(env={"PEBBLE_AUTHZREUSE": "0"})  # always a fresh authorization
        self.addCleanup(pebble.stop)
        proxy = self.use_ca(pebble)
        self.client_timeout = 0.5
        self.client_options = {"poll_timeout": 1.0}
        self.want("slow.example")
        proxy.inject(STALL, method="GET", path="^/dir$")
        service = self.make_service()

        async def check() -> None:
            started = time.monotonic()
            service.startService()
            await self.count(Failed, 1)
            self.assertEqual(self.of(Failed)[0].problem, "ACMETimeout")
            self.assertLess(time.monotonic() - started, 5)

            proxy.inject(STALL, method="POST", path=FINALIZE)
            self.clock.advance(60)
            await self.count(Failed, 2)
            self.assertEqual(self.of(Failed)[1].problem, "ACMETimeout")
            self.assertIn("finalize", self.of(Failed)[1].detail)

            proxy.inject(Rewrite(pending_authz), method="POST", path=AUTHZ, times=None)
            self.clock.advance(600)
            await self.count(Failed, 3)
            self.assertEqual(self.of(Failed)[2].problem, "ACMETimeout")
            self.assertIn("pending", self.of(Failed)[2].detail)
            self.assertEqual(self.responder.active_tokens(), frozenset())
            proxy.clear()

            self.clock.advance(6000)
            await self.count(Obtained, 1)
            await self.until(lambda: not proxy._stalled, "stalled requests closed by the client")

        return Deferred.fromCoroutine(check())

    def test_stop_while_a_request_hangs(self) -> Deferred[None]:
        """stopService returns promptly while the CA is not answering."""
        proxy = self.use_ca(shared_pebble())
        self.client_timeout = 60
        self.want("hang.example")
        proxy.inject(STALL, path=NEW_ORDER)
        service = self.make_service()

        async def check() -> None:
            service.startService()
            for _ in range(200):
                if proxy._stalled:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            self.assertTrue(proxy._stalled)
            started = time.monotonic()
            await service.stopService()
            self.assertLess(time.monotonic() - started, 1)
            self.assertEqual(self.of(Obtained), [])

        return Deferred.fromCoroutine(check())


class OneNameFailsTests(CAFaultTestCase):
    def test_failing_name_never_blocks_others(self) -> Deferred[None]:
        """
        Three names due for renewal, one at a time (max_concurrent=1); the CA
        hangs on the first order of bad.example and then always refuses it.
        The other names renew at once and again at their next renewal time,
        three years later, while bad.example keeps failing and backing off.
        """
        proxy = self.use_ca(shared_pebble())
        self.client_timeout = 0.5
        now = datetime.fromtimestamp(self.clock.seconds(), timezone.utc)
        names = ["bad.example", "good1.example", "good2.example"]
        for name in names:
            objects = make_pem_objects([name], now - timedelta(days=70), now + timedelta(days=20))
            self.successResultOf(self.store.store(name, objects))

        def for_bad(seen: Seen) -> bool:
            return "bad.example" in seen.identifiers()

        proxy.inject(STALL, path=NEW_ORDER, when=for_bad)
        proxy.inject(
            problem(400, "rejectedIdentifier", "not this one"),
            path=NEW_ORDER,
            when=for_bad,
            times=None,
        )
        service = self.make_service(max_concurrent=1)

        async def check() -> None:
            service.startService()
            await self.count(Obtained, 1, "good1.example")
            await self.count(Obtained, 1, "good2.example")
            self.assertEqual(self.of(Failed, "bad.example")[0].problem, "ACMETimeout")
            first = {n: leaf(await self.store.get(n)) for n in names}
            # Three and a half years on: the Pebble certificates (5 years) are due.
            self.clock.advance(3.5 * 365 * 86400)
            await self.count(Obtained, 2, "good1.example")
            await self.count(Obtained, 2, "good2.example")
            await self.count(Failed, 2, "bad.example")
            self.assertEqual(
                self.of(Failed, "bad.example")[1].problem,
                "urn:ietf:params:acme:error:rejectedIdentifier",
            )
            for name in ("good1.example", "good2.example"):
                self.assertNotEqual(leaf(await self.store.get(name)), first[name])
            self.assertEqual(leaf(await self.store.get("bad.example")), first["bad.example"])
            self.assertFalse(self.of(Failed, "good1.example") + self.of(Failed, "good2.example"))

        return Deferred.fromCoroutine(check())


class AccountLostUnitTests(TestCase):
    """The service's handling of ``accountDoesNotExist``, with fakes."""

    def make(self, *errors_: BaseException) -> tuple[AcmeIssuingService, list[FakeClient]]:
        clock = Clock()
        clock.advance(time.time())
        clients: list[FakeClient] = []

        def creator() -> FakeClient:
            clients.append(FakeClient())
            return clients[-1]

        outcomes = list(errors_)
        issuer = FakeIssuer(clock.seconds)

        def issue(client: Any, names: list[str], responders: Any, **kwargs: Any) -> Any:
            d = issuer(client, names, responders, **kwargs)
            if outcomes:
                issuer.calls[-1].fail(outcomes.pop(0))
            else:
                issuer.calls[-1].succeed()
            return d

        store = MemoryStore({"lost.example": []})
        service = AcmeIssuingService(store, creator, clock, [], issue=issue, rng=MiddleRandom())
        self.events: list[ServiceEvent] = []
        service.subscribe(self.events.append)
        self.issuer = issuer
        self.store = store
        return service, clients

    def test_account_lost_once_recovers_in_the_same_attempt(self) -> None:
        """One ``accountDoesNotExist``: a new client registers at once; no failure."""
        service, clients = self.make(account_lost())
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertEqual(len(clients), 2)
        self.assertEqual(clients[0].closed, 1)
        self.assertIs(self.issuer.calls[1].client, clients[1])
        self.assertEqual(
            [type(e).__name__ for e in self.events if isinstance(e, (Failed, Obtained))],
            ["Obtained"],
        )
        self.assertTrue(self.store.certs["lost.example"])

    def test_account_lost_twice_is_one_failure(self) -> None:
        """A second ``accountDoesNotExist`` in a row fails the attempt (no loop)."""
        service, clients = self.make(account_lost(), account_lost())
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.issuer.calls), 2)
        failed = [e for e in self.events if isinstance(e, Failed)]
        self.assertEqual(
            [f.problem for f in failed], ["urn:ietf:params:acme:error:accountDoesNotExist"]
        )


def account_lost() -> errors.ACMEProblem:
    return errors.ACMEProblem.from_json(
        {"type": "urn:ietf:params:acme:error:accountDoesNotExist", "detail": "no such account"},
        status=400,
    )


class ClientStartFailsTests(TestCase):
    def test_client_closed_when_its_account_cannot_be_set_up(self) -> None:
        """
        A client whose ``start()`` fails (the CA refuses the account: wrong
        EAB, terms...) is closed at once, not left with open connections.
        """
        clock = Clock()
        clock.advance(time.time())
        clients: list[FakeClient] = []

        class Refused(FakeClient):
            def start(self, email: str | None = None) -> Deferred[None]:
                super().start(email)
                return fail(account_lost())

        def creator() -> FakeClient:
            clients.append(Refused())
            return clients[-1]

        service = AcmeIssuingService(
            MemoryStore({"refused.example": []}),
            creator,
            clock,
            [],
            issue=FakeIssuer(clock.seconds, auto="succeed"),
            rng=MiddleRandom(),
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(clients), 1)
        self.assertEqual(clients[0].closed, 1)
        clock.advance(60)
        self.assertEqual([c.closed for c in clients], [1, 1])
