"""
ACME accounts (RFC 8555 section 7.3): the handlers for ``newAccount`` (with
contact checks and external account binding), an account's resource (fetch,
contact update, deactivation), its orders list, and ``keyChange`` (account key
rollover). :class:`AccountsMixin` reads and writes the account records that
:class:`~txacme.testca._base.CABase` declares.
"""

from __future__ import annotations

import secrets
from typing import Any

from txacme.testca import _jws
from txacme.testca._base import CABase, log
from txacme.testca._model import Account, Reply, Verified
from txacme.testca._problems import Problem


class AccountsMixin(CABase):
    """The account handlers of :class:`~txacme.testca.TestCA`."""

    def _account_reply(self, account: Account, status: int) -> Reply:
        headers = [("Location", account.url)]
        if self.terms_of_service:
            headers.append(("Link", f'<{self.terms_of_service}>;rel="terms-of-service"'))
        doc: dict[str, Any] = {
            "status": account.status,
            "contact": account.contact,
            "termsOfServiceAgreed": account.tos_agreed,
            "orders": account.url + "/orders",
        }
        return Reply.json(status, doc, headers)

    def _check_contact(self, value: object) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise Problem("malformed", "'contact' must be a list of strings")
        for contact in value:
            if not contact.startswith("mailto:"):
                raise Problem("unsupportedContact", f"only mailto: contacts, not {contact!r}")
            address = contact[len("mailto:") :]
            if (
                address.count("@") != 1
                or "?" in address
                or "," in address
                or not all(address.split("@"))
            ):
                raise Problem("invalidContact", f"{contact!r} is not one email address")
        return list(value)

    def _new_account(self, v: Verified) -> Reply:
        payload = v.payload()
        thumb = v.jwk.thumbprint()
        existing = self._accounts_by_key.get(thumb)
        if existing is not None and existing.status != "valid":
            # RFC 8555 section 7.3.6: no further requests with a deactivated key.
            raise Problem("unauthorized", f"the account of this key is {existing.status}")
        if payload.get("onlyReturnExisting") is True:
            if existing is None:
                raise Problem("accountDoesNotExist", "no account exists for this key")
            return self._account_reply(existing, 200)
        if existing is not None:
            return self._account_reply(existing, 200)
        contact = self._check_contact(payload.get("contact"))
        agreed = payload.get("termsOfServiceAgreed") is True
        if self.require_terms_agreement and self.terms_of_service and not agreed:
            raise Problem("malformed", "new accounts must agree to the terms of service")
        eab_kid = self._check_eab(payload.get("externalAccountBinding"), v)
        ident = secrets.token_urlsafe(9)
        account = Account(ident, self._url("acct", ident), v.jwk, contact, agreed, eab_kid)
        self._accounts[account.url] = account
        self._accounts_by_key[thumb] = account
        log.info("TestCA created account {url}", url=account.url)
        return self._account_reply(account, 201)

    def _check_eab(self, binding: object, v: Verified) -> str | None:
        if binding is None:
            if self.eab_required:
                raise Problem("externalAccountRequired", "this CA needs external account binding")
            return None
        if not self.eab_keys:
            raise Problem("malformed", "this CA does not support external account binding")
        inner = _jws.parse(binding, "externalAccountBinding")
        protected = inner.protected
        if protected.get("url") != v.url:
            raise Problem("unauthorized", "the external account binding 'url' is not newAccount")
        if "nonce" in protected:
            raise Problem("malformed", "the external account binding must not have a nonce")
        kid = protected.get("kid")
        mac_key = self.eab_keys.get(kid) if isinstance(kid, str) else None
        if mac_key is None or not isinstance(kid, str):
            raise Problem("unauthorized", f"unknown external account binding kid {kid!r}")
        _jws.verify_mac(inner, _jws.b64decode(mac_key, "key"))
        bound = _jws.load_public_jwk(_jws.json_object(inner.payload, "binding payload"))
        if not _jws.same_key(bound, v.jwk):
            raise Problem("unauthorized", "the external account binding is for another key")
        return kid

    def _account(self, v: Verified, ident: str) -> Reply:
        account = self._owned_account(v)
        if account.url != self._url("acct", ident):
            raise Problem("unauthorized", "the JWS 'kid' is not this account")
        if v.jws.post_as_get:
            return self._account_reply(account, 200)
        payload = v.jws.payload_json()
        if "contact" in payload:
            account.contact = self._check_contact(payload["contact"])
        if "status" in payload:
            if payload["status"] != "deactivated":
                raise Problem("malformed", "an account's status can only become 'deactivated'")
            account.status = "deactivated"
            for order in account.orders:
                for authz in order.authzs:
                    if authz.status in ("pending", "valid"):
                        authz.status = "deactivated"
            log.info("TestCA deactivated account {url}", url=account.url)
        return self._account_reply(account, 200)

    def _account_orders(self, v: Verified, ident: str) -> Reply:
        account = self._owned_account(v)
        if account.url != self._url("acct", ident):
            raise Problem("unauthorized", "the JWS 'kid' is not this account")
        return Reply.json(200, {"orders": [o.url for o in account.orders]})

    def _key_change(self, v: Verified) -> Reply:
        account = self._owned_account(v)
        outer = v.payload()
        inner = _jws.parse(outer, "inner JWS")
        protected = inner.protected
        if "jwk" not in protected or "kid" in protected:
            raise Problem("malformed", "the inner JWS must have 'jwk' and no 'kid'")
        if "nonce" in protected:
            raise Problem("malformed", "the inner JWS must not have a 'nonce'")
        if protected.get("url") != v.url:
            raise Problem("malformed", "the inner JWS 'url' differs from the outer one")
        new_key = _jws.load_public_jwk(protected["jwk"])
        _jws.verify(inner, new_key)
        body = inner.payload_json()
        if body.get("account") != account.url:
            raise Problem("unauthorized", "the key change names another account")
        try:
            old_key = _jws.load_public_jwk(body.get("oldKey"))
        except Problem:
            raise Problem("malformed", "the key change 'oldKey' is not a public JWK")
        if not _jws.same_key(old_key, account.jwk):
            raise Problem("unauthorized", "'oldKey' is not the account's current key")
        new_thumb = new_key.thumbprint()
        other = self._accounts_by_key.get(new_thumb)
        if other is not None:
            raise Problem(
                "malformed",
                "the new key is already used by an account",
                status=409,
                headers={"Location": other.url},
            )
        del self._accounts_by_key[account.jwk.thumbprint()]
        account.jwk = new_key
        self._accounts_by_key[new_thumb] = account
        log.info("TestCA rolled the key of {url}", url=account.url)
        return self._account_reply(account, 200)
