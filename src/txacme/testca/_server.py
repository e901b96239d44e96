"""
The test CA itself: RFC 8555 state and the ``twisted.web`` resource serving it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from txacme.errors import ConfigurationError
from txacme.testca import _jws
from txacme.testca._model import (
    DEFAULT_PROFILES,
    UTC,
    Account,
    Authz,
    CertificateRecord,
    Challenge,
    Fault,
    Order,
    Profile,
    Reply,
    RequestRecord,
    Verified,
    cert_id,
    cert_id_of,
    check_dns_name,
    csr_names,
    identifier_problem,
    parse_time,
    rfc3339,
)
from txacme.testca._pki import HTTPSIdentity, IssuingHierarchy, pem
from txacme.testca._problems import Problem
from txacme.testca._validation import Validator

log = Logger()

PROBLEM_JSON = "application/problem+json"
PEM_CHAIN = "application/pem-certificate-chain"
CHALLENGE_TYPES = ("http-01", "tls-alpn-01", "dns-01")
#: Revocation reasons the test CA accepts (those Let's Encrypt accepts).
REVOCATION_REASONS = frozenset({0, 1, 3, 4, 5})
MAX_BODY = 64 * 1024
MAX_IDENTIFIERS = 100


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    """TLS 1.2+ with the HTTPS identity; ALPN answers ``http/1.1`` when offered."""

    def __init__(self, identity: HTTPSIdentity) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(identity.certificate)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(self._select)
        self._ctx = ctx

    @staticmethod
    def _select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        # Clients such as requests and Go offer ALPN; leaving it unanswered
        # makes the handshake fail.
        return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


class _TrackedProtocol(ProtocolWrapper):
    def __init__(self, factory: Any, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure | None = None) -> None:
        wrapper: Any = super()
        wrapper.connectionLost(reason)
        self.lost.callback(None)


class _TrackingFactory(WrappingFactory):
    protocol = _TrackedProtocol
    noisy = False


class _QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        """Requests are logged by the CA at debug level instead."""


class _Root(Resource):
    isLeaf = True

    def __init__(self, ca: TestCA) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._ca = ca

    def render(self, request: Request) -> int:
        self._ca._render(request)
        return NOT_DONE_YET


# Routes: (endpoint name, compiled path pattern, handler method name, auth kind).
# Auth kinds: "get" (plain GET/HEAD), "jwk", "kid", "any" (jwk or kid), "mgmt".
_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (name, re.compile(pattern + r"\Z"), handler, auth)
    for name, pattern, handler, auth in [
        ("directory", r"/directory", "_directory", "get"),
        ("newNonce", r"/acme/new-nonce", "_new_nonce", "get"),
        ("newAccount", r"/acme/new-account", "_new_account", "jwk"),
        ("newOrder", r"/acme/new-order", "_new_order", "kid"),
        ("revokeCert", r"/acme/revoke-cert", "_revoke_cert", "any"),
        ("keyChange", r"/acme/key-change", "_key_change", "kid"),
        (
            "renewalInfo",
            r"/acme/renewal-info/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)",
            "_renewal_info",
            "get",
        ),
        ("orders", r"/acme/acct/([A-Za-z0-9_-]+)/orders", "_account_orders", "kid"),
        ("account", r"/acme/acct/([A-Za-z0-9_-]+)", "_account", "kid"),
        ("finalize", r"/acme/order/([A-Za-z0-9_-]+)/finalize", "_finalize", "kid"),
        ("order", r"/acme/order/([A-Za-z0-9_-]+)", "_order", "kid"),
        ("authz", r"/acme/authz/([A-Za-z0-9_-]+)", "_authz", "kid"),
        ("challenge", r"/acme/chall/([A-Za-z0-9_-]+)", "_challenge", "kid"),
        ("cert", r"/acme/cert/([A-Za-z0-9_-]+)(?:/([0-9]+))?", "_cert", "kid"),
        ("management", r"/testca/([a-z-]+)", "_management", "mgmt"),
    ]
]


class TestCA:
    """
    A small RFC 8555 CA on ``twisted.web``, served over HTTPS on a loopback port
    of the test process.

    Start it with :meth:`start` (or :meth:`start_for_test`, or the
    :meth:`running` async context manager) and stop it with :meth:`stop`. Point
    an ACME client at :attr:`directory_url`, make it trust :attr:`https_ca_file`
    (the CA of the server's own HTTPS certificate), and make TLS clients trust
    :attr:`root_pem` (the root that issued certificates chain to).

    Challenges are validated for real: ``http-01`` connects to
    ``http01_host:http01_port``, ``tls-alpn-01`` to
    ``tlsalpn01_host:tlsalpn01_port`` (whatever the identifier), and ``dns-01``
    asks the DNS server ``dns_server`` for ``_acme-challenge.<name>`` TXT.

    Time: every date the CA reasons about (certificate validity, ARI windows,
    order and authorization expiry) comes from :meth:`now`, which is ``clock``'s
    time (the reactor's by default) plus an offset moved with :meth:`advance`.
    Network waits (validation timeouts, delays) always use the reactor.

    :param reactor: the reactor to listen and connect with (the global one by
        default).
    :param port: the HTTPS port on 127.0.0.1 (0: any free port).
    :param http01_port: where ``http-01`` validation connects.
    :param http01_host: the address ``http-01`` validation connects to.
    :param tlsalpn01_port: where ``tls-alpn-01`` validation connects.
    :param tlsalpn01_host: the address ``tls-alpn-01`` validation connects to.
    :param dns_server: ``(host, port)`` of the DNS server ``dns-01`` validation
        asks; without it ``dns-01`` is not offered.
    :param challenge_types: the challenge types offered (default: every type
        the configuration can validate).
    :param clock: the source of :meth:`now` (an ``IReactorTime`` such as
        :class:`twisted.internet.task.Clock`; the reactor by default).
    :param terms_of_service: ``meta.termsOfService`` (``None`` to omit).
    :param require_terms_agreement: refuse new accounts that do not agree.
    :param eab_required: require external account binding for new accounts.
    :param eab_keys: ``{kid: base64url HMAC key}`` accepted for EAB; when EAB
        is required and none are given, one pair is generated
        (see :attr:`eab_keys`).
    :param profiles: the profiles offered, ``{name: Profile}``.
    :param default_profile: the profile used when an order names none.
    :param bad_nonce_rate: the fraction (0 to 1) of good nonces rejected with
        ``badNonce``.
    :param retry_after: seconds sent as ``Retry-After`` while an authorization
        or order is being processed (0 makes clients that honour it poll at
        once; some clients treat 0 as absent).
    :param ari_retry_after: seconds sent as ``Retry-After`` with ARI answers.
    :param reuse_authorizations: give a new order the account's valid
        authorizations for the same identifiers instead of new ones.
    :param alternate_chains: how many alternate chains (through alternate
        roots cross-signing the intermediate) each certificate has.
    :param validation_timeout: seconds a validation may take.
    :param validation_delay: seconds between a challenge answer and the
        validation attempt.
    :param issuance_delay: seconds an order stays ``processing`` after
        finalization.
    :param seed: seed of the random source used for ``bad_nonce_rate``.
    """

    # Not a test class, whatever pytest thinks of the name.
    __test__: ClassVar[bool] = False

    def __init__(
        self,
        reactor: Any = None,
        *,
        port: int = 0,
        http01_port: int = 5002,
        http01_host: str = "127.0.0.1",
        tlsalpn01_port: int = 5001,
        tlsalpn01_host: str = "127.0.0.1",
        dns_server: tuple[str, int] | None = None,
        challenge_types: Sequence[str] | None = None,
        clock: IReactorTime | None = None,
        terms_of_service: str | None = "https://testca.invalid/terms-of-service",
        require_terms_agreement: bool = False,
        eab_required: bool = False,
        eab_keys: Mapping[str, str] | None = None,
        profiles: Mapping[str, Profile] | None = None,
        default_profile: str = "classic",
        bad_nonce_rate: float = 0.0,
        retry_after: int = 1,
        ari_retry_after: int = 6 * 3600,
        reuse_authorizations: bool = False,
        alternate_chains: int = 0,
        validation_timeout: float = 5.0,
        validation_delay: float = 0.0,
        issuance_delay: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._offset = 0.0
        self._port_number = port
        self.http01_host = http01_host
        self.http01_port = http01_port
        self.tlsalpn01_host = tlsalpn01_host
        self.tlsalpn01_port = tlsalpn01_port
        self.dns_server = dns_server
        if challenge_types is None:
            challenge_types = [t for t in CHALLENGE_TYPES if t != "dns-01" or dns_server]
        unknown = set(challenge_types) - set(CHALLENGE_TYPES)
        if unknown:
            raise ConfigurationError(f"challenge_types: unknown types {sorted(unknown)}")
        #: The challenge types offered.
        self.challenge_types: list[str] = list(challenge_types)
        self.terms_of_service = terms_of_service
        self.require_terms_agreement = require_terms_agreement
        self.eab_required = eab_required
        #: ``{kid: base64url HMAC key}`` accepted for external account binding.
        self.eab_keys: dict[str, str] = dict(eab_keys or {})
        if eab_required and not self.eab_keys:
            self.eab_keys[f"kid-{secrets.token_hex(4)}"] = _jws.b64encode(os.urandom(32))
        for kid, mac in self.eab_keys.items():
            try:
                _jws.b64decode(mac, "key")
            except Problem:
                raise ConfigurationError(f"eab_keys[{kid!r}] is not base64url")
        self.profiles: dict[str, Profile] = dict(DEFAULT_PROFILES if profiles is None else profiles)
        if default_profile not in self.profiles:
            raise ConfigurationError(
                f"default_profile {default_profile!r} is not one of {sorted(self.profiles)}"
            )
        self.default_profile = default_profile
        if not 0.0 <= bad_nonce_rate <= 1.0:
            raise ConfigurationError(f"bad_nonce_rate must be in [0, 1], not {bad_nonce_rate!r}")
        self.bad_nonce_rate = bad_nonce_rate
        if retry_after < 0 or ari_retry_after < 0:
            raise ConfigurationError("retry_after and ari_retry_after must not be negative")
        self.retry_after = retry_after
        self.ari_retry_after = ari_retry_after
        self.reuse_authorizations = reuse_authorizations
        self.validation_delay = validation_delay
        self.issuance_delay = issuance_delay
        #: Lower-cased DNS names (or IP addresses) that orders may not contain.
        self.forbidden_names: set[str] = set()
        #: Every request received, oldest first.
        self.requests: list[RequestRecord] = []
        #: Every certificate issued, oldest first.
        self.certificates: list[CertificateRecord] = []

        self._random = random.Random(seed)
        self._validator = Validator(reactor, validation_timeout)
        self._hierarchy = IssuingHierarchy.generate(self.now(), alternate_chains)
        self._https = HTTPSIdentity.generate(
            datetime.datetime.fromtimestamp(reactor.seconds(), UTC)
        )
        self._nonces: OrderedDict[str, None] = OrderedDict()
        self._accounts: dict[str, Account] = {}
        self._accounts_by_key: dict[bytes, Account] = {}
        self._orders_by_id: dict[str, Order] = {}
        self._authzs: dict[str, Authz] = {}
        self._challenges: dict[str, Challenge] = {}
        self._certs: dict[str, CertificateRecord] = {}
        self._certs_by_id: dict[str, CertificateRecord] = {}
        self._faults: list[Fault] = []
        self._calls: set[IDelayedCall] = set()
        self._running: set[defer.Deferred[Any]] = set()
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._listening: IListeningPort | None = None
        site: Any = _QuietSite
        tracking: Any = _TrackingFactory
        self._factory: WrappingFactory = tracking(site(_Root(self)))
        self._tempdir: str | None = None
        self._base_url = ""

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def start(cls, reactor: Any = None, **options: Any) -> defer.Deferred[TestCA]:
        """
        Create a CA with ``options`` (see the class) and start listening.

        :return: a ``Deferred`` firing with the running :class:`TestCA`.
        """
        ca = cls(reactor, **options)
        return ca.listen()

    @classmethod
    def start_for_test(
        cls, test_case: Any, reactor: Any = None, **options: Any
    ) -> defer.Deferred[TestCA]:
        """
        Like :meth:`start`, and register :meth:`stop` as a cleanup of
        ``test_case`` (a ``twisted.trial.unittest.TestCase`` or anything with
        ``addCleanup`` that waits for returned ``Deferred``\\ s).
        """
        d = cls.start(reactor, **options)

        def registered(ca: TestCA) -> TestCA:
            test_case.addCleanup(ca.stop)
            return ca

        return d.addCallback(registered)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, reactor: Any = None, **options: Any) -> AsyncIterator[TestCA]:
        """
        An async context manager: ``async with TestCA.running(reactor) as ca:``
        (in a coroutine driven by ``Deferred.fromCoroutine``, e.g. an
        ``async def`` trial test).
        """
        ca = await cls.start(reactor, **options)
        try:
            yield ca
        finally:
            await ca.stop()

    def listen(self) -> defer.Deferred[TestCA]:
        """Start serving on 127.0.0.1 and write the PEM files; fires with self."""
        if self._listening is not None:
            raise ConfigurationError("this TestCA is already listening")
        endpoint: Any = SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
            self._reactor,
            self._port_number,
            _ServerTLS(self._https),
            backlog=128,
            interface="127.0.0.1",
        )

        def listening(port: IListeningPort) -> TestCA:
            self._listening = port
            address: Any = port.getHost()
            self._base_url = f"https://127.0.0.1:{address.port}"
            self._tempdir = tempfile.mkdtemp(prefix="txacme-testca-")
            for name, data in [
                ("https-ca.pem", self.https_ca_pem),
                ("root.pem", self.root_pem),
                ("roots.pem", b"".join(self.root_pems)),
            ]:
                with open(os.path.join(self._tempdir, name), "wb") as f:
                    f.write(data)
            log.info("txacme TestCA listening at {url}", url=self.directory_url)
            return self

        d: defer.Deferred[TestCA] = endpoint.listen(self._factory).addCallback(listening)
        return d

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening, close every connection, cancel pending work and delete
        the PEM files. Safe to call more than once.
        """
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()
        for d in list(self._running):
            d.cancel()
        self._running.clear()
        self._check_idle()
        waits: list[defer.Deferred[Any]] = [self._validator.close()]
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        for proto in list(self._factory.protocols):
            tracked: Any = proto
            waits.append(tracked.lost)
            if tracked.transport is not None:
                tracked.transport.abortConnection()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None
        d = defer.gatherResults(waits, consumeErrors=True)
        return d.addCallback(lambda _: None)

    # -- what clients need --------------------------------------------------

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return self._base_url

    @property
    def port(self) -> int:
        """The HTTPS port."""
        return int(self._base_url.rsplit(":", 1)[1])

    @property
    def directory_url(self) -> str:
        """The ACME directory URL."""
        return self._base_url + "/directory"

    @property
    def https_ca_pem(self) -> bytes:
        """PEM of the CA that signed the server's own HTTPS certificate."""
        return pem(self._https.ca)

    @property
    def https_ca_file(self) -> str:
        """Path of a file holding :attr:`https_ca_pem` (while running)."""
        return self._path("https-ca.pem")

    @property
    def root(self) -> x509.Certificate:
        """The root issued certificates chain to (by the default chain)."""
        return self._hierarchy.root

    @property
    def root_pem(self) -> bytes:
        """PEM of :attr:`root`."""
        return pem(self._hierarchy.root)

    @property
    def root_file(self) -> str:
        """Path of a file holding :attr:`root_pem` (while running)."""
        return self._path("root.pem")

    @property
    def root_pems(self) -> list[bytes]:
        """PEM of every root: the default first, then the alternate roots."""
        return [pem(c) for c in [self._hierarchy.root, *self._hierarchy.alternate_roots]]

    @property
    def roots_file(self) -> str:
        """Path of a file holding every root (while running)."""
        return self._path("roots.pem")

    @property
    def intermediate_pem(self) -> bytes:
        """PEM of the intermediate that signs issued certificates."""
        return pem(self._hierarchy.intermediate)

    def _path(self, name: str) -> str:
        if self._tempdir is None:
            raise ConfigurationError("the TestCA is not running")
        return os.path.join(self._tempdir, name)

    def trust_root(self) -> Any:
        """
        A Twisted trust root (``IOpenSSLTrustRoot``) holding every issuing root, for TLS clients of
        the servers that use issued certificates:
        ``optionsForClientTLS(name, trustRoot=ca.trust_root())``.
        """
        load: Any = Certificate.loadPEM
        make: Any = trustRootFromCertificates
        return make([load(p) for p in self.root_pems])

    def https_policy(self) -> IPolicyForHTTPS:
        """A policy for ``twisted.web.client.Agent`` (or treq) that trusts the CA's HTTPS."""
        make: Any = BrowserLikePolicyForHTTPS
        load: Any = Certificate.loadPEM
        policy: IPolicyForHTTPS = make(trustRoot=load(self.https_ca_pem))
        return policy

    # -- time ---------------------------------------------------------------

    def now(self) -> datetime.datetime:
        """The CA's current time (UTC)."""
        return datetime.datetime.fromtimestamp(self._clock.seconds() + self._offset, UTC)

    def advance(self, amount: float | datetime.timedelta) -> None:
        """
        Move the CA's clock forward by ``amount`` (seconds or a timedelta).

        This moves an offset added to ``clock``; it does not run anything
        scheduled on ``clock``.
        """
        seconds = amount.total_seconds() if isinstance(amount, datetime.timedelta) else amount
        self._offset += float(seconds)

    # -- faults -------------------------------------------------------------

    def fail_next(
        self,
        problem_type: str,
        detail: str = "injected by TestCA.fail_next",
        *,
        endpoint: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        """
        Answer the next ``count`` requests (to ``endpoint`` only, when given: a
        :attr:`RequestRecord.endpoint` name such as ``newOrder``) with a problem
        document instead of processing them.

        :param problem_type: an ACME code such as ``rateLimited`` or a full URN.
        :param status: the HTTP status (by default the usual one for the type).
        :param retry_after: a ``Retry-After`` header value in seconds.
        """
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        self._faults.append(
            Fault(endpoint, count, Problem(problem_type, detail, status=status, headers=headers))
        )

    def delay_next(self, seconds: float, *, endpoint: str | None = None, count: int = 1) -> None:
        """Hold the next ``count`` requests (to ``endpoint``) ``seconds`` before processing."""
        self._faults.append(Fault(endpoint, count, delay=seconds))

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self._faults:
            if fault.endpoint in (None, endpoint):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- certificates, ARI --------------------------------------------------

    def record_for(self, cert: x509.Certificate | bytes | str) -> CertificateRecord:
        """
        The :class:`CertificateRecord` of an issued certificate, given as an
        ``x509.Certificate``, its PEM (the first certificate counts) or its ARI
        identifier; ``KeyError`` if the CA did not issue it.
        """
        return self._certs_by_id[cert_id_of(cert)]

    def is_revoked(self, cert: x509.Certificate | bytes | str) -> bool:
        """True when the CA revoked ``cert``."""
        return self.record_for(cert).revoked

    def renewal_window(
        self, cert: x509.Certificate | bytes | str
    ) -> tuple[datetime.datetime, datetime.datetime]:
        """
        The ARI suggested window of ``cert``: the one set by
        :meth:`set_renewal_window`; else, for a revoked certificate, the hour
        before its revocation; else from two thirds to three quarters of its
        lifetime.
        """
        record = self.record_for(cert)
        if record.renewal_window is not None:
            return record.renewal_window
        if record.revoked_at is not None:
            return record.revoked_at - datetime.timedelta(hours=1), record.revoked_at
        nb = record.certificate.not_valid_before_utc
        lifetime = record.certificate.not_valid_after_utc - nb
        return nb + lifetime * 2 / 3, nb + lifetime * 3 / 4

    def set_renewal_window(
        self,
        cert: x509.Certificate | bytes | str,
        start: datetime.datetime,
        end: datetime.datetime,
        explanation_url: str | None = None,
    ) -> None:
        """Set the ARI suggested window the CA reports for ``cert``."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ConfigurationError("renewal window times must be timezone-aware")
        if end <= start:
            raise ConfigurationError(f"renewal window end {end} is not after start {start}")
        record = self.record_for(cert)
        record.renewal_window = (start.astimezone(UTC), end.astimezone(UTC))
        record.explanation_url = explanation_url

    def request_renewal(self, cert: x509.Certificate | bytes | str) -> None:
        """Make ``cert``'s ARI window end now (CA clock): "renew immediately"."""
        now = self.now()
        self.set_renewal_window(cert, now - datetime.timedelta(hours=1), now)

    # -- request handling ---------------------------------------------------

    def _new_nonce_value(self) -> str:
        nonce = _jws.b64encode(os.urandom(16))
        self._nonces[nonce] = None
        while len(self._nonces) > 10000:
            self._nonces.popitem(last=False)
        return nonce

    def _url(self, kind: str, ident: str = "") -> str:
        return f"{self._base_url}/acme/{kind}{'/' + ident if ident else ''}"

    def _render(self, request: Request) -> None:
        path = request.path.decode("ascii", "replace")
        method = request.method.decode("ascii", "replace")
        route: tuple[str, Callable[..., Reply], str, tuple[str, ...]] | None = None
        for name, pattern, handler, auth in _ROUTES:
            match = pattern.match(path)
            if match:
                args = tuple(g for g in match.groups() if g is not None)
                route = (name, getattr(self, handler), auth, args)
                break
        record = RequestRecord(method, path, route[0] if route else "unknown")
        # Management requests (the test's own) are neither recorded nor faulted.
        fault = None
        if record.endpoint != "management":
            self.requests.append(record)
            fault = self._take_fault(record.endpoint) if route else None
        if fault is not None and fault.problem is not None:
            self._write(request, record, self._problem_reply(fault.problem))
            return
        if fault is not None and fault.delay > 0:
            call = self._reactor.callLater(
                fault.delay, self._delayed_dispatch, request, record, route
            )
            self._calls.add(call)
            return
        self._dispatch(request, record, route)

    def _delayed_dispatch(self, request: Request, record: RequestRecord, route: Any) -> None:
        self._calls = {c for c in self._calls if c.active()}
        if request.channel is not None:
            self._dispatch(request, record, route)
        self._check_idle()

    def _dispatch(
        self,
        request: Request,
        record: RequestRecord,
        route: tuple[str, Callable[..., Reply], str, tuple[str, ...]] | None,
    ) -> None:
        try:
            if route is None:
                raise Problem("malformed", "no such resource", status=404)
            name, handler, auth, args = route
            method = record.method
            if auth in ("get", "mgmt"):
                if auth == "get" and method not in ("GET", "HEAD"):
                    raise Problem("malformed", f"{method} is not allowed here", status=405)
                reply = handler(request, *args)
            else:
                if method != "POST":
                    raise Problem(
                        "malformed", f"{method} is not allowed here; use POST-as-GET", status=405
                    )
                verified = self._authenticate(request, auth)
                record.post_as_get = verified.jws.post_as_get
                reply = handler(verified, *args)
        except Problem as problem:
            reply = self._problem_reply(problem)
        except Exception:
            log.failure("TestCA failed handling {path}", path=record.path)
            reply = self._problem_reply(Problem("serverInternal", "the test CA failed"))
        self._write(request, record, reply)

    def _problem_reply(self, problem: Problem) -> Reply:
        body = json.dumps(problem.to_json(), indent=1).encode("utf-8")
        return Reply(problem.status, body, PROBLEM_JSON, list(problem.headers.items()))

    def _write(self, request: Any, record: RequestRecord, reply: Reply) -> None:
        record.status = reply.status
        if reply.content_type == PROBLEM_JSON:
            record.problem = json.loads(reply.body)["type"]
        log.debug(
            "TestCA {method} {path} -> {status} {problem}",
            method=record.method,
            path=record.path,
            status=reply.status,
            problem=record.problem or "",
        )
        if request.channel is None:
            return
        request.setResponseCode(reply.status)
        request.setHeader("Replay-Nonce", self._new_nonce_value())
        request.setHeader("Cache-Control", "no-store")
        request.responseHeaders.addRawHeader("Link", f'<{self.directory_url}>;rel="index"')
        for name, value in reply.headers:
            request.responseHeaders.addRawHeader(name, value)
        if reply.content_type:
            request.setHeader("Content-Type", reply.content_type)
        request.setHeader("Content-Length", str(len(reply.body)))
        request.write(reply.body)
        request.finish()

    def _authenticate(self, request: Request, auth: str) -> Verified:
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/jose+json":
            raise Problem("malformed", "the Content-Type must be application/jose+json", status=415)
        assert request.content is not None
        body = request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise Problem("malformed", "the request body is too large", status=413)
        jws = _jws.parse(body)
        protected = jws.protected
        if jws.alg not in _jws.SIGNATURE_ALGORITHMS:
            raise Problem(
                "badSignatureAlgorithm",
                f"JWS algorithm {jws.alg!r} is not supported",
                extra={"algorithms": sorted(_jws.SIGNATURE_ALGORITHMS)},
            )
        url = protected.get("url")
        host = request.getHeader("host") or ""
        expected_url = f"https://{host}{request.path.decode('ascii', 'replace')}"
        if not isinstance(url, str):
            raise Problem("malformed", "the JWS protected header has no 'url'")
        if url != expected_url:
            raise Problem(
                "unauthorized", f"the JWS 'url' {url!r} is not the request URL {expected_url!r}"
            )
        if ("jwk" in protected) == ("kid" in protected):
            raise Problem("malformed", "the JWS must have exactly one of 'jwk' and 'kid'")
        if auth == "jwk" and "jwk" not in protected:
            raise Problem("malformed", "this resource needs a JWS with 'jwk', not 'kid'")
        if auth == "kid" and "kid" not in protected:
            raise Problem("malformed", "this resource needs a JWS with 'kid', not 'jwk'")
        account: Account | None = None
        if "jwk" in protected:
            jwk = _jws.load_public_jwk(protected["jwk"])
        else:
            kid = protected["kid"]
            found = self._accounts.get(kid) if isinstance(kid, str) else None
            if found is None:
                raise Problem("accountDoesNotExist", f"no account at {kid!r}")
            if found.status != "valid":
                raise Problem("unauthorized", f"the account is {found.status}")
            account = found
            jwk = found.jwk
        _jws.verify(jws, jwk)
        self._check_nonce(protected.get("nonce"))
        return Verified(jws, jwk, account, url)

    def _check_nonce(self, nonce: object) -> None:
        if not isinstance(nonce, str) or not nonce:
            raise Problem("badNonce", "the JWS protected header has no 'nonce'")
        if nonce not in self._nonces:
            raise Problem("badNonce", "the nonce is unknown or was already used")
        del self._nonces[nonce]
        if self.bad_nonce_rate and self._random.random() < self.bad_nonce_rate:
            raise Problem("badNonce", "the nonce was rejected (TestCA bad_nonce_rate)")

    # -- resources ----------------------------------------------------------

    def _directory(self, request: Request) -> Reply:
        meta: dict[str, Any] = {
            "website": "https://testca.invalid/",
            "caaIdentities": ["testca.invalid"],
            "externalAccountRequired": self.eab_required,
            "profiles": {name: p.description for name, p in self.profiles.items()},
        }
        if self.terms_of_service:
            meta["termsOfService"] = self.terms_of_service
        return Reply.json(
            200,
            {
                "newNonce": self._url("new-nonce"),
                "newAccount": self._url("new-account"),
                "newOrder": self._url("new-order"),
                "revokeCert": self._url("revoke-cert"),
                "keyChange": self._url("key-change"),
                "renewalInfo": self._url("renewal-info"),
                "meta": meta,
            },
        )

    def _new_nonce(self, request: Request) -> Reply:
        return Reply(200 if request.method == b"HEAD" else 204)

    def _account_reply(self, account: Account, status: int) -> Reply:
        headers = [("Location", account.url)]
        if self.terms_of_service:
            headers.append(("Link", f'<{self.terms_of_service}>;rel="terms-of-service"'))
        doc: dict[str, Any] = {
            "status": account.status,
            "contact": account.contact,
            "termsOfServiceAgreed": account.tos_agreed,
            "orders": account.url + "/orders",
        }
        return Reply.json(status, doc, headers)

    def _check_contact(self, value: object) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise Problem("malformed", "'contact' must be a list of strings")
        for contact in value:
            if not contact.startswith("mailto:"):
                raise Problem("unsupportedContact", f"only mailto: contacts, not {contact!r}")
            address = contact[len("mailto:") :]
            if (
                address.count("@") != 1
                or "?" in address
                or "," in address
                or not all(address.split("@"))
            ):
                raise Problem("invalidContact", f"{contact!r} is not one email address")
        return list(value)

    def _new_account(self, v: Verified) -> Reply:
        payload = v.payload()
        thumb = v.jwk.thumbprint()
        existing = self._accounts_by_key.get(thumb)
        if existing is not None and existing.status != "valid":
            # RFC 8555 section 7.3.6: no further requests with a deactivated key.
            raise Problem("unauthorized", f"the account of this key is {existing.status}")
        if payload.get("onlyReturnExisting") is True:
            if existing is None:
                raise Problem("accountDoesNotExist", "no account exists for this key")
            return self._account_reply(existing, 200)
        if existing is not None:
            return self._account_reply(existing, 200)
        contact = self._check_contact(payload.get("contact"))
        agreed = payload.get("termsOfServiceAgreed") is True
        if self.require_terms_agreement and self.terms_of_service and not agreed:
            raise Problem("malformed", "new accounts must agree to the terms of service")
        eab_kid = self._check_eab(payload.get("externalAccountBinding"), v)
        ident = secrets.token_urlsafe(9)
        account = Account(ident, self._url("acct", ident), v.jwk, contact, agreed, eab_kid)
        self._accounts[account.url] = account
        self._accounts_by_key[thumb] = account
        log.info("TestCA created account {url}", url=account.url)
        return self._account_reply(account, 201)

    def _check_eab(self, binding: object, v: Verified) -> str | None:
        if binding is None:
            if self.eab_required:
                raise Problem("externalAccountRequired", "this CA needs external account binding")
            return None
        if not self.eab_keys:
            raise Problem("malformed", "this CA does not support external account binding")
        inner = _jws.parse(binding, "externalAccountBinding")
        protected = inner.protected
        if protected.get("url") != v.url:
            raise Problem("unauthorized", "the external account binding 'url' is not newAccount")
        if "nonce" in protected:
            raise Problem("malformed", "the external account binding must not have a nonce")
        kid = protected.get("kid")
        mac_key = self.eab_keys.get(kid) if isinstance(kid, str) else None
        if mac_key is None or not isinstance(kid, str):
            raise Problem("unauthorized", f"unknown external account binding kid {kid!r}")
        _jws.verify_mac(inner, _jws.b64decode(mac_key, "key"))
        bound = _jws.load_public_jwk(_jws.json_object(inner.payload, "binding payload"))
        if not _jws.same_key(bound, v.jwk):
            raise Problem("unauthorized", "the external account binding is for another key")
        return kid

    def _owned_account(self, v: Verified) -> Account:
        assert v.account is not None
        return v.account

    def _account(self, v: Verified, ident: str) -> Reply:
        account = self._owned_account(v)
        if account.url != self._url("acct", ident):
            raise Problem("unauthorized", "the JWS 'kid' is not this account")
        if v.jws.post_as_get:
            return self._account_reply(account, 200)
        payload = v.jws.payload_json()
        if "contact" in payload:
            account.contact = self._check_contact(payload["contact"])
        if "status" in payload:
            if payload["status"] != "deactivated":
                raise Problem("malformed", "an account's status can only become 'deactivated'")
            account.status = "deactivated"
            for order in account.orders:
                for authz in order.authzs:
                    if authz.status in ("pending", "valid"):
                        authz.status = "deactivated"
            log.info("TestCA deactivated account {url}", url=account.url)
        return self._account_reply(account, 200)

    def _account_orders(self, v: Verified, ident: str) -> Reply:
        account = self._owned_account(v)
        if account.url != self._url("acct", ident):
            raise Problem("unauthorized", "the JWS 'kid' is not this account")
        return Reply.json(200, {"orders": [o.url for o in account.orders]})

    def _key_change(self, v: Verified) -> Reply:
        account = self._owned_account(v)
        outer = v.payload()
        inner = _jws.parse(outer, "inner JWS")
        protected = inner.protected
        if "jwk" not in protected or "kid" in protected:
            raise Problem("malformed", "the inner JWS must have 'jwk' and no 'kid'")
        if "nonce" in protected:
            raise Problem("malformed", "the inner JWS must not have a 'nonce'")
        if protected.get("url") != v.url:
            raise Problem("malformed", "the inner JWS 'url' differs from the outer one")
        new_key = _jws.load_public_jwk(protected["jwk"])
        _jws.verify(inner, new_key)
        body = inner.payload_json()
        if body.get("account") != account.url:
            raise Problem("unauthorized", "the key change names another account")
        try:
            old_key = _jws.load_public_jwk(body.get("oldKey"))
        except Problem:
            raise Problem("malformed", "the key change 'oldKey' is not a public JWK")
        if not _jws.same_key(old_key, account.jwk):
            raise Problem("unauthorized", "'oldKey' is not the account's current key")
        new_thumb = new_key.thumbprint()
        other = self._accounts_by_key.get(new_thumb)
        if other is not None:
            raise Problem(
                "malformed",
                "the new key is already used by an account",
                status=409,
                headers={"Location": other.url},
            )
        del self._accounts_by_key[account.jwk.thumbprint()]
        account.jwk = new_key
        self._accounts_by_key[new_thumb] = account
        log.info("TestCA rolled the key of {url}", url=account.url)
        return self._account_reply(account, 200)

    # orders

    def _check_identifiers(self, value: object) -> list[dict[str, str]]:
        if not isinstance(value, list) or not value:
            raise Problem("malformed", "'identifiers' must be a non-empty list")
        if len(value) > MAX_IDENTIFIERS:
            raise Problem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers per order")
        result: list[dict[str, str]] = []
        for ident in value:
            if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
                raise Problem("malformed", f"bad identifier {ident!r}")
            id_type, raw = ident.get("type"), ident["value"]
            if id_type == "dns":
                name = check_dns_name(raw)
                if name.startswith("*.") and "dns-01" not in self.challenge_types:
                    raise identifier_problem(
                        "dns", raw, "wildcards need dns-01, which this CA does not offer"
                    )
            elif id_type == "ip":
                try:
                    name = str(ipaddress.ip_address(raw))
                except ValueError:
                    raise identifier_problem("ip", raw, "not an IP address")
            else:
                raise Problem(
                    "unsupportedIdentifier",
                    f"identifier type {id_type!r} is not supported",
                    identifier={"type": str(id_type), "value": raw},
                )
            if name in self.forbidden_names or name.removeprefix("*.") in self.forbidden_names:
                raise identifier_problem(str(id_type), raw, "forbidden by the CA's policy")
            entry = {"type": str(id_type), "value": name}
            if entry not in result:
                result.append(entry)
        return result

    def _new_order(self, v: Verified) -> Reply:
        account = self._owned_account(v)
        payload = v.payload()
        identifiers = self._check_identifiers(payload.get("identifiers"))
        profile = payload.get("profile") or self.default_profile
        if profile not in self.profiles:
            raise Problem("invalidProfile", f"unknown profile {profile!r}")
        lifetime = self.profiles[profile].lifetime
        not_before = not_after = None
        if payload.get("notBefore") is not None:
            not_before = parse_time(payload["notBefore"], "notBefore")
        if payload.get("notAfter") is not None:
            not_after = parse_time(payload["notAfter"], "notAfter")
        start = not_before or self.now()
        if not_after is not None and not (start < not_after <= start + lifetime):
            raise Problem("malformed", f"notAfter must be after notBefore and within {lifetime}")
        replaces = self._check_replaces(payload.get("replaces"), account, identifiers)
        ident = secrets.token_urlsafe(9)
        now = self.now()
        order = Order(
            id=ident,
            url=self._url("order", ident),
            account=account,
            identifiers=identifiers,
            authzs=[self._authz_for(account, i) for i in identifiers],
            expires=now + datetime.timedelta(days=7),
            profile=profile,
            not_before=not_before,
            not_after=not_after,
            replaces=replaces.cert_id if replaces else None,
        )
        if replaces is not None:
            replaces.replaced_by = order.url
        self._orders_by_id[ident] = order
        account.orders.append(order)
        return Reply.json(201, self._order_json(order), [("Location", order.url)])

    def _check_replaces(
        self, value: object, account: Account, identifiers: list[dict[str, str]]
    ) -> CertificateRecord | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise Problem("malformed", "'replaces' must be a string")
        record = self._certs_by_id.get(value)
        if record is None:
            raise Problem("malformed", f"'replaces' names no certificate of this CA: {value!r}")
        if record.account_url != account.url:
            raise Problem("unauthorized", "'replaces' names a certificate of another account")
        order = self._orders_by_id[record.order_url.rsplit("/", 1)[1]]
        if not {i["value"] for i in order.identifiers} & {i["value"] for i in identifiers}:
            raise Problem("malformed", "'replaces' names a certificate sharing no identifier")
        if record.replaced_by is not None:
            replacing = self._orders_by_id.get(record.replaced_by.rsplit("/", 1)[1])
            if replacing is not None and self._order_status(replacing) != "invalid":
                raise Problem("alreadyReplaced", f"{value} was already replaced by {replacing.url}")
        return record

    def _authz_for(self, account: Account, identifier: dict[str, str]) -> Authz:
        id_type, value = identifier["type"], identifier["value"]
        wildcard = value.startswith("*.")
        base = value[2:] if wildcard else value
        if self.reuse_authorizations:
            for order in reversed(account.orders):
                for authz in order.authzs:
                    if (authz.id_type, authz.value, authz.wildcard) == (
                        id_type,
                        base,
                        wildcard,
                    ) and self._authz_status(authz) == "valid":
                        return authz
        if wildcard:
            types = ["dns-01"]
        elif id_type == "ip":
            types = [t for t in self.challenge_types if t != "dns-01"]
        else:
            types = list(self.challenge_types)
        if not types:
            raise identifier_problem(id_type, value, "no challenge type can validate it")
        ident = secrets.token_urlsafe(9)
        authz = Authz(
            id=ident,
            url=self._url("authz", ident),
            account=account,
            id_type=id_type,
            value=base,
            wildcard=wildcard,
            expires=self.now() + datetime.timedelta(days=7),
        )
        for challenge_type in types:
            cid = secrets.token_urlsafe(9)
            challenge = Challenge(
                cid, self._url("chall", cid), challenge_type, _jws.b64encode(os.urandom(32)), authz
            )
            authz.challenges.append(challenge)
            self._challenges[cid] = challenge
        self._authzs[ident] = authz
        return authz

    def _authz_status(self, authz: Authz) -> str:
        if authz.status in ("pending", "valid") and self.now() > authz.expires:
            authz.status = "expired"
        return authz.status

    def _order_status(self, order: Order) -> str:
        if order.status in ("processing", "valid", "invalid"):
            return order.status
        if self.now() > order.expires:
            order.status = "invalid"
            order.error = Problem("malformed", "the order expired")
            return order.status
        statuses = [self._authz_status(a) for a in order.authzs]
        if all(s == "valid" for s in statuses):
            return "ready"
        for authz, status in zip(order.authzs, statuses, strict=True):
            if status != "valid" and status != "pending":
                order.status = "invalid"
                errors = [c.error for c in authz.challenges if c.error is not None]
                order.error = (
                    errors[0]
                    if errors
                    else Problem("unauthorized", f"the authorization for {authz.value} is {status}")
                )
                return order.status
        return "pending"

    def _order_json(self, order: Order) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "status": self._order_status(order),
            "expires": rfc3339(order.expires),
            "identifiers": order.identifiers,
            "authorizations": [a.url for a in order.authzs],
            "finalize": order.url + "/finalize",
            "profile": order.profile,
        }
        if order.not_before is not None:
            doc["notBefore"] = rfc3339(order.not_before)
        if order.not_after is not None:
            doc["notAfter"] = rfc3339(order.not_after)
        if order.replaces is not None:
            doc["replaces"] = order.replaces
        if order.error is not None:
            doc["error"] = order.error.to_json()
        if order.cert is not None:
            doc["certificate"] = order.cert.url
        return doc

    def _retry_after(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]

    def _own(self, v: Verified, owner: Account) -> None:
        if v.account is not owner:
            raise Problem("unauthorized", "this resource belongs to another account")

    def _order(self, v: Verified, ident: str) -> Reply:
        order = self._orders_by_id.get(ident)
        if order is None:
            raise Problem("malformed", "no such order", status=404)
        self._own(v, order.account)
        if not v.jws.post_as_get:
            raise Problem("malformed", "fetch an order with POST-as-GET")
        doc = self._order_json(order)
        headers = [("Location", order.url)]
        if doc["status"] in ("pending", "processing"):
            headers += self._retry_after()
        return Reply.json(200, doc, headers)

    def _finalize(self, v: Verified, ident: str) -> Reply:
        order = self._orders_by_id.get(ident)
        if order is None:
            raise Problem("malformed", "no such order", status=404)
        self._own(v, order.account)
        status = self._order_status(order)
        if status != "ready":
            raise Problem("orderNotReady", f"the order is {status}, not ready")
        payload = v.payload()
        try:
            csr = x509.load_der_x509_csr(_jws.b64decode(payload.get("csr"), "csr"))
        except (Problem, ValueError):
            raise Problem("badCSR", "'csr' is not a base64url DER certificate request")
        if not csr.is_signature_valid:
            raise Problem("badCSR", "the CSR signature is invalid")
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            if not 2048 <= key.key_size <= 4096:
                raise Problem("badCSR", f"RSA keys must be 2048 to 4096 bits, not {key.key_size}")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise Problem("badCSR", f"the curve {key.curve.name} is not accepted")
        else:
            raise Problem("badCSR", "only RSA and ECDSA P-256/P-384 keys are accepted")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        account_key: Any = _jws.raw_key(order.account.jwk)
        if key.public_bytes(*spki) == account_key.public_bytes(*spki):
            raise Problem("badCSR", "the certificate key must not be the account key")
        dns_names, ips = csr_names(csr)
        wanted_dns = {i["value"] for i in order.identifiers if i["type"] == "dns"}
        wanted_ips = {i["value"] for i in order.identifiers if i["type"] == "ip"}
        if (dns_names, ips) != (wanted_dns, wanted_ips):
            raise Problem(
                "badCSR",
                f"the CSR names {sorted(dns_names | ips)} are not the order's identifiers "
                f"{sorted(wanted_dns | wanted_ips)}",
            )
        order.status = "processing"
        self._later(self.issuance_delay, self._issue, order, csr)
        headers = [("Location", order.url), *self._retry_after()]
        return Reply.json(200, self._order_json(order), headers)

    def _later(self, delay: float, f: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            self._calls.discard(call)
            try:
                f(*args)
            finally:
                self._check_idle()

        call = self._reactor.callLater(delay, run)
        self._calls.add(call)

    def idle(self) -> defer.Deferred[None]:
        """
        A ``Deferred`` firing once no validation, issuance or delayed request
        is pending: wait on it instead of polling when a test has answered a
        challenge or finalized an order itself.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        self._check_idle()
        return d

    def _check_idle(self) -> None:
        if self._calls or self._running:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def _issue(self, order: Order, csr: x509.CertificateSigningRequest) -> None:
        try:
            now = self.now()
            not_before = order.not_before or now - datetime.timedelta(minutes=1)
            lifetime = self.profiles[order.profile].lifetime
            not_after = order.not_after or not_before + lifetime - datetime.timedelta(seconds=1)
            dns_names = [i["value"] for i in order.identifiers if i["type"] == "dns"]
            ips = [ipaddress.ip_address(i["value"]) for i in order.identifiers if i["type"] == "ip"]
            key: Any = csr.public_key()
            cert = self._hierarchy.issue(key, dns_names, ips, not_before, not_after)
            ident = secrets.token_urlsafe(9)
            record = CertificateRecord(
                certificate=cert,
                chains=[
                    pem(cert) + b"".join(pem(c) for c in chain)
                    for chain in self._hierarchy.chains()
                ],
                cert_id=cert_id(cert),
                url=self._url("cert", ident),
                account_url=order.account.url,
                order_url=order.url,
            )
        except Exception:
            log.failure("TestCA failed to issue for {order}", order=order.url)
            order.status = "invalid"
            order.error = Problem("serverInternal", "issuance failed")
            return
        self._certs[ident] = record
        self._certs_by_id[record.cert_id] = record
        self.certificates.append(record)
        order.cert = record
        order.status = "valid"
        log.info(
            "TestCA issued {serial} for {names}",
            serial=f"{cert.serial_number:x}",
            names=", ".join(i["value"] for i in order.identifiers),
        )

    # authorizations and challenges

    def _challenge_json(self, challenge: Challenge) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": challenge.type,
            "url": challenge.url,
            "token": challenge.token,
            "status": challenge.status,
        }
        if challenge.validated is not None:
            doc["validated"] = rfc3339(challenge.validated)
        if challenge.error is not None:
            doc["error"] = challenge.error.to_json()
        return doc

    def _authz_json(self, authz: Authz) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "identifier": {"type": authz.id_type, "value": authz.value},
            "status": self._authz_status(authz),
            "expires": rfc3339(authz.expires),
            "challenges": [self._challenge_json(c) for c in authz.challenges],
        }
        if authz.wildcard:
            doc["wildcard"] = True
        return doc

    def _authz(self, v: Verified, ident: str) -> Reply:
        authz = self._authzs.get(ident)
        if authz is None:
            raise Problem("malformed", "no such authorization", status=404)
        self._own(v, authz.account)
        if not v.jws.post_as_get:
            payload = v.jws.payload_json()
            if payload != {"status": "deactivated"}:
                raise Problem("malformed", "an authorization can only be deactivated")
            if self._authz_status(authz) not in ("pending", "valid"):
                raise Problem("malformed", f"the authorization is {authz.status}")
            authz.status = "deactivated"
        doc = self._authz_json(authz)
        headers = []
        if doc["status"] == "pending" and any(c.status == "processing" for c in authz.challenges):
            headers = self._retry_after()
        return Reply.json(200, doc, headers)

    def _challenge(self, v: Verified, ident: str) -> Reply:
        challenge = self._challenges.get(ident)
        if challenge is None:
            raise Problem("malformed", "no such challenge", status=404)
        authz = challenge.authz
        self._own(v, authz.account)
        if not v.jws.post_as_get:
            v.jws.payload_json()
            if challenge.status == "pending":
                if self._authz_status(authz) != "pending":
                    raise Problem("malformed", f"the authorization is {authz.status}")
                challenge.status = "processing"
                self._later(self.validation_delay, self._validate, challenge)
        headers = [("Link", f'<{authz.url}>;rel="up"')]
        if challenge.status == "processing":
            headers += self._retry_after()
        return Reply.json(200, self._challenge_json(challenge), headers)

    def _validate(self, challenge: Challenge) -> None:
        authz = challenge.authz
        thumbprint = _jws.b64encode(authz.account.jwk.thumbprint())
        key_authorization = f"{challenge.token}.{thumbprint}"
        if challenge.type == "http-01":
            d = self._validator.http01(
                authz.value, challenge.token, key_authorization, self.http01_host, self.http01_port
            )
        elif challenge.type == "tls-alpn-01":
            d = self._validator.tlsalpn01(
                authz.id_type,
                authz.value,
                key_authorization,
                self.tlsalpn01_host,
                self.tlsalpn01_port,
            )
        elif self.dns_server is None:
            d = defer.fail(Problem("dns", "the TestCA has no DNS server configured"))
        else:
            d = self._validator.dns01(authz.value, key_authorization, self.dns_server)
        self._running.add(d)

        def done(result: object) -> None:
            self._running.discard(d)
            try:
                self._record_validation(challenge, result)
            finally:
                self._check_idle()

        d.addBoth(done)

    def _record_validation(self, challenge: Challenge, result: object) -> None:
        authz = challenge.authz
        if isinstance(result, Failure):
            problem = result.value if isinstance(result.value, Problem) else None
            if problem is None:
                log.failure("TestCA validation crashed", result)
                problem = Problem("serverInternal", "validation failed unexpectedly")
            problem.identifier = {"type": authz.id_type, "value": authz.value}
            challenge.status = "invalid"
            challenge.error = problem
            if authz.status == "pending":
                authz.status = "invalid"
            log.info(
                "TestCA {type} for {name} failed: {problem}",
                type=challenge.type,
                name=authz.value,
                problem=str(problem),
            )
        else:
            challenge.status = "valid"
            challenge.validated = self.now()
            if authz.status == "pending":
                authz.status = "valid"
                authz.expires = self.now() + datetime.timedelta(days=30)
            log.info("TestCA {type} for {name} valid", type=challenge.type, name=authz.value)

    # certificates

    def _cert(self, v: Verified, ident: str, alternate: str | None = None) -> Reply:
        record = self._certs.get(ident)
        if record is None:
            raise Problem("malformed", "no such certificate", status=404)
        assert v.account is not None
        if record.account_url != v.account.url:
            raise Problem("unauthorized", "this certificate belongs to another account")
        if not v.jws.post_as_get:
            raise Problem("malformed", "download a certificate with POST-as-GET")
        index = int(alternate) if alternate is not None else 0
        if index >= len(record.chains):
            raise Problem("malformed", "no such chain", status=404)
        urls = [record.url] + [f"{record.url}/{n}" for n in range(1, len(record.chains))]
        headers = [("Link", f'<{url}>;rel="alternate"') for n, url in enumerate(urls) if n != index]
        return Reply(200, record.chains[index], PEM_CHAIN, headers)

    def _revoke_cert(self, v: Verified) -> Reply:
        payload = v.payload()
        try:
            cert = x509.load_der_x509_certificate(
                _jws.b64decode(payload.get("certificate"), "certificate")
            )
        except (Problem, ValueError):
            raise Problem("malformed", "'certificate' is not a base64url DER certificate")
        try:
            record = self.record_for(cert)
        except (KeyError, ConfigurationError):
            raise Problem("malformed", "this CA did not issue that certificate", status=404)
        if record.certificate != cert:
            raise Problem("malformed", "this CA did not issue that certificate", status=404)
        reason = payload.get("reason", 0)
        if not isinstance(reason, int) or isinstance(reason, bool):
            raise Problem("badRevocationReason", "'reason' must be an integer")
        if reason not in REVOCATION_REASONS:
            raise Problem(
                "badRevocationReason",
                f"reason {reason} is not accepted; use one of {sorted(REVOCATION_REASONS)}",
            )
        if v.account is None:
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            jwk_key: Any = _jws.raw_key(v.jwk)
            if jwk_key.public_bytes(*spki) != cert.public_key().public_bytes(*spki):
                raise Problem("unauthorized", "the JWS key is not the certificate's key")
        elif record.account_url != v.account.url and not self._controls_all(v.account, cert):
            raise Problem("unauthorized", "the account may not revoke this certificate")
        if record.revoked:
            raise Problem("alreadyRevoked", "the certificate is already revoked")
        record.revocation_reason = reason
        record.revoked_at = self.now()
        log.info("TestCA revoked {serial}", serial=f"{cert.serial_number:x}")
        return Reply(200)

    def _controls_all(self, account: Account, cert: x509.Certificate) -> bool:
        order = self._orders_by_id[self.record_for(cert).order_url.rsplit("/", 1)[1]]
        valid = {
            (a.id_type, a.value)
            for o in account.orders
            for a in o.authzs
            if self._authz_status(a) == "valid"
        }
        return all((i["type"], i["value"].removeprefix("*.")) in valid for i in order.identifiers)

    def _renewal_info(self, request: Request, ident: str) -> Reply:
        try:
            record = self.record_for(ident)
        except KeyError:
            raise Problem("malformed", "no certificate with this ARI identifier", status=404)
        start, end = self.renewal_window(record.cert_id)
        doc: dict[str, Any] = {"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}
        if record.explanation_url:
            doc["explanationURL"] = record.explanation_url
        return Reply.json(200, doc, [("Retry-After", str(self.ari_retry_after))])

    # management (for the subprocess runner; loopback, unauthenticated)

    def _management(self, request: Request, action: str) -> Reply:
        if request.method == b"GET":
            if action == "root":
                return Reply(200, self.root_pem, "application/x-pem-file")
            if action == "roots":
                return Reply(200, b"".join(self.root_pems), "application/x-pem-file")
            if action == "intermediate":
                return Reply(200, self.intermediate_pem, "application/x-pem-file")
            if action == "now":
                return Reply.json(200, {"now": rfc3339(self.now())})
            if action == "requests":
                return Reply.json(200, [attrs.asdict(r) for r in self.requests])
            raise Problem("malformed", f"no management resource {action!r}", status=404)
        if request.method != b"POST":
            raise Problem("malformed", "use GET or POST", status=405)
        assert request.content is not None
        body = _jws.json_object(request.content.read(MAX_BODY), "management request")
        try:
            return self._manage(action, body)
        except (KeyError, ValueError, TypeError) as e:
            raise Problem("malformed", f"bad management request: {e!r}")

    def _manage(self, action: str, body: dict[str, Any]) -> Reply:
        if action == "advance":
            self.advance(float(body["seconds"]))
        elif action == "fail-next":
            self.fail_next(
                str(body["type"]),
                str(body.get("detail", "injected by TestCA.fail_next")),
                endpoint=body.get("endpoint"),
                status=body.get("status"),
                retry_after=body.get("retry_after"),
                count=int(body.get("count", 1)),
            )
        elif action == "delay-next":
            self.delay_next(
                float(body["seconds"]),
                endpoint=body.get("endpoint"),
                count=int(body.get("count", 1)),
            )
        elif action == "renewal-window":
            self.set_renewal_window(
                str(body["cert_id"]),
                parse_time(body["start"], "start"),
                parse_time(body["end"], "end"),
                body.get("explanation_url"),
            )
        elif action == "certificate":
            record = self.record_for(str(body["cert_id"]))
            start, end = self.renewal_window(record.cert_id)
            return Reply.json(
                200,
                {
                    "cert_id": record.cert_id,
                    "revoked": record.revoked,
                    "revocation_reason": record.revocation_reason,
                    "replaced_by": record.replaced_by,
                    "renewal_window": [rfc3339(start), rfc3339(end)],
                },
            )
        elif action == "settings":
            for name in ("http01_port", "tlsalpn01_port", "retry_after", "bad_nonce_rate"):
                if name in body:
                    setattr(self, name, body[name])
            if "forbidden_names" in body:
                self.forbidden_names = set(body["forbidden_names"])
        else:
            raise Problem("malformed", f"no management action {action!r}", status=404)
        return Reply.json(200, {"ok": True})


__all__ = ["TestCA"]
