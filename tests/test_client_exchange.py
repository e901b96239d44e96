"""
The client's exchange hook (``on_exchange``): one :class:`txacme.protocol.client.Exchange`
per HTTP exchange with the CA, as :class:`txacme.reporting.metrics.Metrics` counts them.

Uses the fake CA of :mod:`tests.test_client` (behind ``StubTreq``) and a
:class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

from typing import Any

import attrs
from acme import messages
from josepy.jwk import JWKEC
from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET

from tests.test_client import PROBLEM, ClientTestMixin, FakeCA, Responder, ec_key
from txacme import errors
from txacme.issuing.order import obtain_certificate
from txacme.protocol import client as client_module
from txacme.protocol.client import Client, Exchange
from txacme.reporting.metrics import Metrics
from txacme.serving.endpoint import AutoTLSEndpoint, _accepts_keyword


def summary(exchanges: list[Exchange]) -> list[tuple[str, str, int | None]]:
    return [(e.endpoint, e.method, e.status) for e in exchanges]


class ExchangeHookTests(ClientTestMixin, unittest.TestCase):
    def setup(self, **options: Any) -> tuple[FakeCA, Client, list[Exchange]]:
        seen: list[Exchange] = []
        ca, client = self.make(on_exchange=seen.append, **options)
        return ca, client, seen

    def test_exchange_is_public_and_frozen(self) -> None:
        self.assertIn("Exchange", client_module.__all__)
        exchange = Exchange("newOrder", "POST", "https://ca.test/new-order", 201, 0.5)
        self.assertIsNone(exchange.problem)
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            exchange.status = 500  # type: ignore[misc]

    def test_one_issuance(self) -> None:
        """Every request of an issuance is reported once, in order, with its resource."""
        ca, client, seen = self.setup()
        self.ok(client.start())
        self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        self.assertEqual(
            summary(seen),
            [
                ("directory", "GET", 200),
                ("newNonce", "HEAD", 200),
                ("newAccount", "POST", 400),  # the look-up: accountDoesNotExist
                ("newAccount", "POST", 201),
                ("newOrder", "POST", 201),
                ("authorization", "POST", 200),
                ("challenge", "POST", 200),
                ("authorization", "POST", 200),
                ("finalize", "POST", 200),
                ("certificate", "POST", 200),
            ],
        )
        # One exchange per request the CA saw, to the URL it saw.
        self.assertEqual(len(seen), len(ca.seen))
        self.assertEqual([e.url for e in seen], ["https://ca.test" + s.path for s in ca.seen])
        self.assertEqual(seen[2].problem, PROBLEM + "accountDoesNotExist")
        self.assertEqual([e.problem for e in seen[3:]], [None] * 7)
        self.assertTrue(all(e.seconds == 0.0 for e in seen))

    def test_bad_nonce_retries_are_counted(self) -> None:
        """Each badNonce answer is an exchange of its own, with its problem."""
        ca, client, seen = self.setup()
        self.ok(client.new_account())
        del seen[:]
        ca.reject_nonces = 2
        self.ok(client.new_order(["example.com"]))
        self.assertEqual(
            summary(seen),
            [("newOrder", "POST", 400), ("newOrder", "POST", 400), ("newOrder", "POST", 201)],
        )
        self.assertEqual(
            [e.problem for e in seen], [PROBLEM + "badNonce", PROBLEM + "badNonce", None]
        )

    def test_polling_and_processing(self) -> None:
        """Polls of a pending authorization and a processing order are each reported."""
        ca, client, seen = self.setup()
        ca.pending_polls = 2
        ca.processing_polls = 1
        self.ok(client.new_account())
        self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        endpoints = [e.endpoint for e in seen]
        self.assertEqual(endpoints.count("finalize"), 1)
        self.assertGreaterEqual(endpoints.count("order"), 1)
        self.assertGreaterEqual(endpoints.count("authorization"), 3)
        self.assertEqual(len(seen), len(ca.seen))

    def test_no_answer(self) -> None:
        """A request that timed out is reported with no status, after its timeout."""
        ca, client, seen = self.setup(timeout=7.0)
        self.ok(client.new_account())
        del seen[:]
        ca.overrides["/new-order"] = lambda seen: NOT_DONE_YET  # type: ignore[return-value]
        d = client.new_order(["example.com"])
        self.clock.advance(6.0)
        self.assertEqual(seen, [])
        self.clock.advance(1.0)
        self.failureResultOf(d, errors.ACMETimeout)
        self.assertEqual(summary(seen), [("newOrder", "POST", None)])
        self.assertAlmostEqual(seen[0].seconds, 7.0)
        self.assertIsNone(seen[0].problem)

    def test_connection_error(self) -> None:
        """A transport failure is reported with no status, then propagates."""
        seen: list[Exchange] = []

        class Refusing:
            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                return defer.fail(ConnectionRefusedError("refused"))

        clock = task.Clock()
        client = Client(
            clock,
            messages.Directory.from_json(FakeCA(clock).directory()),
            JWKEC(key=ec_key()),
            http=Refusing(),
            on_exchange=seen.append,
        )
        self.failureResultOf(client.new_order(["example.com"]), ConnectionRefusedError)
        self.assertEqual(summary(seen), [("newNonce", "HEAD", None)])

    def test_other_resources(self) -> None:
        """Account updates, key change, revocation and renewal information are named."""
        ca, client, seen = self.setup(ari=True)
        self.ok(client.new_account())
        issued = self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        del seen[:]
        self.ok(client.renewal_info(issued.certificate))
        self.ok(client.update_account("a@example.com"))
        self.ok(client.change_key(JWKEC(key=ec_key())))
        self.ok(client.revoke(issued.certificate))
        self.ok(client.deactivate_account())
        self.assertEqual(
            summary(seen),
            [
                ("renewalInfo", "GET", 200),
                ("account", "POST", 200),
                ("keyChange", "POST", 200),
                ("revokeCert", "POST", 200),
                ("account", "POST", 200),
            ],
        )

    def test_callback_errors_are_logged_and_ignored(self) -> None:
        calls: list[Exchange] = []

        def broken(exchange: Exchange) -> None:
            calls.append(exchange)
            raise RuntimeError("observer broke")

        ca, client = self.make(on_exchange=broken)
        self.ok(client.start())
        self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))
        self.assertEqual(len(calls), len(ca.seen))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(calls))

    def test_feeds_metrics(self) -> None:
        """Metrics.observe_exchange as the hook counts requests by resource and status."""
        metrics = Metrics(clock=task.Clock())
        ca, client = self.make(on_exchange=metrics.observe_exchange)
        self.ok(client.new_account())
        ca.reject_nonces = 1
        self.ok(obtain_certificate(client, ["example.com"], [Responder("http-01")]))

        def count(endpoint: str, method: str, status: str) -> float | None:
            return metrics.registry.get_sample_value(
                "txacme_acme_requests_total",
                {"endpoint": endpoint, "method": method, "status": status},
            )

        self.assertEqual(count("directory", "GET", "200"), 1.0)
        self.assertEqual(count("newOrder", "POST", "400"), 1.0)
        self.assertEqual(count("newOrder", "POST", "201"), 1.0)
        self.assertEqual(count("finalize", "POST", "200"), 1.0)
        self.assertEqual(count("certificate", "POST", "200"), 1.0)
        self.assertEqual(count("authorization", "POST", "200"), 2.0)


class EndpointCreatorTests(unittest.TestCase):
    """AutoTLSEndpoint hands its exchange hook to a client creator that takes one."""

    def endpoint(self, creator: Any) -> AutoTLSEndpoint:
        return AutoTLSEndpoint(object(), object(), object(), creator)  # type: ignore[arg-type]

    def test_accepts_keyword(self) -> None:
        def plain() -> None: ...

        def keyword(on_exchange: Any = None) -> None: ...

        def kwonly(*, on_exchange: Any = None) -> None: ...

        def anything(**kwargs: Any) -> None: ...

        self.assertFalse(_accepts_keyword(plain, "on_exchange"))
        self.assertTrue(_accepts_keyword(keyword, "on_exchange"))
        self.assertTrue(_accepts_keyword(kwonly, "on_exchange"))
        self.assertTrue(_accepts_keyword(anything, "on_exchange"))
        self.assertFalse(_accepts_keyword(len, "on_exchange"))

    def test_hook_given_when_accepted(self) -> None:
        got: list[Any] = []

        def creator(on_exchange: Any = None) -> Any:
            got.append(on_exchange)
            return "client"

        endpoint = self.endpoint(creator)
        self.assertEqual(self.successResultOf(endpoint._client_creator()), "client")
        hook = got.append
        endpoint._on_exchange = hook
        self.successResultOf(endpoint._client_creator())
        self.assertEqual(got, [None, hook])

    def test_plain_creator_still_works(self) -> None:
        endpoint = self.endpoint(lambda: "client")
        endpoint._on_exchange = lambda exchange: None
        self.assertEqual(self.successResultOf(endpoint._client_creator()), "client")
