"""
Hosted DNS services through dns-lexicon (``pip install txacme[lexicon]``).

`dns-lexicon <https://pypi.org/project/dns-lexicon/>`_ speaks the APIs of about
a hundred DNS services (Cloudflare, Route 53, Gandi, OVH, DigitalOcean,
Hetzner, PowerDNS's HTTP API, ...) behind one small interface: create, list,
update and delete a record. :class:`LexiconProvider` adapts that interface to
:class:`~txacme.challenges.dnsproviders.IDNSProvider`:

* each call runs in a thread (lexicon is synchronous: ``requests``, boto...),
  with a fresh lexicon provider object, so calls never share state;
* the zone comes from txacme (SOA discovery or ``dns_zone``), not from
  lexicon's own guess: lexicon's client guesses the zone from the Public Suffix
  List (downloading it at first use), which is wrong for delegated sub-zones and
  private TLDs, so this bridge builds the lexicon provider itself;
* options are given as a mapping (``{"auth_token": ...}``) and, unless
  ``use_env=False``, lexicon's usual environment variables
  (``LEXICON_<PROVIDER>_<OPTION>``, e.g. ``LEXICON_CLOUDFLARE_AUTH_TOKEN``) fill
  in the rest, which keeps secrets out of endpoint strings;
* removing deletes only the record with that name and value.

Errors become :class:`~txacme.challenges.dnsproviders.DNSUpdateError`; option values and
``LEXICON_*`` environment values are blanked out of their messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from txacme.challenges.dnsproviders import (
    DNSUpdateError,
    IDNSProvider,
    RunInThread,
    default_run_in_thread,
)
from txacme.errors import ConfigurationError
from txacme.logs import Logger

log = Logger()

_PROVIDER_NAME = re.compile(r"[a-z0-9_]+\Z")


def load_lexicon_provider_class(name: str) -> type[Any]:
    """
    The lexicon provider class called ``name`` (e.g. ``"cloudflare"``).

    :raises txacme.errors.ConfigurationError: when dns-lexicon is not installed,
        has no such provider, or the provider's own dependencies are missing.
    """
    if not isinstance(name, str) or not _PROVIDER_NAME.match(name):
        raise ConfigurationError(f"dns_lexicon_provider={name!r} is not a lexicon provider name")
    try:
        # The same discovery lexicon's own Client uses; see the module docstring
        # for why the bridge does not go through that Client.
        from lexicon._private.discovery import find_providers, load_provider_module
    except ImportError:
        raise ConfigurationError("dns=lexicon needs dns-lexicon: pip install 'txacme[lexicon]'")
    available = find_providers()
    if name not in available:
        raise ConfigurationError(f"dns_lexicon_provider={name!r}: lexicon has no such provider")
    if not available[name]:
        raise ConfigurationError(
            f"dns_lexicon_provider={name!r} needs more packages: pip install 'dns-lexicon[{name}]'"
        )
    provider_class: type[Any] = load_provider_module(name).Provider
    return provider_class


@implementer(IDNSProvider)
class LexiconProvider:
    """
    An :class:`~txacme.challenges.dnsproviders.IDNSProvider` backed by a dns-lexicon provider.

    :param provider_name: lexicon's name for the DNS service (``"cloudflare"``,
        ``"route53"``, ``"ddns"``...).
    :param options: the provider's options without the provider prefix, as
        lexicon's documentation lists them (``{"auth_token": "..."}``).
    :param ttl: the TTL of the records added.
    :param use_env: also read ``LEXICON_*`` environment variables.
    :param provider_class: a lexicon ``Provider`` class to use instead of
        looking ``provider_name`` up (a provider of your own, or a test double).
    :param run_in_thread: how blocking calls leave the reactor thread.
    """

    def __init__(
        self,
        provider_name: str,
        options: Mapping[str, str] | None = None,
        *,
        ttl: int = 60,
        use_env: bool = True,
        provider_class: type[Any] | None = None,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.provider_name = provider_name
        self._options = dict(options or {})
        self.ttl = ttl
        self.use_env = use_env
        self._provider_class = (
            provider_class
            if provider_class is not None
            else load_lexicon_provider_class(provider_name)
        )
        self._run: RunInThread = run_in_thread or default_run_in_thread

    def __repr__(self) -> str:
        return (
            f"LexiconProvider(provider_name={self.provider_name!r}, "
            f"options={sorted(self._options)!r}, ttl={self.ttl})"
        )

    def _config(self, zone: str) -> Any:
        from lexicon.config import ConfigResolver

        provider_options = dict(self._options)
        # Some providers (ddns) read the domain from their own section.
        provider_options.setdefault("domain", zone)
        config = ConfigResolver().with_dict(  # type: ignore[no-untyped-call]
            {
                "provider_name": self.provider_name,
                "domain": zone,
                "ttl": self.ttl,
                self.provider_name: provider_options,
            }
        )
        if self.use_env:
            config = config.with_env()
        return config

    def _redact(self, text: str) -> str:
        secrets = [v for v in self._options.values() if isinstance(v, str) and len(v) >= 4]
        if self.use_env:
            secrets += [
                v for k, v in os.environ.items() if k.startswith("LEXICON_") and len(v) >= 4
            ]
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return text

    def _call(self, action: str, zone: str, fqdn: str, act: Callable[[Any], object]) -> None:
        """Run one lexicon operation (in a thread)."""
        what = f"lexicon {self.provider_name}: {action} of TXT {fqdn} in zone {zone}"
        try:
            provider = self._provider_class(self._config(zone))
            provider.authenticate()
            try:
                result = act(provider)
            finally:
                provider.cleanup()
        except Exception as e:
            raise DNSUpdateError(self._redact(f"{what} failed: {type(e).__name__}: {e}"))
        if result is False:
            raise DNSUpdateError(f"{what} failed")

    def add_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        """Create the TXT record (lexicon leaves other values at the name)."""
        return self._run(
            lambda: self._call("add", zone, fqdn, lambda p: p.create_record("TXT", fqdn, value))
        )

    def remove_txt_record(self, zone: str, fqdn: str, value: str) -> Deferred[None]:
        """Delete the TXT record with this name and value only."""
        return self._run(
            lambda: self._call(
                "removal", zone, fqdn, lambda p: p.delete_record(None, "TXT", fqdn, value)
            )
        )


__all__ = ["LexiconProvider", "load_lexicon_provider_class"]
