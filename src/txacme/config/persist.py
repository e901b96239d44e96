"""
The wiring of ``on_demand=persist`` (see :mod:`txacme.issuing.persistpolicy`):
the policy asks the CA's directory and the account once, with the endpoint's
own client settings.

Configuration layer: may import anything below it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from txacme.challenges.dns01 import DNSPythonLookup
from txacme.challenges.dnspersist01 import directory_issuers
from txacme.challenges.dnsproviders import parse_nameserver
from txacme.errors import ConfigurationError
from txacme.issuing.ondemand import OnDemandPolicy
from txacme.issuing.persistpolicy import PersistOnDemandPolicy
from txacme.protocol.client import Client

PERSIST = "persist"
"""The ``on_demand=`` word that turns the policy on."""


def persist_on_demand_policy(
    reactor: IReactorTime,
    *,
    challenges: Sequence[str],
    dns_options: Mapping[str, str],
    client_creator: Callable[[], Deferred[Client]],
    base: OnDemandPolicy | None,
    limits: Mapping[str, int] | None = None,
) -> PersistOnDemandPolicy:
    """
    The ``on_demand=persist`` policy of an endpoint.

    The issuer domain names are ``dns_persist_issuer`` when given, else the
    directory's ``caaIdentities``; the account is the one of the endpoint's
    key (it must exist: the service creates it when it starts).

    ``limits`` are the ``on_demand_ask_rate``/``on_demand_ask_concurrency``
    limits, which bound the record checks as they bound asks.

    :raises txacme.errors.ConfigurationError: without ``challenge=dns-persist-01``.
    """
    if "dns-persist-01" not in challenges:
        raise ConfigurationError("on_demand=persist needs challenge=dns-persist-01")
    issuer = (dns_options.get("dns_persist_issuer") or "").strip().lower().rstrip(".")

    async def identity() -> tuple[str, Sequence[str]]:
        client = await client_creator()
        try:
            account = await client.lookup_account()
            issuers = [issuer] if issuer else directory_issuers(client.directory)
        finally:
            await client.close()
        if not issuers:
            raise ConfigurationError(
                "on_demand=persist: the CA lists no caaIdentities; set dns_persist_issuer="
            )
        return account.uri, issuers

    resolvers = None
    if dns_options.get("dns_resolvers"):
        resolvers = [
            parse_nameserver(part, "dns_resolvers")
            for part in dns_options["dns_resolvers"].split(",")
            if part.strip()
        ]
    return PersistOnDemandPolicy(
        lambda: Deferred.fromCoroutine(identity()),
        lookup=DNSPythonLookup(resolvers, check_servers=resolvers),
        base=base,
        clock=reactor,
        **(limits or {}),
    )


__all__ = ["PERSIST", "persist_on_demand_policy"]
