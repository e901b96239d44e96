"""
The ``dns-01`` challenge responder (RFC 8555 section 8.4), shared by every DNS provider.

``dns-01`` is the only challenge a CA accepts for a wildcard name, and the one
to use for hosts the CA cannot reach. To answer it, a TXT record
``_acme-challenge.<name>`` must hold ``base64url(SHA-256(key authorization))``
(:func:`txt_value`) at every authoritative name server of the zone.

:class:`DNS01Responder` does everything that does not depend on the DNS
service, and an :class:`~txacme.challenges.dnsproviders.IDNSProvider` writes the records:

1. **CNAME delegation.** ``_acme-challenge.<name>`` is looked up first; when it
   is a CNAME (to a zone the provider may change, e.g. one kept only for ACME),
   the chain is followed and the record is written where it ends.
2. **Zone discovery.** The zone apex is found by asking for SOA records from the
   (CNAME-resolved) name upwards, unless a zone is configured.
3. **Add.** The provider adds the record. Several values may share a name (a
   wildcard and its base name both use ``_acme-challenge.<base name>``); each
   value is added and removed on its own, and a value used twice is added once
   and removed with its last user.
4. **Propagation check.** Each authoritative name server of the zone (from its
   NS records, or the configured servers) is asked directly, without recursion,
   until every one of them returns the value; polls back off from
   ``poll_interval`` to ``max_poll_interval``. Past ``propagation_timeout`` the
   start fails with :class:`DNSPropagationTimeout`, naming the record and the
   servers that lacked it, and the record is removed again. All records started
   in the same reactor turn (the authorizations of one order) are checked in one
   polling loop, one query per server and name each round.
5. **Cleanup.** :meth:`DNS01Responder.stop_responding` removes exactly the value
   it added, leaving any other TXT record at that name.

DNS queries use dnspython in the reactor's thread pool (see
:class:`DNSPythonLookup`); tests and unusual set-ups can pass any
:class:`IDNSLookup`.

:func:`txacme.config.dns.dns01_responder_from_options` builds a responder from
the ``dns=...`` options of an endpoint string.

May import the core modules and :mod:`txacme.challenges.dnsproviders`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from txacme.challenges.dnsproviders import (
    DNSError,
    IDNSProvider,
    Nameserver,
    RunInThread,
    default_run_in_thread,
)
from txacme.errors import ACMETimeout, ConfigurationError
from txacme.formats import b64url
from txacme.interfaces import IResponder
from txacme.logs import Logger

log = Logger()
_T = TypeVar("_T")

CHALLENGE_LABEL = "_acme-challenge"
"""The label under which dns-01 TXT records live (RFC 8555 section 8.4)."""
DEFAULT_PROPAGATION_TIMEOUT = 120.0
"""Seconds to wait for every authoritative server to answer a new record."""
DEFAULT_TTL = 60
"""TTL, in seconds, of the TXT records we add."""
_MAX_CNAME_HOPS = 16


def txt_value(key_authorization: str | bytes) -> str:
    """
    The TXT value that answers a ``dns-01`` challenge.

    :param key_authorization: ``token + "." + base64url(JWK thumbprint)``.
    :return: ``base64url(SHA-256(key_authorization))`` without padding (43 characters).
    """
    if isinstance(key_authorization, str):
        key_authorization = key_authorization.encode("ascii")
    return b64url(hashlib.sha256(key_authorization).digest())


def _canonical(name: str) -> str:
    return name.rstrip(".").lower()


def validation_name(server_name: str) -> str:
    """
    The name whose TXT record the CA checks for ``server_name``.

    ``*.example.com`` and ``example.com`` both give ``_acme-challenge.example.com``.
    """
    name = _canonical(server_name)
    if name.startswith("*."):
        name = name[2:]
    return f"{CHALLENGE_LABEL}.{name}"


def _within(name: str, zone: str) -> bool:
    return zone == "" or name == zone or name.endswith("." + zone)


class DNSPropagationTimeout(ACMETimeout, DNSError):
    """
    A TXT record did not appear at every authoritative name server in time.

    :ivar fqdn: the record's name.
    :ivar value: the TXT value that was expected.
    :ivar lacking: for each server (as text) that lacked the value, why:
        ``"answered without it"`` or the error it gave.
    :ivar timeout: the propagation timeout, in seconds.
    """

    def __init__(self, fqdn: str, value: str, lacking: Mapping[str, str], timeout: float) -> None:
        self.fqdn = fqdn
        self.value = value
        self.lacking = dict(lacking)
        self.timeout = timeout
        details = "; ".join(f"{server}: {why}" for server, why in sorted(self.lacking.items()))
        super().__init__(
            f"TXT record {fqdn} (value {value}) not visible at {len(self.lacking)} "
            f"name server(s) after {timeout:g}s: {details}"
        )


class IDNSLookup(Protocol):
    """
    The DNS queries the responder makes; :class:`DNSPythonLookup` is the real one.

    Every method returns a ``Deferred`` and must not block the reactor.
    Names are lower case without a trailing dot.
    """

    def resolve_cname(self, name: str) -> Deferred[str]:
        """Follow the CNAME chain starting at ``name``; fire with where it ends
        (``name`` itself when it is not a CNAME or does not exist)."""
        ...

    def find_zone(self, name: str) -> Deferred[str]:
        """Fire with the apex of the zone holding ``name``; fail with :class:`DNSError`."""
        ...

    def authoritative_servers(self, zone: str) -> Deferred[list[Nameserver]]:
        """Fire with the addresses of ``zone``'s name servers to check (each
        :class:`Nameserver` carries the NS host name it belongs to)."""
        ...

    def query_txt(self, server: Nameserver, name: str) -> Deferred[set[str]]:
        """Ask ``server`` directly, without recursion, for ``name``'s TXT values;
        fail with :class:`DNSError` if it does not answer usefully."""
        ...


class DNSPythonLookup:
    """
    :class:`IDNSLookup` on dnspython, each query in a thread.

    :param resolvers: recursive resolvers for the CNAME, SOA, NS and address
        lookups; default: the system's (``/etc/resolv.conf``).
    :param check_servers: the servers the propagation check asks, instead of
        the zone's NS records (for split horizon, tests, or a hidden primary).
    :param ns_port: the port of the name servers found in NS records.
    :param timeout: seconds allowed for one lookup (including retries).
    :param run_in_thread: how blocking calls leave the reactor thread.
    """

    def __init__(
        self,
        resolvers: Sequence[Nameserver] | None = None,
        *,
        check_servers: Sequence[Nameserver] | None = None,
        ns_port: int = 53,
        timeout: float = 5.0,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        try:
            import dns.resolver  # noqa: F401
        except ImportError:  # pragma: no cover - the tests install dnspython
            raise ConfigurationError("dns-01 needs dnspython: pip install 'txacme[dns]'")
        self.resolvers = tuple(resolvers) if resolvers else None
        self.check_servers = tuple(check_servers) if check_servers else None
        self.ns_port = ns_port
        self.timeout = timeout
        self._run: RunInThread = run_in_thread or default_run_in_thread
        self._resolver: Any = None

    def __repr__(self) -> str:
        return (
            f"DNSPythonLookup(resolvers={self._show(self.resolvers)}, "
            f"check_servers={self._show(self.check_servers)}, ns_port={self.ns_port})"
        )

    @staticmethod
    def _show(servers: Sequence[Nameserver] | None) -> str:
        return "system" if servers is None else "[" + ", ".join(map(str, servers)) + "]"

    # Everything below ``_sync`` runs in a thread.

    def _get_resolver(self) -> Any:
        import dns.nameserver
        import dns.resolver

        if self._resolver is None:
            if self.resolvers is None:
                resolver = dns.resolver.Resolver(configure=True)
            else:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(ns.address, ns.port) for ns in self.resolvers
                ]
            resolver.lifetime = self.timeout
            resolver.timeout = min(2.0, self.timeout)
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    def _resolve(self, name: str, rdtype: str) -> Any:
        """An RRset (or ``None`` for no data / no such name) for ``name``."""
        import dns.exception
        import dns.resolver

        try:
            answer = self._get_resolver().resolve(
                name + ".", rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return None
        except dns.resolver.NoNameservers as e:
            raise DNSError(f"no resolver answered {rdtype} {name}: {e}")
        except dns.exception.Timeout:
            raise DNSError(f"no answer for {rdtype} {name} within {self.timeout:g}s")
        except dns.exception.DNSException as e:
            raise DNSError(f"lookup of {rdtype} {name} failed: {e}")
        return answer.rrset

    def _sync_resolve_cname(self, name: str) -> str:
        seen = [name]
        for _ in range(_MAX_CNAME_HOPS):
            rrset = self._resolve(name, "CNAME")
            if rrset is None or _canonical(rrset.name.to_text()) != name:
                return name
            name = _canonical(rrset[0].target.to_text())
            if name in seen:
                raise DNSError(f"CNAME loop: {' -> '.join([*seen, name])}")
            seen.append(name)
        raise DNSError(f"CNAME chain longer than {_MAX_CNAME_HOPS}: {' -> '.join(seen)}")

    def _sync_find_zone(self, name: str) -> str:
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            rrset = self._resolve(candidate, "SOA")
            if rrset is not None and _canonical(rrset.name.to_text()) == candidate:
                return candidate
        raise DNSError(f"no DNS zone (SOA record) found for {name}")

    def _sync_authoritative_servers(self, zone: str) -> list[Nameserver]:
        if self.check_servers is not None:
            return list(self.check_servers)
        rrset = self._resolve(zone, "NS")
        if rrset is None:
            raise DNSError(f"zone {zone} has no NS records")
        servers: list[Nameserver] = []
        for host in sorted({_canonical(r.target.to_text()) for r in rrset}):
            for rdtype in ("A", "AAAA"):
                addresses = self._resolve(host, rdtype)
                for rdata in addresses or ():
                    servers.append(Nameserver(rdata.address, self.ns_port, name=host))
        if not servers:
            raise DNSError(f"no address found for any name server of zone {zone}")
        return servers

    def _sync_query_txt(self, server: Nameserver, name: str) -> set[str]:
        import dns.exception
        import dns.flags
        import dns.message
        import dns.query
        import dns.rcode
        import dns.rdatatype

        query = dns.message.make_query(name + ".", "TXT")
        query.flags &= ~dns.flags.RD
        try:
            response, _ = dns.query.udp_with_fallback(
                query, server.address, timeout=self.timeout, port=server.port
            )
        except dns.exception.Timeout:
            raise DNSError(f"no answer within {self.timeout:g}s")
        except (OSError, dns.exception.DNSException) as e:
            raise DNSError(f"query failed: {e}")
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return set()
        if rcode != dns.rcode.NOERROR:
            raise DNSError(f"answered {dns.rcode.to_text(rcode)}")
        values: set[str] = set()
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT and _canonical(rrset.name.to_text()) == name:
                for rdata in rrset:
                    values.add(b"".join(rdata.strings).decode("ascii", "replace"))
        return values

    # The IDNSLookup methods.

    def resolve_cname(self, name: str) -> Deferred[str]:
        """See :meth:`IDNSLookup.resolve_cname`."""
        return self._run(lambda: self._sync_resolve_cname(_canonical(name)))

    def find_zone(self, name: str) -> Deferred[str]:
        """See :meth:`IDNSLookup.find_zone`."""
        return self._run(lambda: self._sync_find_zone(_canonical(name)))

    def authoritative_servers(self, zone: str) -> Deferred[list[Nameserver]]:
        """See :meth:`IDNSLookup.authoritative_servers`."""
        return self._run(lambda: self._sync_authoritative_servers(_canonical(zone)))

    def query_txt(self, server: Nameserver, name: str) -> Deferred[set[str]]:
        """See :meth:`IDNSLookup.query_txt`."""
        return self._run(lambda: self._sync_query_txt(server, _canonical(name)))


@attrs.define(eq=False)
class _Wait:
    """One record waiting to be seen at all of its servers."""

    fqdn: str
    value: str
    servers: list[Nameserver]
    deadline: float
    timeout: float
    deferred: Deferred[None]
    lacking: dict[str, str] = attrs.field(factory=dict)


def _group(server: Nameserver) -> str:
    return server.name or str(server)


class _PropagationCheck:
    """
    Polls name servers until each waiting record is visible at all of them.

    One loop serves every waiting record: each round asks each (server, name)
    pair once. A name server (an NS host) counts as showing a value when any of
    its addresses returns it.
    """

    def __init__(
        self, lookup: IDNSLookup, clock: IReactorTime, first_interval: float, max_interval: float
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._first = first_interval
        self._max = max_interval
        self._interval = first_interval
        self._waits: list[_Wait] = []
        self._call: IDelayedCall | None = None
        self._running = False
        self._again = False

    def wait(
        self, fqdn: str, value: str, servers: Sequence[Nameserver], timeout: float
    ) -> Deferred[None]:
        def cancel(d: Deferred[None]) -> None:
            if entry in self._waits:
                self._waits.remove(entry)

        deferred: Deferred[None] = Deferred(cancel)
        entry = _Wait(
            fqdn, value, list(servers), self._clock.seconds() + timeout, timeout, deferred
        )
        self._waits.append(entry)
        # A new record restarts the backoff; records added in the same reactor
        # turn share the first round.
        self._interval = self._first
        if self._running:
            self._again = True
        else:
            self._schedule(0)
        return deferred

    def _schedule(self, delay: float) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._clock.callLater(delay, self._round)

    def _round(self) -> None:
        self._call = None
        if not self._waits:
            return
        self._running = True
        self._again = False
        pairs = sorted({(s, w.fqdn) for w in self._waits for s in w.servers}, key=str)
        results: dict[tuple[Nameserver, str], set[str] | str] = {}

        def record(result: object, pair: tuple[Nameserver, str]) -> None:
            if isinstance(result, set):
                results[pair] = result
            else:
                error = getattr(result, "value", result)
                results[pair] = str(error) or type(error).__name__

        queries = []
        for server, fqdn in pairs:
            d = maybeDeferred(self._lookup.query_txt, server, fqdn)
            d.addBoth(record, (server, fqdn))
            queries.append(d)
        gatherResults(queries).addBoth(lambda _: self._finish(results))

    def _finish(self, results: Mapping[tuple[Nameserver, str], set[str] | str]) -> None:
        now = self._clock.seconds()
        for entry in list(self._waits):
            reasons: dict[str, list[str]] = {}
            seen: set[str] = set()
            for server in entry.servers:
                group = _group(server)
                result = results.get((server, entry.fqdn), "not asked yet")
                if isinstance(result, set) and entry.value in result:
                    seen.add(group)
                    continue
                why = "answered without it" if isinstance(result, set) else result
                reasons.setdefault(group, []).append(
                    f"{server.where} {why}" if server.name else why
                )
            entry.lacking = {g: "; ".join(r) for g, r in reasons.items() if g not in seen}
            if not entry.lacking:
                self._waits.remove(entry)
                entry.deferred.callback(None)
            elif now >= entry.deadline:
                self._waits.remove(entry)
                entry.deferred.errback(
                    DNSPropagationTimeout(entry.fqdn, entry.value, entry.lacking, entry.timeout)
                )
        # Records added meanwhile (even by the callbacks above) set _again.
        self._running = False
        if not self._waits:
            return
        if self._again:
            delay = 0.0
        else:
            delay = self._interval
            self._interval = min(self._max, self._interval * 2)
        # Never sleep past a deadline: the last round is at the deadline itself.
        earliest = min(w.deadline for w in self._waits)
        self._schedule(max(0.0, min(delay, earliest - now)))


@attrs.define(eq=False)
class _RecordState:
    """How many challenges use one (zone, name, value), and whether it is in the zone."""

    users: int = 0
    added: bool = False
    lock: DeferredLock = attrs.field(factory=DeferredLock)


@attrs.define(eq=False)
class _Active:
    server_name: str
    value: str
    fqdn: str = ""
    record: tuple[str, str, str] | None = None  # (zone, fqdn, value) once added
    stopped: bool = False


def _dns_settings(
    lookup: IDNSLookup | None,
    zone: str | None,
    propagation_timeout: float,
    poll_interval: float,
    max_poll_interval: float,
    clock: IReactorTime,
) -> tuple[IDNSLookup, str | None, _PropagationCheck]:
    """
    The DNS settings every DNS responder takes, checked: its lookup (default
    :class:`DNSPythonLookup`), its zone (canonical) and its propagation check.

    :raises ConfigurationError: for a ``propagation_timeout`` that is not positive.
    """
    if not propagation_timeout > 0:
        raise ConfigurationError(
            f"propagation_timeout={propagation_timeout!r} must be a positive number"
        )
    lookup = lookup if lookup is not None else DNSPythonLookup()
    check = _PropagationCheck(lookup, clock, poll_interval, max_poll_interval)
    return lookup, _canonical(zone) if zone else None, check


@implementer(IResponder)
class DNS01Responder:
    """
    Answers ``dns-01`` challenges by publishing TXT records through ``provider``.

    :param provider: the :class:`~txacme.challenges.dnsproviders.IDNSProvider` that writes records.
    :param lookup: the DNS queries (default: :class:`DNSPythonLookup` with the
        system's resolvers).
    :param zone: the zone to write the records in, instead of discovering it;
        the (CNAME-resolved) validation names must be inside it.
    :param follow_cname: follow a CNAME at ``_acme-challenge.<name>`` (default).
    :param propagation_timeout: seconds to wait for a record to be visible at
        every authoritative name server before giving up.
    :param poll_interval: the first delay between two checks; it doubles up to
        ``max_poll_interval``.
    :param clock: the reactor's time (for tests: ``twisted.internet.task.Clock``).
    """

    challenge_type = "dns-01"

    def __init__(
        self,
        provider: IDNSProvider,
        *,
        lookup: IDNSLookup | None = None,
        zone: str | None = None,
        follow_cname: bool = True,
        propagation_timeout: float = DEFAULT_PROPAGATION_TIMEOUT,
        poll_interval: float = 0.25,
        max_poll_interval: float = 10.0,
        clock: IReactorTime,
    ) -> None:
        self.provider = provider
        self.lookup, self.zone, self._check = _dns_settings(
            lookup, zone, propagation_timeout, poll_interval, max_poll_interval, clock
        )
        self.follow_cname = follow_cname
        self.propagation_timeout = propagation_timeout
        self._active: dict[tuple[str, str], _Active] = {}
        self._records: dict[tuple[str, str, str], _RecordState] = {}

    def __repr__(self) -> str:
        return (
            f"DNS01Responder(provider={self.provider!r}, lookup={self.lookup!r}, "
            f"zone={self.zone!r}, propagation_timeout={self.propagation_timeout:g})"
        )

    @staticmethod
    def _key_authorization(response: Any) -> str:
        key_authorization = getattr(response, "key_authorization", None)
        if not isinstance(key_authorization, str) or not key_authorization.isascii():
            raise ConfigurationError("dns-01 key authorization must be an ASCII string")
        return key_authorization

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """
        Publish the TXT record for ``server_name`` and wait until every
        authoritative name server shows it.

        :return: a ``Deferred`` firing when the CA can validate, or failing with
            :class:`DNSError` / :class:`DNSPropagationTimeout` (the record is then
            removed again).
        """
        try:
            key_authorization = self._key_authorization(response)
        except ConfigurationError as e:
            return _fail(e)
        key = (_canonical(server_name), key_authorization)
        if key in self._active:
            return _fail(DNSError(f"dns-01 for {server_name} is already being answered"))
        try:
            fqdn = self._record_name(key[0], response)
        except ConfigurationError as e:
            return _fail(e)
        active = _Active(key[0], txt_value(key_authorization), fqdn)
        self._active[key] = active
        return Deferred.fromCoroutine(self._start(key, active))

    def _record_name(self, server_name: str, response: Any) -> str:
        """The name of the TXT record answering for ``server_name``."""
        return validation_name(server_name)

    async def _start(self, key: tuple[str, str], active: _Active) -> None:
        fqdn = active.fqdn
        try:
            target = fqdn
            if self.follow_cname:
                target = await self.lookup.resolve_cname(fqdn)
                if target != fqdn:
                    log.info(
                        "dns-01 for {server_name}: {fqdn} is a CNAME to {target}",
                        server_name=active.server_name,
                        fqdn=fqdn,
                        target=target,
                    )
            zone = self.zone
            if zone is None:
                zone = await self.lookup.find_zone(target)
            elif not _within(target, zone):
                raise ConfigurationError(
                    f"dns_zone={zone!r} does not contain the validation name {target}"
                )
            self._check_stopped(active)
            active.record = (zone, target, active.value)
            await self._add(active.record, active.server_name)
            self._check_stopped(active)
            servers = await self.lookup.authoritative_servers(zone)
            self._check_stopped(active)
            await self._check.wait(target, active.value, servers, self.propagation_timeout)
        except BaseException as e:
            if self._active.get(key) is active:
                del self._active[key]
            if active.record is not None:
                record, active.record = active.record, None
                removal = self._remove(record, active.server_name)
                removal.addErrback(
                    lambda f: log.failure(
                        "dns-01 for {server_name}: removing TXT {fqdn} failed",
                        f,
                        server_name=active.server_name,
                        fqdn=record[1],
                    )
                )
                # A cancelled caller should not wait; any other failure is
                # reported once the zone is clean again.
                if not isinstance(e, CancelledError):
                    await removal
            raise
        log.info(
            "dns-01 TXT {fqdn} for {server_name} is visible at {count} name server address(es)",
            fqdn=target,
            server_name=active.server_name,
            count=len(servers),
        )

    @staticmethod
    def _check_stopped(active: _Active) -> None:
        if active.stopped:
            raise CancelledError(f"dns-01 for {active.server_name} was stopped")

    def _add(self, record: tuple[str, str, str], server_name: str) -> Deferred[None]:
        """Count one more user of ``record``; the first one makes the provider add it."""
        state = self._records.setdefault(record, _RecordState())
        state.users += 1

        def add() -> Deferred[None]:
            if state.added:
                return _succeed()
            zone, fqdn, value = record
            log.info(
                "dns-01 for {server_name}: adding TXT {fqdn} in zone {zone}",
                server_name=server_name,
                fqdn=fqdn,
                zone=zone,
            )

            def added(_: object) -> None:
                state.added = True

            return self.provider.add_txt_record(zone, fqdn, value).addCallback(added)

        # The lock keeps each record's adds and removals in order; the shield
        # keeps a cancelled caller from releasing it before the provider is done.
        return _shield(state.lock.run(add))

    def _remove(self, record: tuple[str, str, str], server_name: str) -> Deferred[None]:
        """Count one user less of ``record``; the last one makes the provider remove it."""
        state = self._records.get(record)
        if state is None:
            return _succeed()
        state.users -= 1

        def remove() -> Deferred[None]:
            if state.users > 0:
                return _succeed()
            if not state.added:
                self._forget(record, state)
                return _succeed()
            zone, fqdn, value = record
            log.info(
                "dns-01 for {server_name}: removing TXT {fqdn} from zone {zone}",
                server_name=server_name,
                fqdn=fqdn,
                zone=zone,
            )

            def removed(result: None) -> None:
                state.added = False
                self._forget(record, state)
                return result

            return self.provider.remove_txt_record(zone, fqdn, value).addCallback(removed)

        return _shield(state.lock.run(remove))

    def _forget(self, record: tuple[str, str, str], state: _RecordState) -> None:
        if state.users == 0 and self._records.get(record) is state:
            del self._records[record]

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """
        Remove the TXT value published for this challenge (only that value).

        Stopping a challenge that is not being answered does nothing.
        """
        try:
            key = (_canonical(server_name), self._key_authorization(response))
        except ConfigurationError as e:
            return _fail(e)
        active = self._active.pop(key, None)
        if active is None:
            return _succeed()
        active.stopped = True
        record, active.record = active.record, None
        if record is None:
            return _succeed()
        return self._remove(record, active.server_name)


def _fail(error: BaseException) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(error)
    return d


def _shield(d: Deferred[_T]) -> Deferred[_T]:
    """A Deferred with ``d``'s result; cancelling it leaves ``d`` running."""
    out: Deferred[_T] = Deferred(lambda _: None)

    def forward(result: Any) -> None:
        if not out.called:
            out.callback(result)

    d.addBoth(forward)
    return out


def _succeed() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.callback(None)
    return d


__all__ = [
    "CHALLENGE_LABEL",
    "DEFAULT_PROPAGATION_TIMEOUT",
    "DEFAULT_TTL",
    "DNS01Responder",
    "DNSPropagationTimeout",
    "DNSPythonLookup",
    "IDNSLookup",
    "txt_value",
    "validation_name",
]
