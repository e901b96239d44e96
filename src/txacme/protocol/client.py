"""
An asynchronous ACME (RFC 8555) client built on treq.

Every method that talks to the CA returns a ``Deferred``. The client speaks the
protocol and nothing else: it knows nothing of stores, responders or schedules
(see :mod:`txacme.issuing.order` for one order end to end).

* Message types come from the ``acme`` package (:mod:`acme.messages`,
  :mod:`acme.challenges`, :mod:`acme.jws`); JWS signing is josepy's. Requests
  are signed with ES256 (P-256 keys), ES384 (P-384), ES512 (P-521) or RS256
  (RSA), with ``jwk`` for account creation, look-up and revocation by
  certificate key, and ``kid`` (the account URL) otherwise. Every fetch of a
  resource is a POST-as-GET.
* Nonces: each response's ``Replay-Nonce`` goes into a small pool, ``newNonce``
  is asked only when the pool is empty, and a ``badNonce`` problem is retried
  with a fresh nonce up to ``max_nonce_attempts`` times before it is raised.
* Problems: every error response becomes a :class:`txacme.errors.ACMEProblem`
  subclass (``Retry-After`` in seconds on ``retry_after``); a non-JSON error
  body (say a proxy's HTML 502 page) becomes a ``ServerInternal`` carrying the
  HTTP status; an unparseable success body raises
  :class:`txacme.errors.ProtocolError`. Connection errors (refused, TLS
  verification failed...) propagate unchanged, except that a request that
  never reached the server is re-sent once with a fresh nonce.
* Time: every request has a timeout, and polling an authorization or order has
  an overall deadline; both raise :class:`txacme.errors.ACMETimeout`. Polling
  starts a few milliseconds after the previous answer and doubles up to a
  ceiling, never sooner than a ``Retry-After`` asks. All waiting goes through
  the reactor given, so tests drive it with :class:`twisted.internet.task.Clock`.
* Transport: an ``HTTPConnectionPool`` keeps connections to the CA open between
  requests; :meth:`Client.close` closes them. HTTPS is verified against the
  system trust store, or only against the PEM file ``ca_file`` when given;
  verification is never switched off.

Objects returned: accounts are :class:`acme.messages.RegistrationResource`,
orders :class:`acme.messages.OrderResource` (``uri`` and ``body``),
authorizations :class:`acme.messages.AuthorizationResource`, challenges
:class:`acme.messages.ChallengeBody`; certificates are
:class:`~txacme.protocol.resources.CertificateChain` and ARI answers
:class:`~txacme.protocol.resources.RenewalInfo`.

Every HTTP exchange with the CA (retries included) is reported to the
``on_exchange`` callback, if given, as an :class:`~txacme.protocol.transport.Exchange`;
that is what :meth:`txacme.reporting.metrics.Metrics.observe_exchange` counts.

The wire (nonces, signing, retries) is :mod:`txacme.protocol.transport`'s; the values are
:mod:`txacme.protocol.resources`'. May import the core modules and the other modules of
:mod:`txacme.protocol`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence

from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwa import JWASignature
from josepy.jwk import JWK
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web import client as web_client

from txacme.errors import (
    AccountDoesNotExist,
    ConfigurationError,
    IssuanceFailed,
    ProtocolError,
    UnsupportedKeyType,
)
from txacme.formats import b64url
from txacme.keys import PrivateKey, jwk_for, jws_algorithm
from txacme.logs import Logger
from txacme.protocol.ari import ari_cert_id
from txacme.protocol.resources import (
    EAB,
    CertificateChain,
    RenewalInfo,
    authorization_failure,
    contact_uris,
    csr_der,
    directory_entry,
    directory_meta,
    order_failure,
    order_identifiers,
    parse_directory,
    pick_chain,
)
from txacme.protocol.transport import (
    DEFAULT_MAX_NONCE_ATTEMPTS,
    DEFAULT_PERSISTENT_CONNECTIONS,
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    PEM_CHAIN,
    Exchange,
    Polling,
    Reply,
    Signer,
    Transport,
    TreqLike,
    make_http_client,
)

__all__ = ["EAB", "CertificateChain", "Client", "Exchange", "RenewalInfo"]

log = Logger()

DEFAULT_POLL_TIMEOUT = 300.0
DEFAULT_POLL_INITIAL = 0.005
DEFAULT_POLL_MAX = 2.0

_AUTHZ_TERMINAL = frozenset(
    {
        messages.STATUS_VALID,
        messages.STATUS_INVALID,
        messages.STATUS_DEACTIVATED,
        messages.STATUS_REVOKED,
        # acme knows no "expired" status; register it so such authorizations parse.
        messages.Status.POSSIBLE_NAMES.get("expired") or messages.Status("expired"),
    }
)
_ORDER_WAITING = (messages.STATUS_PENDING, messages.STATUS_PROCESSING)


class Client:
    """
    An ACME client for one directory and one account key.

    Build it with :meth:`from_url`. ``account`` holds the account once
    :meth:`start` (or :meth:`new_account` / :meth:`lookup_account`) succeeded.

    :param reactor: provides ``IReactorTime``; every wait goes through it.
    :param directory: the CA's directory.
    :param key: the account key (EC P-256/P-384/P-521 or RSA, private).
    :param http: a treq-like object (:class:`~txacme.protocol.transport.TreqLike`).
    :param pool: the connection pool behind ``http``, closed by :meth:`close`.
    :param alg: the JWS algorithm; chosen from the key when ``None``.
    :param timeout: seconds allowed for each HTTP request.
    :param poll_timeout: seconds allowed for an authorization or order to
        reach a final state.
    :param poll_initial: the first polling delay (seconds).
    :param poll_max: the ceiling of the doubling polling delay (seconds).
    :param max_nonce_attempts: how many times one request is sent when the CA
        keeps answering ``badNonce``.
    :param on_exchange: called with an :class:`~txacme.protocol.transport.Exchange` after
        every HTTP exchange with the CA (e.g.
        :meth:`txacme.reporting.metrics.Metrics.observe_exchange`); its exceptions are
        logged and ignored.
    :param eab: external account binding credentials, used when an account is
        created and no others are given (:attr:`eab`).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        directory: messages.Directory,
        key: JWK,
        *,
        http: TreqLike,
        pool: web_client.HTTPConnectionPool | None = None,
        alg: JWASignature | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        poll_initial: float = DEFAULT_POLL_INITIAL,
        poll_max: float = DEFAULT_POLL_MAX,
        max_nonce_attempts: int = DEFAULT_MAX_NONCE_ATTEMPTS,
        user_agent: str = DEFAULT_USER_AGENT,
        directory_url: str | None = None,
        on_exchange: Callable[[Exchange], object] | None = None,
        eab: EAB | None = None,
    ) -> None:
        _check_settings(key, timeout, poll_timeout, poll_initial, poll_max, max_nonce_attempts)
        self._reactor = reactor
        self._directory = directory
        self._key = key
        self._alg = alg if alg is not None else jws_algorithm(key)
        self._pool = pool
        self._polling = Polling(float(poll_timeout), float(poll_initial), float(poll_max))
        self._transport = Transport(
            reactor,
            http,
            lambda: self._url("newNonce"),
            timeout=float(timeout),
            user_agent=user_agent,
            max_nonce_attempts=max_nonce_attempts,
            on_exchange=on_exchange,
        )
        self.directory_url = directory_url
        self._transport.directory_url = directory_url
        self.eab: EAB | None = _checked_eab(eab)
        """The external account binding used when an account is created and none is given."""
        self.account: messages.RegistrationResource | None = None

    def __repr__(self) -> str:
        account = self.account.uri if self.account is not None else None
        return f"<Client directory={self.directory_url!r} account={account!r}>"

    # -- construction and teardown -------------------------------------------------

    @classmethod
    def from_url(
        cls,
        reactor: IReactorTime,
        url: str,
        key: JWK,
        *,
        alg: JWASignature | None = None,
        ca_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = DEFAULT_USER_AGENT,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        poll_initial: float = DEFAULT_POLL_INITIAL,
        poll_max: float = DEFAULT_POLL_MAX,
        max_nonce_attempts: int = DEFAULT_MAX_NONCE_ATTEMPTS,
        persistent_connections: int = DEFAULT_PERSISTENT_CONNECTIONS,
        http: TreqLike | None = None,
        on_exchange: Callable[[Exchange], object] | None = None,
        eab: EAB | None = None,
    ) -> Deferred[Client]:
        """
        Fetch the directory at ``url`` and return a client for it.

        :param ca_file: a PEM file: trust only its certificates for the CA's
            HTTPS (host names are still verified). ``None``: system trust.
        :param http: a treq-like object to use instead of a real HTTPS client
            (tests); no pool is created then.
        :param on_exchange: as for :class:`Client`; it also sees the directory request.
        :raises txacme.errors.ConfigurationError: for a bad ``ca_file``.

        The other keyword arguments are :class:`Client`'s.
        """
        pool: web_client.HTTPConnectionPool | None = None
        try:
            if not isinstance(key, JWK):
                raise ConfigurationError(f"the account key must be a josepy JWK, not {type(key)}")
            if http is None:
                http, pool = make_http_client(
                    reactor,
                    ca_file=ca_file,
                    timeout=timeout,
                    persistent_connections=persistent_connections,
                )
        except Exception:
            return defer.fail()
        client_http: TreqLike = http

        async def build() -> Client:
            client = cls(
                reactor,
                messages.Directory({}),
                key,
                http=client_http,
                pool=pool,
                alg=alg,
                timeout=timeout,
                poll_timeout=poll_timeout,
                poll_initial=poll_initial,
                poll_max=poll_max,
                max_nonce_attempts=max_nonce_attempts,
                user_agent=user_agent,
                directory_url=url,
                on_exchange=on_exchange,
                eab=eab,
            )
            try:
                await client._load_directory(url)
            except BaseException:
                await client.close()
                raise
            return client

        return Deferred.fromCoroutine(build())

    async def _load_directory(self, url: str) -> None:
        reply = await self._transport.send("GET", url, endpoint="directory")
        reply.raise_for_problem()
        self._directory = parse_directory(reply.json(), url)

    def close(self) -> Deferred[None]:
        """Close the cached connections to the CA; fires when they are closed."""
        if self._pool is None:
            return defer.succeed(None)
        pool, self._pool = self._pool, None
        d: Deferred[object] = pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return d.addCallback(lambda _: None)

    # -- directory and key -------------------------------------------------------------

    @property
    def directory(self) -> messages.Directory:
        """The CA's directory (:class:`acme.messages.Directory`)."""
        return self._directory

    @property
    def _meta(self) -> messages.Directory.Meta | None:
        return directory_meta(self._directory)

    @property
    def terms_of_service(self) -> str | None:
        """The URL of the CA's terms of service, if it has one."""
        meta = self._meta
        return meta.terms_of_service if meta is not None else None

    @property
    def profiles(self) -> dict[str, str]:
        """The certificate profiles the CA advertises (name to description); ``{}`` if none."""
        meta = self._meta
        if meta is None or not isinstance(meta.profiles, Mapping):
            return {}
        return {str(k): str(v) for k, v in meta.profiles.items()}

    @property
    def external_account_required(self) -> bool:
        """Whether the CA requires external account binding for new accounts."""
        meta = self._meta
        return bool(meta is not None and meta.external_account_required)

    @property
    def supports_ari(self) -> bool:
        """Whether the CA offers ACME Renewal Information (``renewalInfo``)."""
        return isinstance(directory_entry(self._directory, "renewalInfo"), str)

    @property
    def key(self) -> JWK:
        """The account key in use (changes after :meth:`change_key`)."""
        return self._key

    @property
    def alg(self) -> JWASignature:
        """The JWS algorithm used with the account key."""
        return self._alg

    def _url(self, name: str) -> str:
        url = directory_entry(self._directory, name)
        if not isinstance(url, str):
            raise ConfigurationError(f"the CA's directory has no {name!r} endpoint")
        return url

    def _account_url(self) -> str:
        if self.account is None:
            raise ConfigurationError("no ACME account yet: call start() or new_account() first")
        return self.account.uri

    # -- requests ------------------------------------------------------------------------

    def _post(
        self,
        url: str,
        payload: Mapping[str, object] | bytes | None,
        *,
        endpoint: str,
        key: JWK | None = None,
        use_jwk: bool = False,
        accept: str | None = None,
    ) -> Awaitable[Reply]:
        """
        A signed POST (``payload=None``: POST-as-GET) to the ACME resource
        ``endpoint``: by the account key with ``kid``, or by ``key`` or with
        ``jwk`` when given.
        """

        def signer() -> Signer:
            if key is None:
                return Signer(self._key, self._alg, None if use_jwk else self._account_url())
            return Signer(key, jws_algorithm(key), None if use_jwk else self._account_url())

        return self._transport.post(url, payload, signer, endpoint=endpoint, accept=accept)

    # -- accounts ------------------------------------------------------------------------

    def new_account(
        self, email: str | None = None, *, eab: EAB | None = None, terms_agreed: bool = True
    ) -> Deferred[messages.RegistrationResource]:
        """
        Create an account for the key (``newAccount``); sets ``account``.

        :param email: a contact address (``mailto:``), or ``None``.
        :param eab: external account binding credentials (required by some CAs);
            :attr:`eab` when ``None``.
        :param terms_agreed: whether the operator agrees to the CA's terms of service.
        :raises txacme.errors.ConfigurationError: when the CA requires external
            account binding and there is no ``eab`` (before any request).
        """
        return Deferred.fromCoroutine(self._new_account(email, eab, terms_agreed))

    async def _new_account(
        self, email: str | None, eab: EAB | None, terms_agreed: bool
    ) -> messages.RegistrationResource:
        eab = eab if eab is not None else self.eab
        url = self._new_account_url(eab)
        payload: dict[str, object] = {"termsOfServiceAgreed": bool(terms_agreed)}
        contact = contact_uris(email)
        if contact:
            payload["contact"] = contact
        if eab is not None:
            payload["externalAccountBinding"] = eab.binding(self._key, url)
        reply = await self._post(url, payload, endpoint="newAccount", use_jwk=True)
        account = self._set_account(reply, reply.location())
        log.info("registered the ACME account {account}", account=account.uri)
        return account

    def _new_account_url(self, eab: EAB | None) -> str:
        """The ``newAccount`` URL, once ``eab`` is known to fit the CA."""
        if eab is None and self.external_account_required:
            raise ConfigurationError(
                f"the CA at {self.directory_url or 'this directory'} requires external account "
                "binding: give EAB credentials (key identifier and MAC key)"
            )
        _checked_eab(eab)
        return self._url("newAccount")

    def _set_account(self, reply: Reply, uri: str) -> messages.RegistrationResource:
        """Make the account in ``reply`` (at ``uri``) ``account``."""
        self.account = messages.RegistrationResource(
            uri=uri,
            body=reply.decode(messages.Registration),
            terms_of_service=self.terms_of_service,
        )
        return self.account

    def lookup_account(self) -> Deferred[messages.RegistrationResource]:
        """
        Find the existing account of the key (``onlyReturnExisting``); sets ``account``.

        :raises txacme.errors.AccountDoesNotExist: when the CA knows no account for it.
        """
        return Deferred.fromCoroutine(self._lookup_account())

    async def _lookup_account(self) -> messages.RegistrationResource:
        url = self._url("newAccount")
        reply = await self._post(
            url, {"onlyReturnExisting": True}, endpoint="newAccount", use_jwk=True
        )
        account = self._set_account(reply, reply.location())
        log.debug("using the ACME account {account}", account=account.uri)
        return account

    def start(
        self, email: str | None = None, eab: EAB | None = None
    ) -> Deferred[messages.RegistrationResource]:
        """
        Make sure the key has an account: look it up, else create it.

        An existing account whose contacts lack ``email`` is updated to it.
        External account binding (``eab``, else :attr:`eab`) is needed only when
        an account is created.
        """
        return Deferred.fromCoroutine(self._start(email, eab))

    async def _start(self, email: str | None, eab: EAB | None) -> messages.RegistrationResource:
        try:
            account = await self._lookup_account()
        except AccountDoesNotExist:
            # Expected on a first start: the CA knows no account for this key yet.
            log.debug("the CA knows no account for this key yet; registering one")
            return await self._new_account(email, eab, True)
        wanted = contact_uris(email)
        if wanted and not set(wanted) <= set(account.body.contact):
            account = await self._update_account(email)
        return account

    def update_account(self, email: str | None = None) -> Deferred[messages.RegistrationResource]:
        """Replace the account's contacts with ``email`` (``None`` removes them)."""
        return Deferred.fromCoroutine(self._update_account(email))

    async def _update_account(self, email: str | None) -> messages.RegistrationResource:
        url = self._account_url()
        reply = await self._post(url, {"contact": contact_uris(email)}, endpoint="account")
        return self._set_account(reply, url)

    def deactivate_account(self) -> Deferred[messages.RegistrationResource]:
        """Deactivate the account for good (RFC 8555 section 7.3.6)."""
        return Deferred.fromCoroutine(self._deactivate_account())

    async def _deactivate_account(self) -> messages.RegistrationResource:
        url = self._account_url()
        reply = await self._post(url, {"status": "deactivated"}, endpoint="account")
        account = self._set_account(reply, url)
        log.info("ACME account {account} deactivated", account=url)
        return account

    def change_key(self, new_key: JWK) -> Deferred[None]:
        """
        Roll the account over to ``new_key`` (RFC 8555 section 7.3.5); afterwards
        every request is signed with it.
        """
        return Deferred.fromCoroutine(self._change_key(new_key))

    async def _change_key(self, new_key: JWK) -> None:
        if not isinstance(new_key, JWK):
            raise ConfigurationError(
                f"the new account key must be a josepy JWK, not {type(new_key)}"
            )
        new_alg = jws_algorithm(new_key)
        url = self._url("keyChange")
        account_url = self._account_url()
        inner_payload = json.dumps(
            {"account": account_url, "oldKey": self._key.public_key().to_partial_json()}
        ).encode("utf-8")
        inner = Signer(new_key, new_alg).sign(url, inner_payload, None)
        await self._post(url, inner, endpoint="keyChange")
        self._key = new_key
        self._alg = new_alg
        log.info("ACME account {account} key changed", account=account_url)

    # -- orders --------------------------------------------------------------------------

    def new_order(
        self,
        identifiers: Sequence[str],
        *,
        profile: str | None = None,
        replaces: str | None = None,
    ) -> Deferred[messages.OrderResource]:
        """
        Ask for a certificate for ``identifiers`` (DNS names, ``*.`` wildcards, IP
        addresses).

        :param profile: a profile the directory advertises (see :attr:`profiles`).
        :param replaces: the ARI identifier (:func:`~txacme.protocol.ari.ari_cert_id`) of
            the certificate this one replaces.
        :raises txacme.errors.ConfigurationError: for no identifiers or a profile
            the CA does not advertise (before anything is sent).
        """
        return Deferred.fromCoroutine(self._new_order(identifiers, profile, replaces))

    async def _new_order(
        self, identifiers: Sequence[str], profile: str | None, replaces: str | None
    ) -> messages.OrderResource:
        idents = order_identifiers(identifiers)
        payload = self._order_payload(idents, profile, replaces)
        reply = await self._post(self._url("newOrder"), payload, endpoint="newOrder")
        body = reply.decode(messages.Order)
        order = messages.OrderResource(uri=reply.location(), body=body)
        log.debug(
            "ACME order {order} for {names} is {status}",
            order=order.uri,
            names=[i["value"] for i in idents],
            status=body.status.name,
        )
        return order

    def _order_payload(
        self, idents: list[dict[str, str]], profile: str | None, replaces: str | None
    ) -> dict[str, object]:
        """The ``newOrder`` payload, checked before anything is sent."""
        payload: dict[str, object] = {"identifiers": idents}
        if profile is not None:
            advertised = self.profiles
            if profile not in advertised:
                listing = ", ".join(sorted(advertised)) if advertised else "none"
                raise ConfigurationError(
                    f"unknown ACME profile {profile!r}; the CA advertises: {listing}"
                )
            payload["profile"] = profile
        if replaces is not None:
            if not isinstance(replaces, str) or "." not in replaces:
                raise ConfigurationError(
                    f"replaces must be an ARI certificate id, not {replaces!r}"
                )
            payload["replaces"] = replaces
        return payload

    def fetch_authorization(self, url: str) -> Deferred[messages.AuthorizationResource]:
        """Fetch an authorization (POST-as-GET)."""
        return Deferred.fromCoroutine(self._fetch_authorization(url))

    async def _fetch_authorization_reply(
        self, url: str
    ) -> tuple[messages.AuthorizationResource, Reply]:
        reply = await self._post(url, None, endpoint="authorization")
        body = reply.decode(messages.Authorization)
        return messages.AuthorizationResource(uri=url, body=body), reply

    async def _fetch_authorization(self, url: str) -> messages.AuthorizationResource:
        return (await self._fetch_authorization_reply(url))[0]

    def answer_challenge(
        self,
        challenge_body: messages.ChallengeBody,
        response: challenges.ChallengeResponse | None = None,
    ) -> Deferred[messages.ChallengeBody]:
        """
        Tell the CA the challenge is ready to be validated; fires with the
        challenge as the CA then reports it.
        """
        return Deferred.fromCoroutine(self._answer_challenge(challenge_body, response))

    async def _answer_challenge(
        self,
        challenge_body: messages.ChallengeBody,
        response: challenges.ChallengeResponse | None,
    ) -> messages.ChallengeBody:
        url = challenge_body.uri
        if not url:
            raise ProtocolError("the challenge has no URL to answer")
        payload: dict[str, object] = {}
        if response is not None and not isinstance(
            response, challenges.KeyAuthorizationChallengeResponse
        ):
            payload = response.to_partial_json()
        reply = await self._post(url, payload, endpoint="challenge")
        return reply.decode(messages.ChallengeBody)

    def poll_authorization(
        self, authz: messages.AuthorizationResource | str
    ) -> Deferred[messages.AuthorizationResource]:
        """
        Poll an authorization until it is final.

        Fires with the authorization once ``valid``.

        :raises txacme.errors.IssuanceFailed: when it ends ``invalid``,
            ``deactivated``, ``expired`` or ``revoked``; ``problem`` is the
            failing challenge's error.
        :raises txacme.errors.ACMETimeout: past ``poll_timeout``.
        """
        url = authz if isinstance(authz, str) else authz.uri
        return Deferred.fromCoroutine(self._poll_authorization(url))

    async def _poll_authorization(self, url: str) -> messages.AuthorizationResource:
        authz = await self._polling.until(
            self._reactor,
            url,
            lambda: self._fetch_authorization_reply(url),
            lambda a: a.body.status in _AUTHZ_TERMINAL,
            lambda a: a.body.status.name,
        )
        if authz.body.status != messages.STATUS_VALID:
            raise authorization_failure(authz, url)
        return authz

    def poll_order(self, order: messages.OrderResource) -> Deferred[messages.OrderResource]:
        """
        Poll an order until it is no longer ``pending`` or ``processing``.

        :raises txacme.errors.IssuanceFailed: when it is ``invalid``.
        """
        return Deferred.fromCoroutine(self._poll_order(order, _ORDER_WAITING))

    async def _fetch_order_reply(
        self, order: messages.OrderResource
    ) -> tuple[messages.OrderResource, Reply]:
        reply = await self._post(order.uri, None, endpoint="order")
        return order.update(body=reply.decode(messages.Order)), reply

    async def _poll_order(
        self,
        order: messages.OrderResource,
        waiting: Sequence[messages.Status],
        first: tuple[messages.OrderResource, Reply] | None = None,
    ) -> messages.OrderResource:
        result = await self._polling.until(
            self._reactor,
            order.uri,
            lambda: self._fetch_order_reply(order),
            lambda o: o.body.status not in waiting,
            lambda o: o.body.status.name,
            first,
        )
        if result.body.status == messages.STATUS_INVALID:
            raise order_failure(result)
        return result

    def finalize(
        self, order: messages.OrderResource, csr: x509.CertificateSigningRequest | bytes
    ) -> Deferred[messages.OrderResource]:
        """
        Send the CSR (a cryptography CSR, or PEM/DER bytes), then poll the order
        through ``processing`` until it is ``valid``.

        :raises txacme.errors.IssuanceFailed: when the order ends ``invalid``.
        """
        return Deferred.fromCoroutine(self._finalize(order, csr))

    async def _finalize(
        self, order: messages.OrderResource, csr: x509.CertificateSigningRequest | bytes
    ) -> messages.OrderResource:
        der = csr_der(csr)
        url = order.body.finalize
        if not url:
            raise ProtocolError(f"order {order.uri} has no finalize URL")
        reply = await self._post(url, {"csr": b64url(der)}, endpoint="finalize")
        first = (order.update(body=reply.decode(messages.Order)), reply)
        result = await self._poll_order(order, (*_ORDER_WAITING, messages.STATUS_READY), first)
        if result.body.status != messages.STATUS_VALID:
            raise IssuanceFailed(f"order {order.uri} is {result.body.status.name} after finalize")
        return result

    # -- certificates --------------------------------------------------------------------

    def fetch_certificate(
        self, order: messages.OrderResource, *, preferred_chain: str | None = None
    ) -> Deferred[CertificateChain]:
        """
        Download the certificate chain of a valid order.

        :param preferred_chain: an issuer common name. Among the default and
            alternate chains, the first whose topmost certificate is issued by
            that name wins; failing that, the first with any certificate issued
            by it; failing that, the default chain.
        """
        return Deferred.fromCoroutine(self._fetch_certificate(order, preferred_chain))

    def fetch_chain(self, url: str) -> Deferred[CertificateChain]:
        """Download one certificate chain by URL (e.g. an alternate)."""
        return Deferred.fromCoroutine(self._fetch_chain(url))

    async def _fetch_chain(self, url: str) -> CertificateChain:
        reply = await self._post(url, None, endpoint="certificate", accept=PEM_CHAIN)
        return CertificateChain.from_pem(url, reply.body, reply.links("alternate"))

    async def _fetch_certificate(
        self, order: messages.OrderResource, preferred: str | None
    ) -> CertificateChain:
        url = order.body.certificate
        if not url:
            raise ProtocolError(f"order {order.uri} has no certificate URL (is it valid?)")
        default = await self._fetch_chain(url)
        if preferred is None or not default.alternates:
            return default
        if default.issuer_names()[-1] == preferred:
            return default
        try:
            alternates = await defer.gatherResults(
                [Deferred.fromCoroutine(self._fetch_chain(u)) for u in default.alternates],
                consumeErrors=True,
            )
        except defer.FirstError as e:
            e.subFailure.raiseException()
        return pick_chain([default, *alternates], preferred)

    def revoke(
        self, cert: x509.Certificate, reason: int = 0, *, key: PrivateKey | JWK | None = None
    ) -> Deferred[None]:
        """
        Revoke ``cert``: signed by the account key, or, when ``key`` (the
        certificate's private key, cryptography or JWK) is given, by that key.

        :param reason: an RFC 5280 CRLReason code.
        """
        return Deferred.fromCoroutine(self._revoke(cert, reason, key))

    async def _revoke(
        self, cert: x509.Certificate, reason: int, key: PrivateKey | JWK | None
    ) -> None:
        if not isinstance(reason, int) or isinstance(reason, bool) or not 0 <= reason <= 10:
            raise ConfigurationError(f"bad revocation reason {reason!r}: need an RFC 5280 code")
        payload = {
            "certificate": b64url(cert.public_bytes(serialization.Encoding.DER)),
            "reason": reason,
        }
        url = self._url("revokeCert")
        if key is None:
            await self._post(url, payload, endpoint="revokeCert")
        else:
            await self._post(url, payload, endpoint="revokeCert", key=_as_jwk(key), use_jwk=True)
        log.info("ACME certificate {serial} revoked", serial=f"{cert.serial_number:x}")

    def renewal_info(self, cert: x509.Certificate) -> Deferred[RenewalInfo]:
        """
        Ask the CA's suggested renewal window for ``cert`` (RFC 9773).

        :raises txacme.errors.ConfigurationError: when the CA has no ARI.
        """
        return Deferred.fromCoroutine(self._renewal_info(cert))

    async def _renewal_info(self, cert: x509.Certificate) -> RenewalInfo:
        if not self.supports_ari:
            raise ConfigurationError(
                f"the CA at {self.directory_url or 'this directory'} does not offer renewal "
                "information (no renewalInfo in its directory)"
            )
        url = self._url("renewalInfo").rstrip("/") + "/" + ari_cert_id(cert)
        reply = await self._transport.send("GET", url, endpoint="renewalInfo")
        reply.raise_for_problem()
        return RenewalInfo.from_json(reply.json(), reply.retry_after, url)


