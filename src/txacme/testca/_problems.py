"""Problem documents (RFC 8555 section 6.7) as the test CA sends them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ACME_ERROR = "urn:ietf:params:acme:error:"

#: The HTTP status the test CA uses for each ACME problem code.
STATUS_FOR: Mapping[str, int] = {
    "accountDoesNotExist": 400,
    "alreadyReplaced": 409,
    "alreadyRevoked": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "caa": 403,
    "compound": 403,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 403,
    "incorrectResponse": 403,
    "invalidContact": 400,
    "invalidProfile": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
    "userActionRequired": 403,
}


class Problem(Exception):
    """
    An ACME problem: raised inside the CA, turned into an
    ``application/problem+json`` response (or stored as an ``error`` field).
    """

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        identifier: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.type = code if ":" in code else ACME_ERROR + code
        self.code = code
        self.detail = detail
        self.status = status if status is not None else STATUS_FOR.get(code, 400)
        self.identifier = dict(identifier) if identifier else None
        self.extra = dict(extra) if extra else {}
        self.headers = dict(headers) if headers else {}

    def to_json(self) -> dict[str, Any]:
        """The problem document."""
        doc: dict[str, Any] = {"type": self.type, "detail": self.detail, "status": self.status}
        if self.identifier:
            doc["identifier"] = self.identifier
        doc.update(self.extra)
        return doc
