"""
One process of a cluster: several processes sharing a coordinating store
(:class:`~txacme.stores.coordination.ICoordinatingStore`) serve each other's
certificates and answer each other's challenges.

* :class:`SharedResponder` wraps an ``http-01`` or ``tls-alpn-01`` responder so
  that its challenges are also written to the store.
* :class:`ClusterNode` serves certificates stored by other processes (it
  follows change notifications into the in-memory TLS index), and answers
  challenges that other processes started: a validator's ``tls-alpn-01``
  ClientHello or ``http-01`` request for a challenge this process does not
  know triggers one look-up in the store.

May import the core modules, :mod:`txacme.stores`, :mod:`txacme.challenges`,
:mod:`txacme.issuing` and the rest of :mod:`txacme.serving`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import pem
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from txacme.challenges.http01 import HTTP01Responder
from txacme.challenges.tlsalpn01 import TLSALPN01Registry
from txacme.errors import ConfigurationError, InvalidServerName
from txacme.formats import is_token
from txacme.interfaces import ICertificateStore, IResponder
from txacme.logs import Logger
from txacme.names import normalize_server_name
from txacme.serving.hello import ClientHello
from txacme.serving.index import CertificateIndex
from txacme.stores.coordination import (
    DEFAULT_CHALLENGE_TTL,
    SHARED_CHALLENGE_TYPES,
    ChallengeRecord,
    CoordinatingStore,
    StoreChange,
    _check_ttl,
    provides_coordination,
)

log = Logger()

_T = TypeVar("_T")


# ---------------------------------------------------------------------------
# Sharing challenges
# ---------------------------------------------------------------------------


def _token_of(challenge: Any) -> str:
    token = challenge.encode("token")
    if not isinstance(token, str) or not is_token(token):
        raise ConfigurationError(f"challenge token {token!r} is not base64url")
    return token


@implementer(IResponder)
class SharedResponder:
    """
    An ``http-01`` or ``tls-alpn-01`` responder whose challenges are also
    written to a coordinating store, so that the process the validator reaches
    can answer, whichever it is.

    :param store: a store providing
        :class:`~txacme.stores.coordination.ICoordinatingStore`.
    :param local: the responder answering in this process
        (:class:`~txacme.challenges.http01.HTTP01Responder` or
        :class:`~txacme.challenges.tlsalpn01.TLSALPN01Responder`).
    :param ttl: lifetime of the records (they are deleted when the challenge
        ends; the lifetime bounds what a crash leaves behind).
    """

    def __init__(
        self, store: CoordinatingStore, local: IResponder, *, ttl: float = DEFAULT_CHALLENGE_TTL
    ) -> None:
        challenge_type = getattr(local, "challenge_type", None)
        if challenge_type not in SHARED_CHALLENGE_TYPES:
            raise ConfigurationError(
                f"{local!r} answers {challenge_type!r}; only "
                f"{', '.join(SHARED_CHALLENGE_TYPES)} are shared"
            )
        self.challenge_type: str = challenge_type
        self.store = store
        self.local = local
        self.ttl = _check_ttl(ttl)

    def _record(self, server_name: str, challenge: Any, response: Any) -> ChallengeRecord:
        return ChallengeRecord(
            self.challenge_type,
            normalize_server_name(server_name),
            _token_of(challenge),
            response.key_authorization,
            self.store.node_id,
        )

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """Answer locally, then write the record; fires once it is readable by all."""
        try:
            record = self._record(server_name, challenge, response)
        except Exception:
            return fail()
        d: Deferred[object] = maybeDeferred(
            self.local.start_responding, server_name, challenge, response
        )
        d.addCallback(lambda _: self.store.put_challenge(record, self.ttl))
        return d.addCallback(lambda _: None)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> Deferred[None]:
        """Stop answering locally and delete the record."""
        try:
            record = self._record(server_name, challenge, response)
        except Exception:
            return fail()
        d: Deferred[object] = maybeDeferred(
            self.local.stop_responding, server_name, challenge, response
        )
        d.addBoth(lambda result: self.store.delete_challenge(record).addCallback(lambda _: result))
        return d.addCallback(lambda _: None)


@attrs.frozen
class _TokenChallenge:
    """Just enough of an ``http-01`` challenge for ``HTTP01Responder``."""

    token: str

    def encode(self, field: str) -> str:
        assert field == "token"
        return self.token


@attrs.frozen
class _KeyAuthorizationResponse:
    key_authorization: str


def identifier_for_sni(sni: str) -> str | None:
    """
    The identifier a validator asks about with SNI ``sni`` (lower case): the
    name itself, or the address of a reverse-DNS name (RFC 8738); ``None`` if
    it is no valid name.
    """
    try:
        if sni.endswith(".in-addr.arpa"):
            labels = sni[: -len(".in-addr.arpa")].split(".")
            if len(labels) == 4:
                return ipaddress.IPv4Address(".".join(reversed(labels))).compressed
            return None
        if sni.endswith(".ip6.arpa"):
            nibbles = sni[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)).compressed
            return None
        return normalize_server_name(sni)
    except (ValueError, InvalidServerName):
        return None


# ---------------------------------------------------------------------------
# One node of the cluster
# ---------------------------------------------------------------------------


class ClusterNode:
    """
    Joins this process to the other processes sharing ``store``.

    * Certificates: every ``"certificate"`` change is read from the store into
      ``index`` (a :class:`~txacme.serving.index.CertificateIndex`), one read
      per change and name; a ``"resync"`` reloads the whole index. An entry
      that appears empty (a name marked wanted) is handed to ``on_wanted(name)``.
    * ``tls-alpn-01``: :meth:`hello_hook` (give it to
      :class:`txacme.serving.hello.HelloHookFactory`) sees a validator's ClientHello
      (only ``acme-tls/1`` offered) for a name with no challenge in
      ``tls_alpn`` (a :class:`~txacme.challenges.tlsalpn01.TLSALPN01Registry`)
      and holds it while the store is asked; a record found is added to the
      registry before OpenSSL sees the ClientHello.
    * ``http-01``: :attr:`http01` stands in for the
      :class:`~txacme.challenges.http01.HTTP01Responder` given (pass it to
      ``http01_root``): unknown tokens are looked up in the store.
    * Responders: :meth:`responders` wraps this process's ``http-01`` and
      ``tls-alpn-01`` responders in :class:`SharedResponder`.

    Challenges copied from the store are forgotten when their record is deleted
    or after ``challenge_ttl`` seconds. At most ``max_lookups`` store look-ups
    for unknown challenges run at once; more are answered "unknown" at once, so
    a flood of bogus validation requests cannot queue up work.

    :param store: a certificate store that also provides
        :class:`~txacme.stores.coordination.ICoordinatingStore`.
    :param index: the TLS index to keep current, or ``None``.
    :param tls_alpn: the registry the TLS layer answers ``tls-alpn-01`` from.
    :param http01: the ``HTTP01Responder`` of this process's port-80 listener.
    :param on_wanted: called with a name whose entry appeared empty.
    :param clock: the reactor's clock (required).
    :param challenge_ttl: seconds a challenge copied from the store is kept,
        and the lifetime of the records :meth:`responders` write.
    :param max_lookups: store look-ups of unknown challenges running at once.
    :raises txacme.errors.ConfigurationError: when ``store`` does not provide
        ``ICoordinatingStore``.
    :raises TypeError: without ``clock``.
    """

    def __init__(
        self,
        store: ICertificateStore,
        index: CertificateIndex | None = None,
        *,
        tls_alpn: TLSALPN01Registry | None = None,
        http01: HTTP01Responder | None = None,
        on_wanted: Callable[[str], object] | None = None,
        clock: IReactorTime | None = None,
        challenge_ttl: float = DEFAULT_CHALLENGE_TTL,
        max_lookups: int = 16,
    ) -> None:
        if not provides_coordination(store):
            raise ConfigurationError(f"{store!r} does not provide ICoordinatingStore")
        if clock is None:
            raise TypeError("ClusterNode needs the reactor's clock (clock=)")
        self.store = store
        self.index = index
        self.tls_alpn = tls_alpn
        self._http01 = http01
        self.on_wanted = on_wanted
        self._clock = clock
        self._challenge_ttl = _check_ttl(challenge_ttl, "challenge_ttl")
        self._max_lookups = max_lookups
        self._lookups = 0
        self._unsubscribe: Callable[[], object] | None = None
        self._refreshing: set[str] = set()
        self._dirty: set[str] = set()
        self._mirrored: dict[tuple[str, str, str], tuple[str, IDelayedCall]] = {}
        self._running: set[Deferred[Any]] = set()
        #: Give this to ``http01_root`` instead of the ``HTTP01Responder``
        #: (``None`` without one): unknown tokens are looked up in the store.
        self.http01: HTTP01Responder | None = (
            _ClusterHTTP01(self, http01) if http01 is not None else None
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start following the store's changes."""
        if self._unsubscribe is None:
            self._unsubscribe = self.store.subscribe(self._on_change)

    def stop(self) -> None:
        """Stop following; forget the challenges copied from the store."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for key in list(self._mirrored):
            self._unmirror(key)
        for d in list(self._running):
            d.cancel()

    def _track(self, d: Deferred[_T]) -> Deferred[_T]:
        self._running.add(d)

        def done(result: _T) -> _T:
            self._running.discard(d)
            return result

        d.addBoth(done)
        return d

    # -- responders --------------------------------------------------------

    def responders(self, responders: Iterable[IResponder]) -> list[IResponder]:
        """``responders`` with those of ``http-01`` / ``tls-alpn-01`` made shared."""
        result: list[IResponder] = []
        for responder in responders:
            if isinstance(responder, SharedResponder):
                result.append(responder)
            elif getattr(responder, "challenge_type", None) in SHARED_CHALLENGE_TYPES:
                result.append(SharedResponder(self.store, responder, ttl=self._challenge_ttl))
            else:
                result.append(responder)
        return result

    # -- changes -------------------------------------------------------------

    def _on_change(self, change: StoreChange) -> None:
        if change.kind == "certificate" and change.name is not None:
            self._refresh(change.name)
        elif change.kind == "resync":
            if self.index is not None:
                self._track(self.index.load_from(self.store)).addErrback(
                    self._log_failure, "reloading the certificate index"
                )
        elif change.kind == "challenge" and change.deleted:
            key = (change.challenge_type or "", change.name or "", change.token or "")
            self._unmirror(key)

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        if not failure.check(CancelledError):  # type: ignore[no-untyped-call]
            log.failure(what, failure)

    def _refresh(self, name: str) -> None:
        """Read ``name`` and update the index; one read per name at a time."""
        if name in self._refreshing:
            self._dirty.add(name)
            return
        self._refreshing.add(name)
        d: Deferred[None] = maybeDeferred(self.store.get, name).addCallbacks(
            lambda objects: self._refreshed(name, objects),
            lambda failure: self._vanished(name, failure),
        )

        def done(result: object) -> None:
            self._refreshing.discard(name)
            if isinstance(result, Failure):
                self._log_failure(result, f"reading the new certificate of {name}")
            if name in self._dirty and self._unsubscribe is not None:
                self._dirty.discard(name)
                self._refresh(name)

        self._track(d).addBoth(done)

    def _refreshed(self, name: str, objects: list[pem.AbstractPEMObject]) -> None:
        """The entry of ``name`` was read: update the index; hand an empty one to on_wanted."""
        if self.index is not None:
            if objects:
                self.index.update(name, objects)
            else:
                self.index.remove(name)
        if not objects and self.on_wanted is not None:
            log.debug("{name} is wanted: issuing", name=name)
            self.on_wanted(name)

    def _vanished(self, name: str, failure: Failure) -> None:
        """The entry of ``name`` is gone (``KeyError``): drop it from the index."""
        failure.trap(KeyError)  # type: ignore[no-untyped-call]
        if self.index is not None:
            self.index.remove(name)

    # -- challenges ------------------------------------------------------------

    def _mirror(self, record: ChallengeRecord) -> None:
        key = record.key
        old = self._mirrored.pop(key, None)
        if old is not None and old[1].active():
            old[1].cancel()
        if record.challenge_type == "tls-alpn-01" and self.tls_alpn is not None:
            if old is None:
                self.tls_alpn.add(record.identifier, record.key_authorization)
        elif record.challenge_type == "http-01" and self._http01 is not None:
            self._http01.start_responding(
                record.identifier,
                _TokenChallenge(record.token),
                _KeyAuthorizationResponse(record.key_authorization),
            )
        else:
            return
        call = self._clock.callLater(self._challenge_ttl, self._unmirror, key)
        self._mirrored[key] = (record.key_authorization, call)

    def _unmirror(self, key: tuple[str, str, str]) -> None:
        found = self._mirrored.pop(key, None)
        if found is None:
            return
        key_authorization, call = found
        if call.active():
            call.cancel()
        challenge_type, identifier, token = key
        if challenge_type == "tls-alpn-01" and self.tls_alpn is not None:
            self.tls_alpn.remove(identifier, key_authorization)
        elif challenge_type == "http-01" and self._http01 is not None:
            self._http01.stop_responding(
                identifier, _TokenChallenge(token), _KeyAuthorizationResponse(key_authorization)
            )

    def lookup(
        self, challenge_type: str, *, identifier: str | None = None, token: str | None = None
    ) -> Deferred[bool]:
        """
        Look a challenge up in the store and answer it locally when found.

        :return: ``Deferred`` firing with whether one was found; ``False`` at
            once when ``max_lookups`` look-ups are already running.
        """
        if self._lookups >= self._max_lookups:
            log.debug(
                "too many challenge look-ups at once; not looking up {what}",
                what=identifier or token,
            )
            return succeed(False)
        self._lookups += 1
        d: Deferred[list[ChallengeRecord]] = maybeDeferred(
            self.store.get_challenges, challenge_type, identifier, token
        )

        def found(records: list[ChallengeRecord]) -> bool:
            for record in records:
                self._mirror(record)
            if records:
                log.debug(
                    "answering {type} for {identifier}, started by {owner}",
                    type=challenge_type,
                    identifier=records[0].identifier,
                    owner=records[0].owner,
                )
            return bool(records)

        def failed(failure: Failure) -> bool:
            self._log_failure(failure, "looking up a challenge in the store")
            return False

        def done(result: _T) -> _T:
            self._lookups -= 1
            return result

        answer: Deferred[bool] = d.addCallbacks(found, failed)
        answer.addBoth(done)
        return self._track(answer)

    def hello_hook(self, hello: ClientHello) -> Deferred[bool] | None:
        """
        For a ``tls-alpn-01`` validator's ClientHello (only ``acme-tls/1``
        offered) naming a challenge this process does not know: a ``Deferred``
        firing once the store was asked. ``None`` (go on at once) otherwise.
        """
        if self.tls_alpn is None or tuple(hello.alpn_protocols) != (b"acme-tls/1",):
            return None
        sni = hello.server_name
        if not sni or self.tls_alpn.lookup(sni) is not None:
            return None
        identifier = identifier_for_sni(sni)
        if identifier is None:
            return None
        return self.lookup("tls-alpn-01", identifier=identifier)


# ---------------------------------------------------------------------------
# http-01 requests for tokens another process started
# ---------------------------------------------------------------------------


class _ClusterHTTP01(HTTP01Responder):
    """
    Stands in for an ``HTTP01Responder`` in ``http01_root``: its :attr:`resource`
    serves the local tokens and looks unknown ones up in the store; everything
    else is the local responder's.
    """

    def __init__(self, node: ClusterNode, local: HTTP01Responder) -> None:
        # Not HTTP01Responder.__init__: the tokens are the local responder's.
        self.node = node
        self.local = local
        self.resource = _ClusterChallengeDirectory(node, local)

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """Answer through the local responder."""
        self.local.start_responding(server_name, challenge, response)

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """Stop answering through the local responder."""
        self.local.stop_responding(server_name, challenge, response)

    def active_tokens(self) -> frozenset[str]:
        """The local responder's tokens."""
        return self.local.active_tokens()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


