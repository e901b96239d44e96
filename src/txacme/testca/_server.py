"""
The test CA itself: :class:`TestCA`, composed from the handler mixins (accounts,
orders, authorizations and challenges, certificates, management) over the shared
state of :class:`~txacme.testca._base.CABase`. This module holds what ties them
together: construction and configuration checks, listening and stopping, the
public control API tests use (clock, faults, renewal windows, pending work), and
the request path: routing, fault injection, JWS authentication, nonces, the
directory and the response headers every reply carries.
"""

from __future__ import annotations

import contextlib
import datetime
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

from cryptography import x509
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import Request

from txacme.errors import ConfigurationError
from txacme.testca import _jws
from txacme.testca._accounts import AccountsMixin
from txacme.testca._base import MAX_BODY, PROBLEM_JSON, log
from txacme.testca._certificates import CertificatesMixin
from txacme.testca._http import QuietSite, RootResource, ServerTLS, TrackingFactory
from txacme.testca._management import ManagementMixin
from txacme.testca._model import (
    DEFAULT_PROFILES,
    UTC,
    Account,
    CertificateRecord,
    Fault,
    Profile,
    Reply,
    RequestRecord,
    Verified,
    cert_id_of,
)
from txacme.testca._orders import OrdersMixin
from txacme.testca._pki import HTTPSIdentity, IssuingHierarchy, pem
from txacme.testca._problems import Problem
from txacme.testca._validation import Validator

CHALLENGE_TYPES = ("http-01", "tls-alpn-01", "dns-01", "dns-account-01", "dns-persist-01")
#: The types validated through DNS (not offered for IP addresses; the only ones
#: for wildcards).
DNS_CHALLENGE_TYPES = ("dns-01", "dns-account-01", "dns-persist-01")
#: The types offered only when asked for in ``challenge_types``.
_OPT_IN_TYPES = ("dns-account-01", "dns-persist-01")


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


class TestCA(AccountsMixin, OrdersMixin, CertificatesMixin, ManagementMixin):
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
    ``dns-account-01`` (draft-ietf-acme-dns-account-label) asks it for
    ``_<account label>._acme-challenge.<name>``, and ``dns-persist-01``
    (draft-ietf-acme-dns-persist) for ``_validation-persist.<name>``, a record
    naming one of :attr:`issuer_domain_names` and the account (then, for a
    name without a matching record, the record of each parent domain with
    ``policy=wildcard``). These two are offered only when ``challenge_types``
    names them.
    ``http-01`` follows up to 10 redirects (RFC 8555 section 8.3) to ports 80
    and 443, for which ``http01_port`` and ``tlsalpn01_port`` stand, or to
    those two ports themselves.

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
    :param issuer_domain_names: this CA's issuer domain names for
        ``dns-persist-01`` (default: ``["testca.invalid"]``, its
        ``caaIdentities``).
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
        issuer_domain_names: Sequence[str] = ("testca.invalid",),
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
        self._clock = clock if clock is not None else reactor
        self._offset = 0.0
        self._port_number = port
        self.http01_host = http01_host
        self.http01_port = http01_port
        self.tlsalpn01_host = tlsalpn01_host
        self.tlsalpn01_port = tlsalpn01_port
        self.dns_server = dns_server
        if challenge_types is None:
            challenge_types = [
                t
                for t in CHALLENGE_TYPES
                if t not in _OPT_IN_TYPES and (t != "dns-01" or dns_server)
            ]
        unknown = set(challenge_types) - set(CHALLENGE_TYPES)
        if unknown:
            raise ConfigurationError(f"challenge_types: unknown types {sorted(unknown)}")
        #: The challenge types offered.
        self.challenge_types: list[str] = list(challenge_types)
        issuers = [str(n) for n in issuer_domain_names]
        if not 1 <= len(issuers) <= 10 or any(n != n.lower().rstrip(".") or not n for n in issuers):
            raise ConfigurationError(
                f"issuer_domain_names {issuers!r}: 1 to 10 lower-case names without a trailing dot"
            )
        #: The issuer domain names sent in ``dns-persist-01`` challenges.
        self.issuer_domain_names: list[str] = issuers
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
        self._nonces = OrderedDict()
        self._accounts = {}
        self._accounts_by_key = {}
        self._orders_by_id = {}
        self._authzs = {}
        self._challenges = {}
        self._certs = {}
        self._certs_by_id = {}
        self._faults = []
        self._calls = set()
        self._running = set()
        self._idle_waiters = []
        self._listening = None
        site: Any = QuietSite
        tracking: Any = TrackingFactory
        self._factory = tracking(site(RootResource(self._render)))
        self._tempdir = None
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
            ServerTLS(self._https),
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

    # -- pending work -------------------------------------------------------

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


__all__ = ["TestCA"]
