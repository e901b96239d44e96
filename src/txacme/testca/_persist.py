"""
The server side of dns-account-01 (draft-ietf-acme-dns-account-label-03) and
dns-persist-01 (draft-ietf-acme-dns-persist-02), written apart from the
client's code so that each checks the other.
"""

from __future__ import annotations

import base64
import hashlib


def account_label(account_url: str) -> str:
    """``_`` + lower-case ``base32(SHA-256(account URL)[:10])``."""
    digest = hashlib.sha256(account_url.encode("utf-8")).digest()
    return "_" + base64.b32encode(digest[:10]).decode("ascii").lower()


def persist_record_matches(
    text: str, issuers: list[str], account_url: str, *, wildcard: bool, now: float
) -> bool:
    """
    Whether a ``_validation-persist`` TXT value (an RFC 8659 issue-value)
    authorizes ``account_url`` for this CA at ``now``.
    """
    fields = text.split(";")
    issuer = fields[0].strip().lower().rstrip(".")
    if issuer not in issuers:
        return False
    params: dict[str, str] = {}
    for field in fields[1:]:
        field = field.strip()
        if not field:
            continue
        if "=" not in field:
            return False
        tag, value = field.split("=", 1)
        tag = tag.strip().lower()
        if tag in params:
            return False
        params[tag] = value.strip()
    if params.get("accounturi") != account_url:
        return False
    if wildcard and params.get("policy", "").lower() != "wildcard":
        return False
    until = params.get("persistuntil")
    if until is not None and (not until.isdigit() or now > int(until)):
        return False
    return True