class _ClusterChallengeDirectory(Resource):
    def __init__(self, node: ClusterNode, local: HTTP01Responder) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._node = node
        self._local = local

    def getChild(self, path: bytes, request: Request) -> IResource:  # noqa: N802
        try:
            token = path.decode("ascii")
        except UnicodeDecodeError:
            token = ""
        if (
            not is_token(token)
            or token in self._local.active_tokens()
            or request.method not in (b"GET", b"HEAD")
        ):
            child = self._local.resource.getChildWithDefault(  # type: ignore[no-untyped-call]
                path, request
            )
            return child  # type: ignore[no-any-return]
        return _LookedUpToken(self._node, self._local, path, token)

    def render(self, request: Request) -> bytes:
        body = self._local.resource.render(request)  # type: ignore[no-untyped-call]
        return body  # type: ignore[no-any-return]


class _LookedUpToken(Resource):
    isLeaf = True

    def __init__(self, node: ClusterNode, local: HTTP01Responder, path: bytes, token: str) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self._node = node
        self._local = local
        self._path = path
        self._token = token

    def render(self, request: Request) -> object:
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def answer(_: object) -> None:
            if finished:
                return
            try:
                child = self._local.resource.getChildWithDefault(  # type: ignore[no-untyped-call]
                    self._path, request
                )
                body = child.render(request)
            except Exception:
                log.failure("answering an http-01 request")
                request.setResponseCode(500)
                body = b""
            if isinstance(body, bytes):
                request.write(body)  # type: ignore[no-untyped-call]
                request.finish()  # type: ignore[no-untyped-call]

        self._node.lookup("http-01", token=self._token).addBoth(answer)
        return NOT_DONE_YET


__all__ = ["ClusterNode", "SharedResponder", "identifier_for_sni"]
