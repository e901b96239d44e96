"""
ACME orders (RFC 8555 sections 7.4 and 7.1.3): ``newOrder`` with its identifier,
profile, validity and ARI ``replaces`` checks; an order's status (derived from
its authorizations and expiry) and JSON; fetching an order; ``finalize`` with
its CSR checks; and the asynchronous issuance that follows, which signs the
certificate and records it. :class:`OrdersMixin` builds on the authorizations
of :class:`~txacme.testca._authorizations.AuthorizationsMixin`.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from txacme.testca import _jws
from txacme.testca._authorizations import AuthorizationsMixin
from txacme.testca._base import log
from txacme.testca._model import (
    Account,
    CertificateRecord,
    Order,
    Reply,
    Verified,
    cert_id,
    check_dns_name,
    csr_names,
    human_duration,
    identifier_problem,
    parse_time,
    rfc3339,
)
from txacme.testca._pki import pem
from txacme.testca._problems import Problem

#: The most identifiers one order may have.
MAX_IDENTIFIERS = 100


class OrdersMixin(AuthorizationsMixin):
    """The order handlers of :class:`~txacme.testca.TestCA`, and issuance."""

    def _check_identifiers(self, value: object) -> list[dict[str, str]]:
        """
        The order's identifiers, normalized. Every bad identifier is reported:
        one alone as its own problem, several as one problem with a
        ``subproblems`` entry each (RFC 8555 section 6.7.1).
        """
        if not isinstance(value, list) or not value:
            raise Problem("malformed", "'identifiers' must be a non-empty list")
        if len(value) > MAX_IDENTIFIERS:
            raise Problem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers per order")
        result: list[dict[str, str]] = []
        problems: list[Problem] = []
        for ident in value:
            if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
                raise Problem("malformed", f"an identifier needs a string 'value': {ident!r}")
            try:
                entry = self._check_identifier(ident.get("type"), ident["value"])
            except Problem as problem:
                problems.append(problem)
                continue
            if entry not in result:
                result.append(entry)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            codes = {p.code for p in problems}
            code = codes.pop() if len(codes) == 1 else "malformed"
            listed = "; ".join(p.detail for p in problems)
            raise Problem(
                code,
                f"{len(problems)} of the {len(value)} identifiers were refused: {listed}",
                extra={"subproblems": [p.to_json() for p in problems]},
            )
        return result

    def _check_identifier(self, id_type: object, raw: str) -> dict[str, str]:
        if id_type == "dns":
            name = check_dns_name(raw)
            dns_types = {"dns-01", "dns-account-01", "dns-persist-01"}
            if name.startswith("*.") and not dns_types & set(self.challenge_types):
                raise identifier_problem(
                    "dns", raw, "wildcards need a DNS challenge, which this CA does not offer"
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
        return {"type": str(id_type), "value": name}

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
            raise Problem(
                "malformed",
                f"notAfter must be after notBefore (or now) and at most "
                f"{human_duration(lifetime)} later (the {profile!r} profile's lifetime)",
            )
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
