"""
Issued certificates seen through ACME: downloading a certificate chain (with
its alternate chains, RFC 8555 section 7.4.2), ``revokeCert`` with either the
account's or the certificate's key (section 7.6), and ARI ``renewalInfo``
(RFC 9773). The certificates themselves are made by issuance in
:mod:`txacme.testca._orders`; their records live on
:class:`~txacme.testca._base.CABase`.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.web.server import Request

from txacme.errors import ConfigurationError
from txacme.testca import _jws
from txacme.testca._authorizations import AuthorizationsMixin
from txacme.testca._base import log
from txacme.testca._model import Account, Reply, Verified, rfc3339
from txacme.testca._problems import Problem

PEM_CHAIN = "application/pem-certificate-chain"
#: Revocation reasons the test CA accepts (those Let's Encrypt accepts).
REVOCATION_REASONS = frozenset({0, 1, 3, 4, 5})


class CertificatesMixin(AuthorizationsMixin):
    """
    The certificate, revocation and renewal-information handlers of
    :class:`~txacme.testca.TestCA` (built on the authorizations: an account may
    revoke a certificate whose every identifier it holds a valid authorization for).
    """

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
