"""
The state every part of the test CA shares and the small helpers its ACME
handlers call: :class:`CABase` declares (with their types) the configuration,
the protocol records (accounts, orders, authorizations, challenges,
certificates), the pending work and the serving state that
:class:`~txacme.testca.TestCA` sets up, and gives the handler mixins URLs,
problem replies, ownership checks, ``Retry-After`` headers and delayed calls
that count towards :meth:`~txacme.testca.TestCA.idle`.
"""

from __future__ import annotations

import datetime
import json
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from txacme.testca._model import (
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
)
from txacme.testca._pki import HTTPSIdentity, IssuingHierarchy
from txacme.testca._problems import Problem
from txacme.testca._validation import Validator

#: The test CA's one logger; its namespace is that of the module TestCA lives in.
log = Logger(namespace="txacme.testca._server")

PROBLEM_JSON = "application/problem+json"
#: The largest request body read.
MAX_BODY = 64 * 1024


class CABase:
    """
    The state of a test CA and the helpers its handlers share. Only
    :class:`~txacme.testca.TestCA` is instantiated; it sets every attribute
    declared here.
    """

    # -- configuration (see TestCA's parameters) ----------------------------

    _reactor: Any
    _clock: IReactorTime
    _offset: float
    _port_number: int
    http01_host: str
    http01_port: int
    tlsalpn01_host: str
    tlsalpn01_port: int
    dns_server: tuple[str, int] | None
    challenge_types: list[str]
    issuer_domain_names: list[str]
    terms_of_service: str | None
    require_terms_agreement: bool
    eab_required: bool
    eab_keys: dict[str, str]
    profiles: dict[str, Profile]
    default_profile: str
    bad_nonce_rate: float
    retry_after: int
    ari_retry_after: int
    reuse_authorizations: bool
    validation_delay: float
    issuance_delay: float
    forbidden_names: set[str]

    # -- what happened, for tests -------------------------------------------

    requests: list[RequestRecord]
    certificates: list[CertificateRecord]

    # -- keys, randomness, validation ---------------------------------------

    _random: random.Random
    _validator: Validator
    _hierarchy: IssuingHierarchy
    _https: HTTPSIdentity

    # -- protocol records ---------------------------------------------------

    _nonces: OrderedDict[str, None]
    #: Accounts by URL (the JWS ``kid``).
    _accounts: dict[str, Account]
    #: Accounts by the thumbprint of their key.
    _accounts_by_key: dict[bytes, Account]
    _orders_by_id: dict[str, Order]
    _authzs: dict[str, Authz]
    _challenges: dict[str, Challenge]
    #: Issued certificates by the id in their download URL.
    _certs: dict[str, CertificateRecord]
    #: Issued certificates by ARI identifier.
    _certs_by_id: dict[str, CertificateRecord]

    # -- pending work and serving -------------------------------------------

    _faults: list[Fault]
    _calls: set[IDelayedCall]
    _running: set[defer.Deferred[Any]]
    _idle_waiters: list[defer.Deferred[None]]
    _listening: IListeningPort | None
    _factory: WrappingFactory
    _tempdir: str | None
    _base_url: str

    if TYPE_CHECKING:
        # Public control API of TestCA that handlers use; declared for the type checker only.

        def now(self) -> datetime.datetime: ...

        def record_for(self, cert: x509.Certificate | bytes | str) -> CertificateRecord: ...

        def renewal_window(
            self, cert: x509.Certificate | bytes | str
        ) -> tuple[datetime.datetime, datetime.datetime]: ...

    # -- helpers ------------------------------------------------------------

    def _url(self, kind: str, ident: str = "") -> str:
        return f"{self._base_url}/acme/{kind}{'/' + ident if ident else ''}"

    def _problem_reply(self, problem: Problem) -> Reply:
        body = json.dumps(problem.to_json(), indent=1).encode("utf-8")
        return Reply(problem.status, body, PROBLEM_JSON, list(problem.headers.items()))

    def _owned_account(self, v: Verified) -> Account:
        assert v.account is not None
        return v.account

    def _own(self, v: Verified, owner: Account) -> None:
        if v.account is not owner:
            raise Problem("unauthorized", "this resource belongs to another account")

    def _retry_after(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]

    def _later(self, delay: float, f: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            self._calls.discard(call)
            try:
                f(*args)
            finally:
                self._check_idle()

        call = self._reactor.callLater(delay, run)
        self._calls.add(call)

    def _check_idle(self) -> None:
        if self._calls or self._running:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)