def _check_settings(
    key: JWK,
    timeout: float,
    poll_timeout: float,
    poll_initial: float,
    poll_max: float,
    max_nonce_attempts: int,
) -> None:
    """Refuse a key that is not a JWK and timings or bounds that make no sense."""
    if not isinstance(key, JWK):
        raise ConfigurationError(f"the account key must be a josepy JWK, not {type(key)}")
    if timeout <= 0 or poll_timeout <= 0 or poll_initial <= 0 or poll_max < poll_initial:
        raise ConfigurationError(
            f"bad timing: timeout={timeout!r}, poll_timeout={poll_timeout!r}, "
            f"poll_initial={poll_initial!r}, poll_max={poll_max!r}"
        )
    if max_nonce_attempts < 1:
        raise ConfigurationError(f"max_nonce_attempts must be >= 1, not {max_nonce_attempts}")


def _checked_eab(eab: EAB | None) -> EAB | None:
    if eab is not None and not isinstance(eab, EAB):
        raise ConfigurationError(f"eab must be an EAB, not {type(eab).__name__}")
    return eab


def _as_jwk(key: PrivateKey | JWK) -> JWK:
    if isinstance(key, JWK):
        return key
    if isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return jwk_for(key)
    raise UnsupportedKeyType(f"unsupported key {type(key).__name__}: need an EC or RSA private key")
