"""
When a certificate is due for renewal, and when its renewal is an emergency.

Everything here is a pure function of its arguments (the current time and any
randomness are passed in), so the scheduling rules can be tested without a
clock or a CA.

Decisions
---------

Lifetime rule.
    A certificate is renewed when a third of its lifetime remains (30 days
    before expiry for a 90-day certificate), or when half remains for a
    certificate that lives less than 10 days (3 days before expiry for a
    6-day certificate). The emergency window is the last sixth of the lifetime
    (15 days for a 90-day certificate): a renewal that fails inside it, or for
    a name with no valid certificate at all, is reported through the service's
    panic callback.

ARI (RFC 9773).
    When the CA publishes renewal information, the renewal time is a uniformly
    random moment inside the suggested window, and the moment it is in the past
    means "now". Without an explicit random generator the moment is drawn from
    a generator seeded by the certificate's serial number and the window, so
    it is spread across certificates but stays the same from one check to the
    next while the window does not change. The ARI time wins over the lifetime
    rule (the CA may ask for an earlier renewal, e.g. before a revocation, or a
    later one) except that renewal never starts later than the emergency
    window. While ARI information is used, the plan carries the ARI
    certificate identifier as ``replaces``.

ARI refresh.
    The renewal information is fetched again after the ``Retry-After`` delay the
    CA asked for, bounded to at least one minute and at most one day (the
    bounds RFC 9773 section 4.3 suggests; polling earlier than the CA asked is
    impolite, so a ``Retry-After`` longer than the service's twelve-hour check
    interval is honoured up to a day). Without ``Retry-After`` it is fetched
    again after six hours.

Backoff.
    A name that failed ``n`` times in a row waits about 1 minute, 10 minutes,
    100 minutes, then one day between attempts. Each delay is multiplied by a
    random factor in [0.9, 1.1] so that names failing together do not retry
    together, and no delay exceeds one day. A problem's ``Retry-After`` (e.g.
    ``rateLimited``) is a lower bound on top of this; the service applies it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

import attrs
from cryptography import x509

from txacme.protocol.ari import (
    ARI_DEFAULT_REFRESH,
    ARI_MAX_REFRESH,
    ARI_MIN_REFRESH,
    ari_certificate_id,
)

__all__ = [
    "BACKOFF_STEPS",
    "MAX_BACKOFF",
    "Reason",
    "RenewalInfoLike",
    "RenewalPlan",
    "RenewalSettings",
    "ari_renewal_time",
    "backoff_delay",
    "certificate_names",
    "emergency_time",
    "next_ari_check",
    "plan_renewal",
    "renewal_time",
]

#: Why a renewal is planned. ``"names"`` means the stored certificate does not
#: cover every name configured for its store entry.
Reason = Literal["missing", "names", "ari", "lifetime", "emergency", "expired", "ca_changed"]

#: Nominal failure backoff in seconds after 1, 2, 3 consecutive failures; later
#: failures wait :data:`MAX_BACKOFF`.
BACKOFF_STEPS: Final = (60.0, 600.0, 6000.0)
MAX_BACKOFF: Final = 86400.0
"""The longest failure backoff, in seconds: once a day."""
_JITTER: Final = 0.1


class RenewalInfoLike(Protocol):
    """
    The part of an ARI answer (:class:`txacme.protocol.resources.RenewalInfo`) that
    scheduling reads: the suggested window, as timezone-aware datetimes.
    """

    @property
    def start(self) -> datetime:
        """The start of the suggested renewal window."""
        ...

    @property
    def end(self) -> datetime:
        """The end of the suggested renewal window."""
        ...


@attrs.frozen
class RenewalSettings:
    """
    The tunable fractions of the lifetime rule.

    :ivar fraction: renew when this fraction of the lifetime remains.
    :ivar short_fraction: the same, for certificates living less than
        ``short_lifetime``.
    :ivar short_lifetime: the lifetime below which ``short_fraction`` applies.
    :ivar emergency_fraction: the emergency window is this last fraction of the
        lifetime.
    """

    fraction: float = 1 / 3
    short_fraction: float = 1 / 2
    short_lifetime: timedelta = timedelta(days=10)
    emergency_fraction: float = 1 / 6

    def __attrs_post_init__(self) -> None:
        from txacme.errors import ConfigurationError

        for label, value in [
            ("fraction", self.fraction),
            ("short_fraction", self.short_fraction),
            ("emergency_fraction", self.emergency_fraction),
        ]:
            if not 0 < value < 1:
                raise ConfigurationError(f"{label} must be between 0 and 1, not {value!r}")
        if self.emergency_fraction > min(self.fraction, self.short_fraction):
            raise ConfigurationError(
                f"emergency_fraction ({self.emergency_fraction!r}) must not exceed "
                f"fraction ({self.fraction!r}) or short_fraction ({self.short_fraction!r})"
            )


@attrs.frozen
class RenewalPlan:
    """
    When and why a store entry should be (re)issued.

    :ivar name: the store entry (its primary server name).
    :ivar due_at: when issuance should start; at or before "now" means at once.
    :ivar reason: why (see :data:`Reason`).
    :ivar emergency_at: when the emergency window starts; ``None`` when there is
        no certificate (then any failure is an emergency).
    :ivar replaces: the ARI identifier of the certificate being replaced, sent
        in the new order, or ``None``.
    :ivar not_after: the expiry of the current certificate, or ``None``.
    """

    name: str
    due_at: datetime
    reason: Reason
    emergency_at: datetime | None = None
    replaces: str | None = None
    not_after: datetime | None = None

    def is_emergency(self, now: datetime) -> bool:
        """Whether a failed renewal at ``now`` must be reported as an emergency."""
        return self.emergency_at is None or now >= self.emergency_at


def _check_window(not_before: datetime, not_after: datetime) -> timedelta:
    lifetime = not_after - not_before
    if lifetime <= timedelta(0):
        from txacme.errors import ConfigurationError

        raise ConfigurationError(
            f"certificate validity ends ({not_after}) before it starts ({not_before})"
        )
    return lifetime


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    *,
    fraction: float = 1 / 3,
    short_fraction: float = 1 / 2,
    short_lifetime: timedelta = timedelta(days=10),
) -> datetime:
    """
    When to renew a certificate by the lifetime rule.

    Renew when ``fraction`` of the lifetime remains, or ``short_fraction`` for
    certificates living less than ``short_lifetime``: a 90-day certificate is
    renewed 30 days before it expires, a 6-day one 3 days before.
    """
    lifetime = _check_window(not_before, not_after)
    remaining = short_fraction if lifetime < short_lifetime else fraction
    return not_after - lifetime * remaining


def emergency_time(
    not_before: datetime, not_after: datetime, *, fraction: float = 1 / 6
) -> datetime:
    """
    The start of the emergency window: the last ``fraction`` of the lifetime
    (15 days for a 90-day certificate).
    """
    return not_after - _check_window(not_before, not_after) * fraction


def ari_renewal_time(
    window_start: datetime, window_end: datetime, rng: random.Random, now: datetime
) -> datetime:
    """
    A uniformly random moment in the ARI suggested window, or ``now`` when that
    moment has already passed (RFC 9773 section 4.2).
    """
    span = (window_end - window_start).total_seconds()
    chosen = window_start + timedelta(seconds=rng.uniform(0, max(span, 0.0)))
    return max(chosen, now)


def next_ari_check(now: datetime, retry_after: float | None) -> datetime:
    """
    When to fetch renewal information again.

    ``retry_after`` (seconds, from the CA's ``Retry-After``) is bounded to
    [1 minute, 1 day]; ``None`` means 6 hours.
    """
    if retry_after is None:
        return now + ARI_DEFAULT_REFRESH
    delay = timedelta(seconds=retry_after)
    return now + min(max(delay, ARI_MIN_REFRESH), ARI_MAX_REFRESH)


def backoff_delay(failures: int, rng: random.Random) -> float:
    """
    Seconds to wait before the next attempt after ``failures`` consecutive
    failures: about 60, 600, 6000, then 86400 (never more), jittered by +/-10%.
    ``failures`` below 1 gives 0.
    """
    if failures < 1:
        return 0.0
    base = BACKOFF_STEPS[failures - 1] if failures <= len(BACKOFF_STEPS) else MAX_BACKOFF
    return min(base * rng.uniform(1 - _JITTER, 1 + _JITTER), MAX_BACKOFF)


def certificate_names(certificate: x509.Certificate) -> set[str]:
    """
    The DNS names (lower-cased) and IP addresses (compressed form) in a
    certificate's subject alternative names.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    names.update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return names


def plan_renewal(
    name: str,
    certificate: x509.Certificate | None,
    now: datetime,
    ari: RenewalInfoLike | None = None,
    settings: RenewalSettings | None = None,
    *,
    names: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> RenewalPlan:
    """
    Decide when the store entry ``name`` holding ``certificate`` is renewed.

    :param certificate: the stored certificate, ``None`` when there is none.
    :param now: the current time (timezone-aware).
    :param ari: the CA's renewal information for ``certificate``, or ``None``
        when the CA has no ARI or fetching it failed. An invalid window (end
        not after start) is ignored.
    :param names: the server names the certificate must cover (default
        ``[name]``), in canonical form
        (:func:`~txacme.names.normalize_server_name`); a certificate missing one
        of them is due at once.
    :param rng: picks the moment in the ARI window; by default a generator
        seeded by the certificate and the window (stable between checks).
    """
    if settings is None:
        settings = RenewalSettings()
    if certificate is None:
        return RenewalPlan(name=name, due_at=now, reason="missing")
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if not_after <= not_before:
        # Nonsense validity: treat as a certificate that must be replaced at once.
        return RenewalPlan(name=name, due_at=now, reason="expired", not_after=not_after)
    emergency_at = emergency_time(not_before, not_after, fraction=settings.emergency_fraction)
    plan = RenewalPlan(
        name=name, due_at=now, reason="expired", emergency_at=emergency_at, not_after=not_after
    )
    if now >= not_after:
        return plan
    wanted = set(names if names is not None else [name])
    if not wanted <= certificate_names(certificate):
        return attrs.evolve(plan, reason="names")
    replaces = None
    if ari is not None and ari.end > ari.start:
        replaces = ari_certificate_id(certificate)
    if replaces is not None and ari is not None:
        if rng is None:
            rng = random.Random(
                f"{certificate.serial_number}|{ari.start.isoformat()}|{ari.end.isoformat()}"
            )
        due_at = ari_renewal_time(ari.start, ari.end, rng, now)
        reason: Reason = "ari"
    else:
        due_at = renewal_time(
            not_before,
            not_after,
            fraction=settings.fraction,
            short_fraction=settings.short_fraction,
            short_lifetime=settings.short_lifetime,
        )
        reason = "lifetime"
    if now >= emergency_at:
        due_at, reason = now, "emergency"
    elif due_at > emergency_at:
        due_at, reason = emergency_at, "emergency"
    return attrs.evolve(plan, due_at=max(due_at, now), reason=reason, replaces=replaces)
