"""
ACME authorizations and challenges (RFC 8555 sections 7.5 and 8): creating an
identifier's authorization with one challenge per usable type (or reusing a
valid one), authorization status and expiry, the authorization and challenge
resources (fetch, deactivation, answering a challenge), and the validation an
answer schedules: run by :class:`~txacme.testca._validation.Validator` over the
network, its outcome recorded on the challenge and its authorization.
"""

from __future__ import annotations

import datetime
import os
import secrets
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from txacme.testca import _jws
from txacme.testca._base import CABase, log
from txacme.testca._model import (
    Account,
    Authz,
    Challenge,
    Reply,
    Verified,
    identifier_problem,
    rfc3339,
)
from txacme.testca._problems import Problem


class AuthorizationsMixin(CABase):
    """The authorization and challenge handlers of :class:`~txacme.testca.TestCA`."""

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
        dns_types = ("dns-01", "dns-account-01", "dns-persist-01")
        if wildcard:
            types = [t for t in self.challenge_types if t in dns_types]
        elif id_type == "ip":
            types = [t for t in self.challenge_types if t not in dns_types]
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

    def _challenge_json(self, challenge: Challenge) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": challenge.type,
            "url": challenge.url,
            "token": challenge.token,
            "status": challenge.status,
        }
        if challenge.type == "dns-persist-01":
            # draft-ietf-acme-dns-persist: no token; the CA's issuer names.
            del doc["token"]
            doc["issuer-domain-names"] = list(self.issuer_domain_names)
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
                authz.value,
                challenge.token,
                key_authorization,
                self.http01_host,
                self.http01_port,
                self.tlsalpn01_port,
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
        elif challenge.type == "dns-account-01":
            d = self._validator.dnsaccount01(
                authz.value, key_authorization, authz.account.url, self.dns_server
            )
        elif challenge.type == "dns-persist-01":
            d = self._validator.dnspersist01(
                authz.value,
                authz.wildcard,
                self.issuer_domain_names,
                authz.account.url,
                self.dns_server,
                self.now().timestamp(),
            )
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
