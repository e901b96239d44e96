"""
The ``on_demand_*`` keywords of the endpoint strings, checked and typed
(:class:`OnDemandLimits`); docs/ondemand.rst lists them with their defaults
and the CA limits they respect.

Configuration layer: may import anything below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from txacme.errors import ConfigurationError
from txacme.issuing.ondemand import (
    DEFAULT_ASK_CONCURRENCY,
    DEFAULT_ASK_RATE,
    DEFAULT_DOMAIN_RATE,
    DEFAULT_IDLE,
    DEFAULT_MAX_NAMES,
    DEFAULT_RATE,
    parse_duration,
    parse_rate,
)


@attrs.frozen
class OnDemandLimits:
    """
    The limits of on-demand issuance.

    :ivar rate: issuances and the seconds they are counted over (``on_demand_rate=50/h``;
        a bare number counts a minute).
    :ivar domain_rate: the same, per registered domain (``on_demand_domain_rate=20/w``).
    :ivar max_names: names issued on demand held at once (``on_demand_max=100``).
    :ivar idle: seconds without a handshake before such a name is removed
        (``on_demand_idle=30d``).
    :ivar ask_rate: requests to the ask URL a second (``on_demand_ask_rate=10``).
    :ivar ask_concurrency: requests to the ask URL at once (``on_demand_ask_concurrency=10``).
    """

    rate: tuple[int, float] = DEFAULT_RATE
    domain_rate: tuple[int, float] = DEFAULT_DOMAIN_RATE
    max_names: int = DEFAULT_MAX_NAMES
    idle: float = DEFAULT_IDLE
    ask_rate: int = DEFAULT_ASK_RATE
    ask_concurrency: int = DEFAULT_ASK_CONCURRENCY

    def issuer_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~txacme.issuing.ondemand.OnDemandIssuer`."""
        return {
            "rate": self.rate[0],
            "per": self.rate[1],
            "domain_rate": self.domain_rate[0],
            "domain_per": self.domain_rate[1],
            "max_names": self.max_names,
            "idle": self.idle,
        }

    def policy_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~txacme.issuing.ondemand.OnDemandPolicy`."""
        return {"ask_rate": self.ask_rate, "ask_concurrency": self.ask_concurrency}


def _count(own: Mapping[str, str], name: str, default: int) -> int:
    if name not in own:
        return default
    try:
        value = int(own[name])
    except ValueError:
        raise ConfigurationError(f"{name}={own[name]!r} is not an integer")
    if value < 1:
        raise ConfigurationError(f"{name}={own[name]!r} must be a positive integer")
    return value


def on_demand_keywords(own: Mapping[str, str]) -> OnDemandLimits:
    """
    :class:`OnDemandLimits` from the ``on_demand_*`` keywords of ``own``.

    :raises txacme.errors.ConfigurationError: naming the keyword that is wrong.
    """
    rate = DEFAULT_RATE
    if "on_demand_rate" in own:
        rate = parse_rate("on_demand_rate", own["on_demand_rate"], bare_unit="m")
    domain_rate = DEFAULT_DOMAIN_RATE
    if "on_demand_domain_rate" in own:
        domain_rate = parse_rate(
            "on_demand_domain_rate", own["on_demand_domain_rate"], bare_unit="w"
        )
    idle = DEFAULT_IDLE
    if "on_demand_idle" in own:
        idle = parse_duration("on_demand_idle", own["on_demand_idle"])
    return OnDemandLimits(
        rate=rate,
        domain_rate=domain_rate,
        max_names=_count(own, "on_demand_max", DEFAULT_MAX_NAMES),
        idle=idle,
        ask_rate=_count(own, "on_demand_ask_rate", DEFAULT_ASK_RATE),
        ask_concurrency=_count(own, "on_demand_ask_concurrency", DEFAULT_ASK_CONCURRENCY),
    )


__all__ = ["OnDemandLimits", "on_demand_keywords"]
