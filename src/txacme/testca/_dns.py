"""A tiny in-process DNS server answering TXT queries, for dns-01 tests."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.names import common, dns, server


def _key(name: str | bytes) -> str:
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.lower().rstrip(".")


class _TXTAuthority(common.ResolverBase):
    def __init__(self, records: dict[str, list[str]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._records = records

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: Any
    ) -> defer.Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]:
        key = _key(name)
        if key not in self._records:
            return defer.fail(dns.AuthoritativeDomainError(name))
        answers = []
        if cls == dns.IN and type in (dns.TXT, dns.ALL_RECORDS):
            answers = [
                dns.RRHeader(
                    name=name,
                    type=dns.TXT,
                    cls=dns.IN,
                    ttl=0,
                    payload=dns.Record_TXT(  # type: ignore[no-untyped-call]
                        value.encode("utf-8"), ttl=0
                    ),
                    auth=True,
                )
                for value in self._records[key]
            ]
        return defer.succeed((answers, [], []))


class TestDNSServer:
    """
    A DNS server on 127.0.0.1 (UDP and TCP, one port) answering TXT queries
    from records the test sets; every other name is NXDOMAIN.

    Give :attr:`address` to ``TestCA(dns_server=...)`` and publish dns-01
    answers with :meth:`set_txt`.
    """

    __test__: ClassVar[bool] = False

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        #: ``{lower-cased name: [TXT values]}``.
        self.records: dict[str, list[str]] = {}
        self._ports: list[IListeningPort] = []

    @classmethod
    def start(cls, reactor: Any = None) -> defer.Deferred[TestDNSServer]:
        """Create a server and start listening on a free port of 127.0.0.1."""
        dns_server = cls(reactor)
        dns_server.listen()
        return defer.succeed(dns_server)

    def listen(self) -> None:
        """Listen on UDP and TCP, on the same free port of 127.0.0.1."""
        make_factory: Any = server.DNSServerFactory
        factory = make_factory(authorities=[_TXTAuthority(self.records)])
        factory.noisy = False
        make_protocol: Any = dns.DNSDatagramProtocol
        for _ in range(20):
            # A fresh protocol each time: one whose port was just closed is not reusable.
            protocol = make_protocol(factory)
            protocol.noisy = False
            udp = self._reactor.listenUDP(0, protocol, interface="127.0.0.1")
            try:
                tcp = self._reactor.listenTCP(udp.getHost().port, factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            self._ports = [udp, tcp]
            return
        raise OSError("no port of 127.0.0.1 free for both UDP and TCP")

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return ("127.0.0.1", self._ports[0].getHost().port)  # type: ignore[attr-defined]

    def set_txt(self, name: str, *values: str) -> None:
        """Make ``name`` answer with exactly these TXT values."""
        self.records[_key(name)] = list(values)

    def add_txt(self, name: str, value: str) -> None:
        """Add one TXT value to ``name``."""
        self.records.setdefault(_key(name), []).append(value)

    def remove_txt(self, name: str, value: str | None = None) -> None:
        """Remove one value of ``name`` (or all of them, making it NXDOMAIN)."""
        key = _key(name)
        if value is None:
            self.records.pop(key, None)
            return
        values = self.records.get(key, [])
        if value in values:
            values.remove(value)

    def stop(self) -> defer.Deferred[None]:
        """Stop listening."""
        ports, self._ports = self._ports, []
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        return d.addCallback(lambda _: None)
