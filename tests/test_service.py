"""Tests for txacme.issuing.service.AcmeIssuingService with a fake clock, issuer and client."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.harness.logcapture import txacme_log_level
from txacme import errors
from txacme.issuing.events import (
    Emergency,
    Failed,
    Obtained,
    Obtaining,
    RenewalScheduled,
    ServiceEvent,
)
from txacme.issuing.service import AcmeIssuingService
from txacme.protocol.ari import ari_certificate_id
from txacme.testing import (
    FakeClient,
    FakeIssuer,
    FakeRenewalInfo,
    MemoryStore,
    make_pem_objects,
)

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
HOUR = 3600.0


class MiddleRandom(random.Random):
    """uniform() gives the middle of the range: backoff without jitter."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def rate_limited(retry_after: float) -> errors.ACMEProblem:
    return errors.ACMEProblem.from_json(
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many"},
        status=429,
        retry_after=retry_after,
    )


def stored_certificate(store: MemoryStore, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(store.certs[name][1].as_bytes())


class ServiceTestCase(TestCase):
    """Builds a service on a fake clock set to T0, a fake issuer and a fake client."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.rightNow = T0.timestamp()
        self.issuer = FakeIssuer(self.clock.seconds)
        self.client = FakeClient()
        self.events: list[ServiceEvent] = []
        self.panics: list[tuple[Failure, str]] = []
        self.stored: list[str] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), tz=timezone.utc)

    def make_service(self, store: MemoryStore, **kwargs: Any) -> AcmeIssuingService:
        kwargs.setdefault("client", self.client)
        kwargs.setdefault("issue", self.issuer)
        kwargs.setdefault("rng", MiddleRandom())
        kwargs.setdefault("panic", lambda failure, name: self.panics.append((failure, name)))
        kwargs.setdefault("on_stored", lambda name, objects: self.stored.append(name))
        service = AcmeIssuingService(store, clock=self.clock, responders=["responder"], **kwargs)
        service.subscribe(self.events.append)
        return service

    def start(self, service: AcmeIssuingService) -> None:
        service.startService()
        self.addCleanup(self.stop, service)

    def stop(self, service: AcmeIssuingService) -> Deferred[None] | None:
        return service.stopService() if service.running else None

    def of_type(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def entry(self, name: str, lifetime: timedelta, age: timedelta = timedelta(0)) -> list[Any]:
        start = self.now() - age
        return make_pem_objects([name], start, start + lifetime)


class ConstructionTests(ServiceTestCase):
    def test_client_or_creator(self) -> None:
        store = MemoryStore()
        self.assertRaises(errors.ConfigurationError, AcmeIssuingService, store, clock=self.clock)
        self.assertRaises(
            errors.ConfigurationError,
            AcmeIssuingService,
            store,
            lambda: succeed(self.client),
            self.clock,
            client=self.client,
        )

    def test_bad_options(self) -> None:
        store = MemoryStore()
        bad: list[dict[str, Any]] = [
            {"key_type": "dsa1024"},
            {"check_interval": 0},
            {"check_interval": timedelta(seconds=-1)},
            {"max_concurrent": 0},
            {"renewal_fraction": 1.5},
            {"emergency_fraction": 0.5},
            {"names": {"example.com": "www.example.com"}},
            {"names": {"example.com": ["bad name"]}},
        ]
        for options in bad:
            with self.subTest(options=options):
                self.assertRaises(
                    errors.ConfigurationError,
                    AcmeIssuingService,
                    store,
                    client=self.client,
                    clock=self.clock,
                    **options,
                )


class StartupTests(ServiceTestCase):
    def test_missing_issued_at_start(self) -> None:
        """An empty entry is issued at start-up, stored, and on_stored is called."""
        store = MemoryStore({"example.com": []})
        service = self.make_service(store, email="ops@example.com")
        valid = service.when_certs_valid()
        self.start(service)
        self.assertEqual(self.client.started, ["ops@example.com"])
        [call] = self.issuer.calls
        self.assertEqual(call.names, ["example.com"])
        self.assertEqual(call.responders, ["responder"])
        self.assertIs(call.client, self.client)
        self.assertEqual(call.kwargs, {"key_type": "ec256", "profile": None, "replaces": None})
        self.assertNoResult(valid)
        self.assertEqual(self.stored, [])
        issued = call.succeed()
        self.assertIsNone(self.successResultOf(valid))
        self.assertEqual(store.certs["example.com"], issued.pem_objects)
        self.assertEqual(self.stored, ["example.com"])
        obtained = self.of_type(Obtained)
        self.assertEqual(len(obtained), 1)
        self.assertEqual(obtained[0].not_after, issued.not_after)
        self.assertEqual(obtained[0].names, ("example.com",))
        # The next renewal is planned from the new certificate.
        scheduled = self.of_type(RenewalScheduled)
        self.assertEqual(scheduled[-1].due_at, self.now() + 60 * DAY)
        self.assertEqual(scheduled[-1].reason, "lifetime")

    def test_when_certs_valid_after_failure(self) -> None:
        """when_certs_valid fires even when the first attempt fails."""
        store = MemoryStore({"example.com": []})
        service = self.make_service(store)
        self.start(service)
        valid = service.when_certs_valid()
        self.assertNoResult(valid)
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        self.assertIsNone(self.successResultOf(valid))
        self.assertIsNone(self.successResultOf(service.when_certs_valid()))

    def test_when_certs_valid_ignores_valid_certificates(self) -> None:
        """A valid certificate due for ordinary renewal does not hold it up."""
        store = MemoryStore(
            {
                "valid.example": self.entry("valid.example", 90 * DAY),
                "due.example": self.entry("due.example", 90 * DAY, age=65 * DAY),
            }
        )
        service = self.make_service(store)
        self.start(service)
        [call] = self.issuer.calls
        self.assertEqual(call.names, ["due.example"])
        self.successResultOf(service.when_certs_valid())

    def test_when_certs_valid_waits_for_expired_and_emergency(self) -> None:
        store = MemoryStore(
            {
                "expired.example": self.entry("expired.example", 90 * DAY, age=91 * DAY),
                "urgent.example": self.entry("urgent.example", 90 * DAY, age=80 * DAY),
            }
        )
        service = self.make_service(store)
        self.start(service)
        valid = service.when_certs_valid()
        self.assertEqual(len(self.issuer.calls), 2)
        self.issuer.calls[0].succeed()
        self.assertNoResult(valid)
        self.issuer.calls[1].succeed()
        self.successResultOf(valid)

    def test_when_certs_valid_with_broken_store(self) -> None:
        store = MemoryStore()
        store.as_dict = lambda: fail(OSError("disk on fire"))
        service = self.make_service(store)
        self.start(service)
        self.successResultOf(service.when_certs_valid())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_client_created_once(self) -> None:
        created: list[FakeClient] = []

        def creator() -> Deferred[FakeClient]:
            created.append(FakeClient())
            return succeed(created[-1])

        store = MemoryStore({"a.example": [], "b.example": []})
        service = self.make_service(store, client=None, client_creator=creator, email="e@x")
        self.start(service)
        self.assertEqual(len(created), 1)
        self.assertEqual(created[0].started, ["e@x"])
        self.assertEqual([c.client for c in self.issuer.calls], created * 2)

    def test_client_recreated_after_network_failure(self) -> None:
        created: list[FakeClient] = []

        def creator() -> Deferred[FakeClient]:
            created.append(FakeClient())
            return succeed(created[-1])

        store = MemoryStore({"a.example": []})
        service = self.make_service(store, client=None, client_creator=creator)
        self.start(service)
        self.issuer.calls[0].fail(ConnectionRefusedError())
        self.flushLoggedErrors(ConnectionRefusedError)
        self.assertEqual(created[0].closed, 1)
        self.clock.advance(60)
        self.assertEqual(len(created), 2)
        self.assertIs(self.issuer.calls[1].client, created[1])
        # An ACME problem about the order keeps the client.
        self.issuer.calls[1].fail(errors.IssuanceFailed("authorization invalid"))
        self.clock.advance(600)
        self.assertEqual(len(created), 2)
        self.assertEqual(len(self.issuer.calls), 3)
        self.assertEqual(created[1].closed, 0)
        self.successResultOf(service.stopService())
        self.assertEqual(created[1].closed, 1)

    def test_given_client_not_closed(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        service.startService()
        self.issuer.calls[0].fail(ConnectionRefusedError())
        self.flushLoggedErrors(ConnectionRefusedError)
        self.clock.advance(60)
        self.assertEqual(self.client.started, [None, None])
        self.successResultOf(service.stopService())
        self.assertEqual(self.client.closed, 0)

    def test_client_creation_failure(self) -> None:
        """A client that cannot be created fails the attempt like any failure."""
        attempts: list[int] = []

        def creator() -> Deferred[FakeClient]:
            attempts.append(1)
            if len(attempts) == 1:
                return fail(ConnectionRefusedError())
            return succeed(self.client)

        store = MemoryStore({"a.example": []})
        service = self.make_service(store, client=None, client_creator=creator)
        self.start(service)
        self.flushLoggedErrors(ConnectionRefusedError)
        self.assertEqual(self.issuer.calls, [])
        [failed] = self.of_type(Failed)
        self.assertEqual(failed.problem, "ConnectionRefusedError")
        self.clock.advance(60)
        self.assertEqual(len(self.issuer.calls), 1)

    def test_key_and_profile(self) -> None:
        keys: list[object] = []

        def generate() -> object:
            keys.append(object())
            return keys[-1]

        store = MemoryStore({"a.example": []})
        service = self.make_service(
            store, generate_key=generate, key_type="ec384", profile="shortlived"
        )
        self.start(service)
        self.assertEqual(
            self.issuer.calls[0].kwargs, {"key": keys[0], "profile": "shortlived", "replaces": None}
        )
        store2 = MemoryStore({"b.example": []})
        service2 = self.make_service(store2, key_type="rsa2048")
        self.start(service2)
        self.assertEqual(self.issuer.calls[1].kwargs["key_type"], "rsa2048")


class ScheduleTests(ServiceTestCase):
    def test_lifetime_renewal(self) -> None:
        """A 90-day certificate is renewed after 60 days, a 6-day one after 3."""
        store = MemoryStore(
            {
                "long.example": self.entry("long.example", 90 * DAY),
                "short.example": self.entry("short.example", 6 * DAY),
            }
        )
        service = self.make_service(store)
        self.start(service)
        self.assertEqual(self.issuer.calls, [])
        self.clock.advance((3 * DAY).total_seconds() - 1)
        self.assertEqual(self.issuer.calls, [])
        self.clock.advance(1)
        [short] = self.issuer.calls
        self.assertEqual(short.names, ["short.example"])
        self.assertIsNone(short.kwargs["replaces"])
        self.assertEqual(self.of_type(Obtaining)[0].reason, "lifetime")
        short.succeed(lifetime=6 * DAY)
        self.clock.advance((57 * DAY).total_seconds() - 1)
        names = [c.names[0] for c in self.issuer.calls]
        self.assertNotIn("long.example", names)
        self.clock.advance(1)
        self.assertEqual(self.issuer.calls[-1].names, ["long.example"])
        self.assertEqual(self.panics, [])

    def test_renewed_elsewhere(self) -> None:
        """When the timer fires, the store is read again before issuing."""
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        self.start(service)
        self.clock.advance((59 * DAY).total_seconds())
        store.certs["a.example"] = self.entry("a.example", 90 * DAY)
        self.clock.advance((2 * DAY).total_seconds())
        self.assertEqual(self.issuer.calls, [])
        self.clock.advance((59 * DAY).total_seconds())
        self.assertEqual(len(self.issuer.calls), 1)

    def test_new_and_removed_names(self) -> None:
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store, check_interval=HOUR)
        self.start(service)
        del store.certs["a.example"]
        store.certs["b.example"] = []
        self.clock.advance(HOUR)
        [call] = self.issuer.calls
        self.assertEqual(call.names, ["b.example"])
        call.succeed()
        self.clock.advance((61 * DAY).total_seconds())
        self.assertEqual([c.names for c in self.issuer.calls], [["b.example"]] * 2)

    def test_several_names(self) -> None:
        """A names mapping puts every name on the order, the primary first."""
        cert = self.entry("example.com", 90 * DAY)
        store = MemoryStore({"example.com": cert, "other.example": []})
        service = self.make_service(
            store, names={"Example.COM": ["www.example.com", "example.com", "127.0.0.1"]}
        )
        self.start(service)
        # The stored certificate lacks www.example.com: due at once.
        names = sorted(c.names[0] for c in self.issuer.calls)
        self.assertEqual(names, ["example.com", "other.example"])
        call = next(c for c in self.issuer.calls if c.names[0] == "example.com")
        self.assertEqual(call.names, ["example.com", "www.example.com", "127.0.0.1"])
        self.assertEqual(self.of_type(Obtaining)[0].reason, "names")
        call.succeed()
        self.assertEqual(self.of_type(RenewalScheduled)[-1].reason, "lifetime")

    def test_scheduled_event_only_on_change(self) -> None:
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store, check_interval=HOUR)
        self.start(service)
        self.clock.advance(5 * HOUR)
        [scheduled] = self.of_type(RenewalScheduled)
        self.assertEqual(
            (scheduled.name, scheduled.due_at, scheduled.reason),
            ("a.example", T0 + 60 * DAY, "lifetime"),
        )


class ARITests(ServiceTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client = FakeClient(supports_ari=True)

    def ari_entry(self, name: str, info: FakeRenewalInfo | BaseException) -> list[Any]:
        objects = self.entry(name, 90 * DAY)
        cert = x509.load_pem_x509_certificate(objects[1].as_bytes())
        self.client.renewal_infos[cert.serial_number] = info
        return objects

    def test_window_and_replaces(self) -> None:
        info = FakeRenewalInfo(T0 + 20 * DAY, T0 + 22 * DAY)
        store = MemoryStore({"a.example": self.ari_entry("a.example", info)})
        cert_id = ari_certificate_id(
            x509.load_pem_x509_certificate(store.certs["a.example"][1].as_bytes())
        )
        service = self.make_service(store)
        self.start(service)
        [scheduled] = self.of_type(RenewalScheduled)
        self.assertEqual(scheduled.reason, "ari")
        self.assertTrue(info.start <= scheduled.due_at <= info.end)
        self.assertEqual(scheduled.replaces, cert_id)
        self.clock.advance((scheduled.due_at - self.now()).total_seconds())
        [call] = self.issuer.calls
        self.assertEqual(call.kwargs["replaces"], cert_id)
        self.assertIsNotNone(cert_id)

    def test_past_window_renews_now(self) -> None:
        info = FakeRenewalInfo(T0 - 2 * DAY, T0 - DAY)
        store = MemoryStore({"a.example": self.ari_entry("a.example", info)})
        service = self.make_service(store)
        self.start(service)
        [call] = self.issuer.calls
        self.assertIsNotNone(call.kwargs["replaces"])

    def test_refresh_honours_retry_after(self) -> None:
        """ARI is fetched again after Retry-After, and a new window is followed."""
        info = FakeRenewalInfo(T0 + 40 * DAY, T0 + 41 * DAY, retry_after=3 * HOUR)
        store = MemoryStore({"a.example": self.ari_entry("a.example", info)})
        serial = stored_certificate(store, "a.example").serial_number
        service = self.make_service(store, check_interval=HOUR)
        self.start(service)
        self.assertEqual(self.client.renewal_info_calls, [serial])
        self.clock.advance(3 * HOUR - 1)
        self.assertEqual(len(self.client.renewal_info_calls), 1)
        # The CA now wants the certificate replaced (e.g. it will be revoked).
        self.client.renewal_infos[serial] = FakeRenewalInfo(T0 - DAY, T0, retry_after=3 * HOUR)
        self.clock.advance(1)
        self.assertEqual(len(self.client.renewal_info_calls), 2)
        [call] = self.issuer.calls
        self.assertIsNotNone(call.kwargs["replaces"])

    def test_refresh_without_retry_after(self) -> None:
        info = FakeRenewalInfo(T0 + 40 * DAY, T0 + 41 * DAY)
        store = MemoryStore({"a.example": self.ari_entry("a.example", info)})
        service = self.make_service(store, check_interval=HOUR)
        self.start(service)
        self.clock.advance(6 * HOUR - 1)
        self.assertEqual(len(self.client.renewal_info_calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.client.renewal_info_calls), 2)

    def test_failure_falls_back_to_lifetime(self) -> None:
        store = MemoryStore(
            {"a.example": self.ari_entry("a.example", errors.ServerInternal("x", "oops"))}
        )
        service = self.make_service(store)
        self.start(service)
        [scheduled] = self.of_type(RenewalScheduled)
        self.assertEqual((scheduled.reason, scheduled.replaces), ("lifetime", None))
        self.assertEqual(scheduled.due_at, T0 + 60 * DAY)

    def test_not_supported(self) -> None:
        self.client.supports_ari = False
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        self.start(service)
        self.assertEqual(self.client.renewal_info_calls, [])
        self.assertEqual(self.of_type(RenewalScheduled)[0].reason, "lifetime")

    def test_fetched_after_issuance(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        issued = self.issuer.calls[0].succeed()
        self.assertEqual(self.client.renewal_info_calls, [issued.certificate.serial_number])

    def test_already_replaced_retries_without_replaces(self) -> None:
        info = FakeRenewalInfo(T0 - 2 * DAY, T0 - DAY)
        store = MemoryStore({"a.example": self.ari_entry("a.example", info)})
        service = self.make_service(store)
        self.start(service)
        problem = errors.ACMEProblem.from_json(
            {"type": "urn:ietf:params:acme:error:alreadyReplaced"}
        )
        self.issuer.calls[0].fail(problem)
        self.clock.advance(60)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertIsNone(self.issuer.calls[1].kwargs["replaces"])


class FailureTests(ServiceTestCase):
    def test_backoff_sequence(self) -> None:
        """Retries after 1 min, 10 min, 100 min, then daily."""
        self.issuer.auto = errors.IssuanceFailed("no")
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        times = [self.clock.seconds()]
        for _ in range(6):
            count = len(self.issuer.calls)
            step = 0
            while len(self.issuer.calls) == count:
                self.clock.advance(10)
                step += 10
                self.assertLess(step, 2 * DAY.total_seconds())
            times.append(self.clock.seconds())
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertEqual(gaps, [60, 600, 6000, 86400, 86400, 86400])
        attempts = [f.attempt for f in self.of_type(Failed)]
        self.assertEqual(attempts, [1, 2, 3, 4, 5, 6, 7])
        retry = self.of_type(Failed)[0].retry_at
        self.assertEqual(retry, T0 + timedelta(seconds=60))

    def test_jittered_backoff(self) -> None:
        self.issuer.auto = errors.IssuanceFailed("no")
        store = MemoryStore({"a.example": []})
        service = self.make_service(store, rng=random.Random(3))
        self.start(service)
        delay = (self.of_type(Failed)[0].retry_at - T0).total_seconds()
        self.assertTrue(54 <= delay <= 66, delay)

    def test_success_resets_backoff(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        self.clock.advance(60)
        self.issuer.calls[1].succeed(lifetime=6 * DAY)
        self.clock.advance((3 * DAY).total_seconds())
        self.issuer.calls[2].fail(errors.IssuanceFailed("no"))
        self.assertEqual(self.of_type(Failed)[-1].attempt, 1)
        self.assertEqual(self.of_type(Failed)[-1].retry_at, self.now() + timedelta(seconds=60))

    def test_rate_limited_retry_after(self) -> None:
        """No retry before a rateLimited problem's Retry-After, even on demand."""
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        self.issuer.calls[0].fail(errors.IssuanceFailed("limited", rate_limited(2 * HOUR)))
        [failed] = self.of_type(Failed)
        self.assertEqual(failed.problem, "urn:ietf:params:acme:error:rateLimited")
        self.assertEqual(failed.detail, "too many")
        self.assertEqual(failed.retry_at, T0 + timedelta(hours=2))
        on_demand = service.issue_cert("a.example")
        self.failureResultOf(on_demand, errors.IssuanceFailed)
        self.clock.advance(2 * HOUR - 1)
        self.assertEqual(len(self.issuer.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.issuer.calls), 2)

    def test_panic_only_in_emergency(self) -> None:
        """A failed renewal panics inside the emergency window, not before."""
        self.issuer.auto = errors.IssuanceFailed("no")
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        self.start(service)
        self.clock.advance((60 * DAY).total_seconds())
        self.assertTrue(self.issuer.calls)
        self.assertEqual(self.panics, [])
        self.assertEqual(self.of_type(Emergency), [])
        self.clock.advance((15 * DAY).total_seconds() - 1)
        self.assertEqual(self.panics, [])
        self.clock.advance(DAY.total_seconds())
        self.assertTrue(self.panics)
        failure, name = self.panics[0]
        self.assertEqual(name, "a.example")
        self.assertIsInstance(failure.value, errors.IssuanceFailed)
        [emergency, *_] = self.of_type(Emergency)
        self.assertEqual(emergency.not_after, T0 + 90 * DAY)

    def test_panic_without_certificate(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        self.assertEqual([name for _, name in self.panics], ["a.example"])
        self.assertIsNone(self.of_type(Emergency)[0].not_after)

    def test_default_panic_logs_critical(self) -> None:
        logged: list[LogEvent] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY, age=80 * DAY)})
        service = self.make_service(store, panic=None)
        self.start(service)
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        critical = [e for e in logged if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertEqual(critical[0]["event"], "emergency")
        self.assertEqual(critical[0]["name"], "a.example")
        self.assertEqual(critical[0]["not_after"], (T0 + 10 * DAY).isoformat())

    def test_failing_name_does_not_block_others(self) -> None:
        store = MemoryStore({"bad.example": [], "good.example": []})
        service = self.make_service(store)
        self.start(service)
        valid = service.when_certs_valid()
        calls = {c.names[0]: c for c in self.issuer.calls}
        calls["bad.example"].fail(errors.IssuanceFailed("no"))
        calls["good.example"].succeed()
        self.successResultOf(valid)
        self.assertEqual(store.certs["bad.example"], [])
        self.assertTrue(store.certs["good.example"])
        self.assertEqual(self.stored, ["good.example"])

    def test_unexpected_error_logged_with_traceback(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        self.issuer.calls[0].fail(ZeroDivisionError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.of_type(Failed)[0].problem, "ZeroDivisionError")

    def test_store_failure(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        bad = self.issuer.make_issued(["a.example"], T0, T0 + DAY)
        del bad.pem_objects[0]  # no private key: the store refuses the entry
        self.issuer.calls[0].deferred.callback(bad)
        [failed] = self.of_type(Failed)
        self.assertEqual(failed.problem, "ConfigurationError")
        self.assertEqual(store.certs["a.example"], [])
        self.assertEqual(self.stored, [])

    def test_broken_subscriber_and_on_stored(self) -> None:
        store = MemoryStore({"a.example": []})

        def broken(*args: object) -> None:
            raise RuntimeError("oops")

        service = self.make_service(store, on_stored=broken)
        service.subscribe(broken)
        self.start(service)
        self.issuer.calls[0].succeed()
        self.assertTrue(store.certs["a.example"])
        self.assertTrue(self.of_type(Obtained))
        self.assertTrue(self.flushLoggedErrors(RuntimeError))

    def test_unsubscribe(self) -> None:
        seen: list[ServiceEvent] = []
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        unsubscribe = service.subscribe(seen.append)
        unsubscribe()
        unsubscribe()
        self.start(service)
        self.assertEqual(seen, [])
        self.assertTrue(self.events)


class OnDemandTests(ServiceTestCase):
    def test_shared_issuance(self) -> None:
        """Concurrent requests for one name share one issuance."""
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        self.start(service)
        first = service.issue_cert("a.example")
        second = service.issue_cert("A.EXAMPLE")
        [call] = self.issuer.calls
        self.assertEqual(call.names, ["a.example"])
        issued = call.succeed()
        self.assertIs(self.successResultOf(first), issued)
        self.assertIs(self.successResultOf(second), issued)
        self.assertEqual(store.certs["a.example"], issued.pem_objects)

    def test_shared_with_scheduled(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        d = service.issue_cert("a.example")
        self.assertEqual(len(self.issuer.calls), 1)
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        self.failureResultOf(d, errors.IssuanceFailed)

    def test_cancel_one_caller(self) -> None:
        """Cancelling one caller's Deferred leaves the issuance running."""
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        first = service.issue_cert("a.example")
        second = service.issue_cert("a.example")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        [call] = self.issuer.calls
        self.assertFalse(call.cancelled)
        issued = call.succeed()
        self.assertIs(self.successResultOf(second), issued)

    def test_unknown_name(self) -> None:
        """issue_cert works for a name the store does not have, without start."""
        store = MemoryStore()
        service = self.make_service(store)
        d = service.issue_cert("new.example")
        self.issuer.calls[0].succeed()
        self.successResultOf(d)
        self.assertTrue(store.certs["new.example"])
        self.assertEqual(self.of_type(Obtaining)[0].reason, "missing")

    def test_unknown_name_failure_is_no_emergency(self) -> None:
        """An on-demand name the store does not hold never panics."""
        store = MemoryStore()
        service = self.make_service(store, check_interval=600)
        self.start(service)
        d = service.issue_cert("new.example")
        self.issuer.calls[0].fail(errors.IssuanceFailed("no", rate_limited(HOUR)))
        self.failureResultOf(d, errors.IssuanceFailed)
        self.assertEqual(self.panics, [])
        self.assertEqual(self.of_type(Emergency), [])
        # Periodic checks do not forget the rate limit of a name outside the store.
        self.clock.advance(HOUR - 1)
        self.failureResultOf(service.issue_cert("new.example"), errors.IssuanceFailed)
        self.clock.advance(1)
        self.assertEqual(len(self.issuer.calls), 1)  # never retried in the background
        again = service.issue_cert("new.example")
        self.assertEqual(len(self.issuer.calls), 2)
        self.issuer.calls[1].succeed()
        self.successResultOf(again)

    def test_failure_keeps_schedule(self) -> None:
        """A failed on-demand renewal of a valid certificate keeps its due time."""
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        self.start(service)
        d = service.issue_cert("a.example")
        self.issuer.calls[0].fail(errors.IssuanceFailed("no"))
        self.failureResultOf(d, errors.IssuanceFailed)
        self.assertEqual(self.panics, [])
        self.assertEqual(self.of_type(RenewalScheduled)[-1].due_at, T0 + 60 * DAY)
        self.clock.advance((60 * DAY).total_seconds() - 1)
        self.assertEqual(len(self.issuer.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.issuer.calls), 2)

    def test_invalid_name(self) -> None:
        service = self.make_service(MemoryStore())
        self.failureResultOf(service.issue_cert("../etc"), errors.InvalidServerName)
        self.assertEqual(self.issuer.calls, [])

    def test_valid_certificate_replaced(self) -> None:
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        d = service.issue_cert("a.example")
        self.assertEqual(len(self.issuer.calls), 1)
        self.issuer.calls[0].succeed()
        self.successResultOf(d)


class ConcurrencyTests(ServiceTestCase):
    def test_bounded(self) -> None:
        names = [f"n{i}.example" for i in range(5)]
        store = MemoryStore({n: [] for n in names})
        service = self.make_service(store, max_concurrent=2)
        self.start(service)
        self.assertEqual(len(self.issuer.calls), 2)
        self.issuer.calls[0].succeed()
        self.assertEqual(len(self.issuer.calls), 3)
        self.issuer.calls[1].fail(errors.IssuanceFailed("no"))
        self.issuer.calls[2].succeed()
        self.assertEqual(len(self.issuer.calls), 5)
        self.assertEqual(sorted(c.names[0] for c in self.issuer.calls), names)


class StopTests(ServiceTestCase):
    def test_stop_cancels_everything(self) -> None:
        names = ["a.example", "b.example", "c.example"]
        store = MemoryStore({n: [] for n in names})
        store.certs["d.example"] = self.entry("d.example", 90 * DAY)
        service = self.make_service(store, max_concurrent=2)
        service.startService()
        running = list(self.issuer.calls)
        self.assertEqual(len(running), 2)
        waiter = service.issue_cert("c.example")
        d = service.stopService()
        self.successResultOf(d)
        self.assertTrue(all(c.cancelled for c in running))
        self.failureResultOf(waiter, CancelledError)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.panics, [])
        self.assertEqual(self.of_type(Failed), [])
        self.clock.advance((100 * DAY).total_seconds())
        self.assertEqual(len(self.issuer.calls), 2)

    def test_cancellation_surfacing_as_another_error(self) -> None:
        """An issuance that fails with some other error when cancelled is no failure."""

        def issue(client: object, names: list[str], responders: object, **kw: Any) -> Deferred:
            return Deferred(lambda d: d.errback(ConnectionAbortedError("request cancelled")))

        store = MemoryStore({"a.example": []})
        service = self.make_service(store, issue=issue)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.of_type(Failed), [])
        self.assertEqual(self.panics, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_stop_during_client_creation(self) -> None:
        pending: Deferred[FakeClient] = Deferred()
        store = MemoryStore({"a.example": []})
        service = self.make_service(store, client=None, client_creator=lambda: pending)
        service.startService()
        valid = service.when_certs_valid()
        self.successResultOf(service.stopService())
        self.assertTrue(pending.called)  # cancelled
        self.successResultOf(valid)
        self.assertEqual(self.issuer.calls, [])

    def test_stop_during_ari(self) -> None:
        pending: Deferred[FakeRenewalInfo] = Deferred()
        self.client = FakeClient(supports_ari=True)
        self.client.renewal_info = lambda cert: pending
        store = MemoryStore({"a.example": self.entry("a.example", 90 * DAY)})
        service = self.make_service(store)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertTrue(pending.called)  # cancelled
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.of_type(RenewalScheduled), [])

    def test_restart(self) -> None:
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        service.startService()
        self.successResultOf(service.stopService())
        self.start(service)
        self.assertEqual(len(self.issuer.calls), 2)
        self.assertTrue(self.issuer.calls[0].cancelled)
        self.issuer.calls[1].succeed()
        self.assertTrue(store.certs["a.example"])


class LogTests(ServiceTestCase):
    def test_structured_events(self) -> None:
        txacme_log_level(self, "debug")  # renewal_scheduled is a debug event
        logged: list[LogEvent] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        store = MemoryStore({"a.example": []})
        service = self.make_service(store)
        self.start(service)
        self.issuer.calls[0].fail(errors.IssuanceFailed("nope", rate_limited(120)))
        self.clock.advance(120)
        self.issuer.calls[1].succeed()
        namespace = "txacme.issuing.service"
        ours = [e for e in logged if "event" in e and e.get("log_namespace") == namespace]
        kinds = [e["event"] for e in ours]
        self.assertEqual(
            kinds,
            [
                "renewal_scheduled",
                "obtaining",
                "failed",
                "emergency",
                "renewal_scheduled",
                "obtaining",
                "obtained",
                "renewal_scheduled",
            ],
        )
        failed = ours[2]
        self.assertEqual(failed["name"], "a.example")
        self.assertEqual(failed["problem"], "urn:ietf:params:acme:error:rateLimited")
        self.assertEqual(failed["attempt"], 1)
        self.assertEqual(failed["retry_at"], (T0 + timedelta(seconds=120)).isoformat())
        self.assertNotIn("log_failure", failed)
        obtained = ours[6]
        self.assertIsInstance(obtained["seconds"], float)
        self.assertEqual(obtained["names"], "a.example")
        from twisted.logger import formatEvent

        self.assertIn("a.example", formatEvent(failed))
        self.assertIn("rateLimited", formatEvent(failed))
