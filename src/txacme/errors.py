"""Exceptions raised by txacme.

Every ACME problem document (RFC 8555 section 6.7) becomes an :class:`ACMEProblem`,
or the subclass registered for its type, carrying the type, detail, subproblems and
the ``Retry-After`` delay the CA asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"


class TxACMEError(Exception):
    """Base class of every error txacme raises on purpose."""


class ConfigurationError(TxACMEError, ValueError):
    """Bad input given by the user: an option, a name, a file, an endpoint string."""


class InvalidServerName(ConfigurationError):
    """A server name that is not a DNS name, a ``*.`` wildcard or an IP address."""

    def __init__(self, name: object, reason: str) -> None:
        super().__init__(f"invalid server name {name!r}: {reason}")
        self.name = name
        self.reason = reason


class UnsupportedKeyType(ConfigurationError):
    """A key type txacme does not generate or the CA does not accept."""


class ProtocolError(TxACMEError):
    """The CA answered something that is not valid ACME."""


class ACMETimeout(TxACMEError):
    """An ACME request, or a wait for an authorization or order, took too long."""


class CAUnreachable(TxACMEError):
    """
    The CA did not answer: connection refused, DNS lookup failed, no route, the
    connection lost before an answer. Usually temporary; txacme tries again later.

    :ivar url: the CA's directory URL (or the URL requested when it is not known).
    :ivar cause: the cause in a few words (``connection refused``).
    """

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot reach the CA at {url}: {cause}")
        self.url = url
        self.cause = cause


class CAUntrusted(TxACMEError):
    """
    The CA's HTTPS certificate did not verify against the trusted roots (the
    system's, or those of ``ca_file=``). Not temporary: the trust must be fixed.

    :ivar url: the CA's directory URL (or the URL requested when it is not known).
    :ivar cause: what the TLS library said (``certificate verify failed``).
    """

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(
            f"the CA at {url} presented a TLS certificate that does not verify ({cause}); "
            "give the root that signs it with ca_file= (--ca-file for the txacme command), "
            "or check the directory URL"
        )
        self.url = url
        self.cause = cause


class IssuanceFailed(TxACMEError):
    """An order could not be completed (an authorization or the order became invalid)."""

    def __init__(self, message: str, problem: ACMEProblem | None = None) -> None:
        super().__init__(message)
        self.problem = problem


class NoSupportedChallenge(IssuanceFailed):
    """The CA offered no challenge type that a configured responder answers."""


class ACMEProblem(TxACMEError):
    """
    A problem document returned by the CA.

    :ivar type: the full problem type URN, e.g. ``urn:ietf:params:acme:error:badNonce``.
    :ivar code: the short code (``badNonce``) for ACME types, else the full type.
    :ivar detail: the human-readable detail, or ``""``.
    :ivar status: the HTTP status code of the response, when there was one.
    :ivar identifier: the ``{"type": ..., "value": ...}`` mapping the problem is about, if any.
    :ivar subproblems: the per-identifier problems (RFC 8555 section 6.7.1).
    :ivar retry_after: seconds the CA asked us to wait, from ``Retry-After``, or ``None``.
    """

    code_name: ClassVar[str | None] = None
    _registry: ClassVar[dict[str, type[ACMEProblem]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code_name is not None:
            ACMEProblem._registry[cls.code_name] = cls

    def __init__(
        self,
        type: str = "about:blank",
        detail: str = "",
        *,
        status: int | None = None,
        identifier: Mapping[str, str] | None = None,
        subproblems: Sequence[ACMEProblem] = (),
        retry_after: float | None = None,
        url: str | None = None,
    ) -> None:
        self.type = type
        self.detail = detail
        self.status = status
        self.identifier = dict(identifier) if identifier else None
        self.subproblems = tuple(subproblems)
        self.retry_after = retry_after
        self.url = url
        super().__init__(str(self))

    @property
    def code(self) -> str:
        """The short ACME code (``badNonce``) for ACME types, else the full type."""
        if self.type.startswith(ACME_ERROR_PREFIX):
            return self.type[len(ACME_ERROR_PREFIX) :]
        return self.type

    def __str__(self) -> str:
        text = self.code
        if self.identifier:
            text = f"{text} for {self.identifier.get('value')}"
        if self.detail:
            text = f"{text}: {self.detail}"
        for sub in self.subproblems:
            text += f"; {sub}"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(type={self.type!r}, detail={self.detail!r}, "
            f"status={self.status!r}, retry_after={self.retry_after!r})"
        )

    @classmethod
    def from_json(
        cls,
        document: Mapping[str, Any],
        *,
        status: int | None = None,
        retry_after: float | None = None,
        url: str | None = None,
    ) -> ACMEProblem:
        """
        Build the most specific problem class for a problem document.

        Tolerates malformed documents: unknown or missing fields give a generic
        problem rather than an exception.
        """
        if not isinstance(document, Mapping):
            return ServerInternal(
                ACME_ERROR_PREFIX + "serverInternal",
                f"malformed problem document: {document!r:.200}",
                status=status,
                retry_after=retry_after,
                url=url,
            )
        ptype = document.get("type")
        if not isinstance(ptype, str) or not ptype:
            ptype = "about:blank"
        detail = document.get("detail")
        if not isinstance(detail, str):
            detail = "" if detail is None else str(detail)
        identifier = document.get("identifier")
        if not (
            isinstance(identifier, Mapping) and all(isinstance(v, str) for v in identifier.values())
        ):
            identifier = None
        subs = document.get("subproblems")
        subproblems: list[ACMEProblem] = []
        if isinstance(subs, list):
            subproblems = [cls.from_json(s) for s in subs if isinstance(s, Mapping)]
        code = ptype[len(ACME_ERROR_PREFIX) :] if ptype.startswith(ACME_ERROR_PREFIX) else None
        klass = ACMEProblem._registry.get(code, ACMEProblem) if code else ACMEProblem
        return klass(
            ptype,
            detail,
            status=status,
            identifier=identifier,
            subproblems=subproblems,
            retry_after=retry_after,
            url=url,
        )


def _problem(code: str, doc: str, name: str | None = None) -> type[ACMEProblem]:
    if name is None:
        name = code[0].upper() + code[1:]
    namespace = {"code_name": code, "__doc__": doc, "__module__": __name__, "__qualname__": name}
    return type(name, (ACMEProblem,), namespace)


# One class for each problem type of RFC 8555 section 6.7, RFC 8738, RFC 9773 and the
# profiles draft; ``except RateLimited`` reads better than comparing strings.
AccountDoesNotExist = _problem("accountDoesNotExist", "The account does not exist.")
AlreadyReplaced = _problem("alreadyReplaced", "The certificate was already replaced (ARI).")
AlreadyRevoked = _problem("alreadyRevoked", "The certificate was already revoked.")
BadCSR = _problem("badCSR", "The CSR is unacceptable.")
BadNonce = _problem("badNonce", "The nonce was not acceptable; retry with a fresh one.")
BadPublicKey = _problem("badPublicKey", "The JWS was signed by an unsupported public key.")
BadRevocationReason = _problem("badRevocationReason", "The revocation reason is not allowed.")
BadSignatureAlgorithm = _problem("badSignatureAlgorithm", "The JWS algorithm is not supported.")
CAA = _problem("caa", "CAA records forbid the CA from issuing.", "CAA")
Compound = _problem("compound", "Several problems; see subproblems.")
Connection = _problem("connection", "The CA could not connect to the validation target.")
DNS = _problem("dns", "A DNS problem during validation.", "DNS")
ExternalAccountRequired = _problem(
    "externalAccountRequired", "The CA requires external account binding."
)
IncorrectResponse = _problem("incorrectResponse", "The challenge response did not match.")
InvalidContact = _problem("invalidContact", "A contact URL is not acceptable.")
InvalidProfile = _problem("invalidProfile", "The requested profile is not acceptable.")
Malformed = _problem("malformed", "The request message was malformed.")
OrderNotReady = _problem("orderNotReady", "The order is not ready to be finalized.")
RateLimited = _problem("rateLimited", "A rate limit was exceeded; see retry_after.")
RejectedIdentifier = _problem("rejectedIdentifier", "The CA will not issue for an identifier.")
ServerInternal = _problem("serverInternal", "The CA had an internal error.")
TLS = _problem("tls", "A TLS problem during validation.", "TLS")
Unauthorized = _problem("unauthorized", "The client lacks authorization.")
UnsupportedContact = _problem("unsupportedContact", "A contact URL scheme is unsupported.")
UnsupportedIdentifier = _problem("unsupportedIdentifier", "An identifier type is unsupported.")
UserActionRequired = _problem("userActionRequired", "Visit the instance URL to proceed.")

__all__ = [
    "ACMEProblem",
    "ACMETimeout",
    "AccountDoesNotExist",
    "AlreadyReplaced",
    "AlreadyRevoked",
    "BadCSR",
    "BadNonce",
    "BadPublicKey",
    "BadRevocationReason",
    "BadSignatureAlgorithm",
    "CAA",
    "CAUnreachable",
    "CAUntrusted",
    "Compound",
    "ConfigurationError",
    "Connection",
    "DNS",
    "ExternalAccountRequired",
    "IncorrectResponse",
    "InvalidContact",
    "InvalidProfile",
    "InvalidServerName",
    "IssuanceFailed",
    "Malformed",
    "NoSupportedChallenge",
    "OrderNotReady",
    "ProtocolError",
    "RateLimited",
    "RejectedIdentifier",
    "ServerInternal",
    "TLS",
    "TxACMEError",
    "Unauthorized",
    "UnsupportedContact",
    "UnsupportedIdentifier",
    "UnsupportedKeyType",
    "UserActionRequired",
]
