"""Tests for txacme.issuing.policy: renewal times, ARI, emergencies and backoff."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import attrs
from twisted.trial.unittest import TestCase

from txacme.errors import ConfigurationError
from txacme.issuing.policy import (
    MAX_BACKOFF,
    RenewalSettings,
    ari_renewal_time,
    backoff_delay,
    certificate_names,
    emergency_time,
    next_ari_check,
    plan_renewal,
    renewal_time,
)
from txacme.protocol.ari import ari_certificate_id
from txacme.testing import make_certificate

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@attrs.frozen
class Window:
    start: datetime
    end: datetime


class FixedRandom(random.Random):
    """A generator whose uniform() always returns one end of the range."""

    def __init__(self, where: float) -> None:
        super().__init__(0)
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


class LifetimeTests(TestCase):
    def test_ninety_days(self) -> None:
        """A 90-day certificate is renewed 30 days before it expires."""
        self.assertEqual(renewal_time(T0, T0 + 90 * DAY), T0 + 60 * DAY)

    def test_forty_five_days(self) -> None:
        """A 45-day certificate is renewed 15 days before it expires."""
        self.assertEqual(renewal_time(T0, T0 + 45 * DAY), T0 + 30 * DAY)

    def test_six_days(self) -> None:
        """Short-lived (under 10 days) certificates renew at half their lifetime."""
        self.assertEqual(renewal_time(T0, T0 + 6 * DAY), T0 + 3 * DAY)

    def test_ten_days_is_not_short(self) -> None:
        self.assertEqual(renewal_time(T0, T0 + 9 * DAY), T0 + 4.5 * DAY)
        self.assertEqual(renewal_time(T0, T0 + 10 * DAY), T0 + 10 * DAY - 10 * DAY / 3)

    def test_custom_fractions(self) -> None:
        self.assertEqual(renewal_time(T0, T0 + 100 * DAY, fraction=0.5), T0 + 50 * DAY)
        self.assertEqual(
            renewal_time(T0, T0 + 20 * DAY, short_fraction=0.25, short_lifetime=30 * DAY),
            T0 + 15 * DAY,
        )

    def test_emergency(self) -> None:
        """The emergency window is the last sixth of the lifetime."""
        self.assertEqual(emergency_time(T0, T0 + 90 * DAY), T0 + 75 * DAY)
        self.assertEqual(emergency_time(T0, T0 + 6 * DAY), T0 + 5 * DAY)
        self.assertEqual(emergency_time(T0, T0 + 90 * DAY, fraction=0.5), T0 + 45 * DAY)

    def test_inverted_validity(self) -> None:
        self.assertRaises(ConfigurationError, renewal_time, T0, T0)
        self.assertRaises(ConfigurationError, emergency_time, T0 + DAY, T0)

    def test_bad_settings(self) -> None:
        self.assertRaises(ConfigurationError, RenewalSettings, fraction=0)
        self.assertRaises(ConfigurationError, RenewalSettings, short_fraction=1.5)
        self.assertRaises(ConfigurationError, RenewalSettings, emergency_fraction=0.4)


class ARITests(TestCase):
    def test_uniform_in_window(self) -> None:
        start, end = T0 + 10 * DAY, T0 + 12 * DAY
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(0), T0), start)
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(1), T0), end)
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(0.5), T0), start + DAY)
        rng = random.Random(4)
        for _ in range(200):
            moment = ari_renewal_time(start, end, rng, T0)
            self.assertTrue(start <= moment <= end)

    def test_past_window_is_now(self) -> None:
        start, end = T0 - 2 * DAY, T0 - DAY
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(1), T0), T0)

    def test_window_around_now(self) -> None:
        start, end = T0 - DAY, T0 + DAY
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(0.25), T0), T0)
        self.assertEqual(ari_renewal_time(start, end, FixedRandom(0.75), T0), T0 + DAY / 2)

    def test_next_check(self) -> None:
        """Retry-After is honoured within [1 minute, 1 day]; absent means 6 hours."""
        self.assertEqual(next_ari_check(T0, None), T0 + timedelta(hours=6))
        self.assertEqual(next_ari_check(T0, 3600), T0 + timedelta(hours=1))
        self.assertEqual(next_ari_check(T0, 0), T0 + timedelta(minutes=1))
        self.assertEqual(next_ari_check(T0, -5), T0 + timedelta(minutes=1))
        self.assertEqual(next_ari_check(T0, 30 * 3600), T0 + DAY)

    def test_certificate_id(self) -> None:
        """
        base64url(AKI) "." base64url(DER serial), with the sign byte kept
        (the example of RFC 9773 section 4.1).
        """
        cert = make_certificate(
            ["example.com"],
            T0,
            T0 + 90 * DAY,
            serial=0x0087654321,
            authority_key_id=bytes.fromhex("69885b6b87464041e1b37b847ba0ae2cde01c8d4"),
        )
        self.assertEqual(ari_certificate_id(cert), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        small = make_certificate(["example.com"], T0, T0 + DAY, serial=0x7F, authority_key_id=b"k")
        self.assertEqual(ari_certificate_id(small), "aw.fw")

    def test_certificate_id_without_aki(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + DAY, authority_key_id=None)
        self.assertIsNone(ari_certificate_id(cert))


class PlanTests(TestCase):
    def cert(self, lifetime: timedelta = 90 * DAY, names: list[str] | None = None) -> object:
        return make_certificate(names or ["example.com"], T0, T0 + lifetime)

    def test_missing(self) -> None:
        plan = plan_renewal("example.com", None, T0)
        self.assertEqual((plan.due_at, plan.reason, plan.replaces), (T0, "missing", None))
        self.assertTrue(plan.is_emergency(T0))

    def test_lifetime(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        plan = plan_renewal("example.com", cert, T0 + DAY)
        self.assertEqual(plan.due_at, T0 + 60 * DAY)
        self.assertEqual(plan.reason, "lifetime")
        self.assertEqual(plan.emergency_at, T0 + 75 * DAY)
        self.assertEqual(plan.not_after, T0 + 90 * DAY)
        self.assertIsNone(plan.replaces)
        self.assertFalse(plan.is_emergency(T0 + 74 * DAY))
        self.assertTrue(plan.is_emergency(T0 + 75 * DAY))

    def test_lifetime_overdue(self) -> None:
        """Past the renewal time but before the emergency window: due now."""
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        plan = plan_renewal("example.com", cert, T0 + 70 * DAY)
        self.assertEqual((plan.due_at, plan.reason), (T0 + 70 * DAY, "lifetime"))

    def test_emergency(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        plan = plan_renewal("example.com", cert, T0 + 80 * DAY)
        self.assertEqual((plan.due_at, plan.reason), (T0 + 80 * DAY, "emergency"))

    def test_expired(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        plan = plan_renewal("example.com", cert, T0 + 90 * DAY)
        self.assertEqual((plan.due_at, plan.reason), (T0 + 90 * DAY, "expired"))
        self.assertTrue(plan.is_emergency(T0 + 90 * DAY))

    def test_settings(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        settings = RenewalSettings(fraction=0.5, emergency_fraction=0.1)
        plan = plan_renewal("example.com", cert, T0, settings=settings)
        self.assertEqual(plan.due_at, T0 + 45 * DAY)
        self.assertEqual(plan.emergency_at, T0 + 81 * DAY)

    def test_names_not_covered(self) -> None:
        """A certificate that misses a configured name is due at once."""
        cert = make_certificate(["example.com", "127.0.0.1"], T0, T0 + 90 * DAY)
        self.assertEqual(certificate_names(cert), {"example.com", "127.0.0.1"})
        ok = plan_renewal("example.com", cert, T0, names=["example.com", "127.0.0.1"])
        self.assertEqual(ok.reason, "lifetime")
        plan = plan_renewal("example.com", cert, T0, names=["example.com", "www.example.com"])
        self.assertEqual((plan.due_at, plan.reason), (T0, "names"))
        other = plan_renewal("other.example", cert, T0)
        self.assertEqual(other.reason, "names")

    def test_ari_window(self) -> None:
        """Inside the ARI window the plan follows ARI and carries ``replaces``."""
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        ari = Window(T0 + 40 * DAY, T0 + 42 * DAY)
        plan = plan_renewal("example.com", cert, T0 + DAY, ari, rng=FixedRandom(0.5))
        self.assertEqual(plan.due_at, T0 + 41 * DAY)
        self.assertEqual(plan.reason, "ari")
        self.assertEqual(plan.replaces, ari_certificate_id(cert))
        self.assertIsNotNone(plan.replaces)

    def test_ari_past_window(self) -> None:
        """A window in the past (e.g. before a revocation) means now."""
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        ari = Window(T0, T0 + DAY)
        plan = plan_renewal("example.com", cert, T0 + 3 * DAY, ari, rng=FixedRandom(0.5))
        self.assertEqual((plan.due_at, plan.reason), (T0 + 3 * DAY, "ari"))

    def test_ari_stable_by_default(self) -> None:
        """Without an rng the chosen moment is the same at every check."""
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        ari = Window(T0 + 40 * DAY, T0 + 50 * DAY)
        first = plan_renewal("example.com", cert, T0, ari)
        second = plan_renewal("example.com", cert, T0 + DAY, ari)
        self.assertEqual(first.due_at, second.due_at)
        self.assertTrue(ari.start <= first.due_at <= ari.end)
        other = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        self.assertNotEqual(plan_renewal("example.com", other, T0, ari).due_at, first.due_at)

    def test_ari_capped_by_emergency(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        ari = Window(T0 + 80 * DAY, T0 + 85 * DAY)
        plan = plan_renewal("example.com", cert, T0, ari, rng=FixedRandom(0))
        self.assertEqual((plan.due_at, plan.reason), (T0 + 75 * DAY, "emergency"))
        self.assertEqual(plan.replaces, ari_certificate_id(cert))

    def test_ari_invalid_window_ignored(self) -> None:
        """A window whose end is not after its start falls back to the lifetime rule."""
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY)
        ari = Window(T0 + 10 * DAY, T0 + 10 * DAY)
        plan = plan_renewal("example.com", cert, T0, ari)
        self.assertEqual(
            (plan.due_at, plan.reason, plan.replaces), (T0 + 60 * DAY, "lifetime", None)
        )

    def test_ari_without_aki_ignored(self) -> None:
        cert = make_certificate(["example.com"], T0, T0 + 90 * DAY, authority_key_id=None)
        plan = plan_renewal("example.com", cert, T0, Window(T0 + DAY, T0 + 2 * DAY))
        self.assertEqual((plan.due_at, plan.reason), (T0 + 60 * DAY, "lifetime"))


class BackoffTests(TestCase):
    def test_nominal_sequence(self) -> None:
        middle = FixedRandom(0.5)
        self.assertEqual(
            [round(backoff_delay(n, middle), 6) for n in range(0, 7)],
            [0, 60, 600, 6000, 86400, 86400, 86400],
        )

    def test_jitter_bounds(self) -> None:
        for where in (0.0, 1.0):
            rng = FixedRandom(where)
            factor = 0.9 if where == 0 else 1.1
            self.assertAlmostEqual(backoff_delay(1, rng), 60 * factor)
            self.assertAlmostEqual(backoff_delay(2, rng), 600 * factor)
            self.assertAlmostEqual(backoff_delay(3, rng), 6000 * factor)
        self.assertAlmostEqual(backoff_delay(4, FixedRandom(0)), 86400 * 0.9)
        self.assertEqual(backoff_delay(9, FixedRandom(1)), MAX_BACKOFF)

    def test_jitter_spreads(self) -> None:
        rng = random.Random(1)
        delays = [backoff_delay(2, rng) for _ in range(100)]
        self.assertTrue(all(540 <= d <= 660 for d in delays))
        self.assertGreater(len(set(delays)), 50)
        self.assertTrue(all(backoff_delay(30, rng) <= MAX_BACKOFF for _ in range(100)))
