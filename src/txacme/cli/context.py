"""
What every ``txacme`` command works with (:class:`Command`): the certificate
directory, its store and state file, the account key, the ACME client, the
challenge listeners, and the UI; everything it opens is closed when the
command ends.

May import anything in the library (the command line is the top layer).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import cast

import attrs
import pem
from josepy.jwk import JWK
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from zope.interface import implementer

from txacme import errors
from txacme.cli.failures import CommandFailed, UsageError, describe, exit_code
from txacme.cli.options import (
    ACCOUNT_KEY_FILE,
    CAOptions,
    ca_options,
    endpoint_description,
    server_names,
)
from txacme.cli.ui import UI
from txacme.config.responders import (
    DNS_01,
    DNS_PERSIST_01,
    HTTP_01,
    TLS_ALPN_01,
    ChallengeResponders,
    challenge_responders,
)
from txacme.interfaces import ClosableStore, EntryStore, ICertificateStore, IResponder
from txacme.keys import KEY_TYPES, generate_private_key, jwk_for, load_or_create_client_key
from txacme.logs import Logger
from txacme.protocol.client import Client
from txacme.reporting.state import StateFile
from txacme.stores.directory import DirectoryStore
from txacme.stores.url import redact_url, store_from_url

__all__ = ["Command", "Entries", "Entry", "open_store"]

log = Logger()

Entry = list[pem.AbstractPEMObject] | errors.ConfigurationError
"""A store entry, or why its file is damaged."""

Entries = dict[str, Entry]
"""Entries by name."""


class Command:
    """
    What every command needs: the directory, its store and state, the UI.

    :param reactor: the reactor everything the command opens runs on.
    """

    def __init__(self, reactor: IReactorTime, args: argparse.Namespace, ui: UI) -> None:
        self.reactor = reactor
        self.args = args
        self.ui = ui
        cert_dir = args.cert_dir
        if not cert_dir:
            raise UsageError("give the certificate directory: --cert-dir DIR (or $TXACME_CERT_DIR)")
        if not os.path.isdir(cert_dir):
            raise UsageError(f"--cert-dir {cert_dir!r}: not an existing directory")
        self.cert_dir: str = cert_dir
        self.state = StateFile.for_directory(cert_dir)
        self.key_path = os.path.join(cert_dir, ACCOUNT_KEY_FILE)
        self.ca: CAOptions = ca_options(args)
        self._clients: list[Client] = []
        self._stoppers: list[Callable[[], object]] = []
        # Last: nothing after this may fail, or the store would not be closed.
        self.store, self.where = open_store(reactor, args, cert_dir)

    def now(self) -> datetime:
        """The reactor's time, in UTC."""
        return datetime.fromtimestamp(self.reactor.seconds(), tz=timezone.utc)

    # -- the client ----------------------------------------------------------------

    def account_key(self, *, create: bool, key_type: str = "ec256") -> JWK:
        """The account key as a JWK: ``client.key``, created when asked to."""
        if create or os.path.exists(self.key_path):
            return load_or_create_client_key(self.key_path, key_type)
        return jwk_for(generate_private_key())  # throw-away: nothing is signed with it

    async def client(self, key: JWK) -> Client:
        """A client for the chosen CA (closed when the command ends)."""
        url = self.ca.require()
        self.ui.step("CA", f"fetching {url}")
        try:
            client = await Client.from_url(
                self.reactor, url, key, ca_file=self.ca.ca_file, timeout=self.ca.timeout
            )
        except errors.ConfigurationError:
            raise
        except Exception as e:
            raise CommandFailed(f"cannot use the ACME directory {url}: {describe(e)}", exit_code(e))
        finally:
            self.ui.done("CA")
        self._clients.append(client)
        return client

    async def existing_account(self) -> Client:
        """
        A client for the account of ``client.key``, looked up at the CA.

        :raises CommandFailed: when there is no key, or the CA knows no account for it.
        """
        if not os.path.exists(self.key_path):
            raise CommandFailed(
                f"no account key {self.key_path}: create the account with `txacme account create`"
            )
        client = await self.client(self.account_key(create=False))
        self.ui.step("account", "looking the account up")
        try:
            await client.lookup_account()
        except errors.AccountDoesNotExist:
            raise CommandFailed(
                f"the CA knows no account for {self.key_path}: "
                "create it with `txacme account create`"
            )
        finally:
            self.ui.done("account")
        return client

    async def close(self) -> None:
        """Stop the listeners, close the clients and the store."""
        for stop in reversed(self._stoppers):
            try:
                await maybeDeferred(stop)
            except Exception:
                log.failure("stopping a challenge listener")
        self._stoppers.clear()
        for client in self._clients:
            try:
                await client.close()
            except Exception:
                log.failure("closing the ACME client")
        self._clients.clear()
        if isinstance(self.store, ClosableStore):
            try:
                await maybeDeferred(self.store.close)
            except Exception:
                log.failure("closing the certificate store")

    # -- entries -------------------------------------------------------------------

    async def entries(self) -> Entries:
        """
        Every entry of the store, by name. In a directory, damaged files give
        the error instead of being left out (``status`` shows them); other
        stores log and leave out damaged entries.
        """
        if not isinstance(self.store, DirectoryStore):
            return await self._store_entries()
        return dict(self.store.scan())

    async def _store_entries(self) -> Entries:
        try:
            found = await self.entry_store.as_dict()
        except errors.ConfigurationError as e:
            raise CommandFailed(f"cannot read the store {self.where}: {e}")
        except Exception as e:
            raise CommandFailed(f"cannot read the store {self.where}: {describe(e)}")
        return {name: list(found[name]) for name in sorted(found)}

    @property
    def entry_store(self) -> EntryStore:
        """The store, with the result types :class:`~txacme.interfaces.ICertificateStore`
        documents."""
        return cast(EntryStore, self.store)

    async def selected(self, names: Sequence[str]) -> Entries:
        """The entries of ``names`` (all when empty); an unknown name is a usage error."""
        wanted = server_names(names)
        entries = await self.entries()
        if not wanted:
            return entries
        unknown = [n for n in wanted if n not in entries]
        if unknown:
            entry = f"{unknown[0]}.pem" if isinstance(self.store, DirectoryStore) else "for it"
            raise UsageError(f"NAME {unknown[0]!r}: no entry {entry} in {self.where}")
        return {n: entries[n] for n in wanted}

    # -- responders ----------------------------------------------------------------

    def _check_challenge_options(self) -> None:
        args = self.args
        persist_check = args.dns_challenge == DNS_PERSIST_01
        if not (args.http01 or args.tls_alpn or args.dns or persist_check):
            raise UsageError(
                "say how to answer challenges: --http01 tcp:80, --tls-alpn tcp:443 "
                "or --dns PROVIDER"
            )
        if args.dns_option and not (args.dns or persist_check):
            raise UsageError("--dns-option needs --dns PROVIDER")
        if args.key_type not in KEY_TYPES:
            raise UsageError(f"--key-type {args.key_type!r}: use one of {', '.join(KEY_TYPES)}")
        if args.concurrency < 1:
            raise UsageError(f"--concurrency {args.concurrency}: must be at least 1")

    def _challenge_responders(self) -> ChallengeResponders:
        """The responders the options ask for (the shared wiring of txacme.config)."""
        args = self.args
        options: dict[str, str] = {}
        if args.dns or args.dns_challenge == DNS_PERSIST_01:
            if args.dns:
                options["dns"] = args.dns
            for item in args.dns_option:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise UsageError(f"--dns-option {item!r}: expected KEY=VALUE")
                options[key.strip()] = value
        dns_kind = args.dns_challenge or DNS_01
        asked = (
            (dns_kind, args.dns or dns_kind == DNS_PERSIST_01),
            (HTTP_01, args.http01),
            (TLS_ALPN_01, args.tls_alpn),
        )
        wanted = [kind for kind, given in asked if given]
        try:
            return challenge_responders(wanted, dns_options=options, clock=self.reactor)
        except errors.ConfigurationError as e:
            raise UsageError(f"--dns {args.dns}: {e}")

    def _listeners(
        self, built: ChallengeResponders
    ) -> list[tuple[str, str, IProtocolFactory, IResponder]]:
        """The challenge listeners asked for: option, description, factory, responder."""
        args = self.args
        listeners: list[tuple[str, str, IProtocolFactory, IResponder]] = []
        for option, kind, text in (
            ("--http01", HTTP_01, args.http01),
            ("--tls-alpn", TLS_ALPN_01, args.tls_alpn),
        ):
            responder = built.responder(kind)
            if text and responder is not None:
                listeners.append(
                    (
                        option,
                        endpoint_description(option, text),
                        built.listener_factory(kind),
                        responder,
                    )
                )
        return listeners

    async def responders(self) -> list[IResponder]:
        """Start the challenge listeners the options ask for; their responders."""
        self._check_challenge_options()
        built = self._challenge_responders()
        responders: list[IResponder] = built.dns_responders()
        endpoints = []
        for option, description, factory, responder in self._listeners(built):
            try:
                endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
            except (ValueError, TypeError, KeyError) as e:
                raise UsageError(f"{option} {description!r}: not an endpoint description ({e})")
            endpoints.append((option, description, endpoint, factory, responder))
        for option, description, endpoint, factory, responder in endpoints:
            try:
                port = await endpoint.listen(factory)
            except CannotListenError as e:
                raise CommandFailed(f"{option} {description}: cannot listen ({e.socketError})")
            self._stoppers.append(port.stopListening)
            responders.append(responder)
        return [ProgressResponder(r, self.ui) for r in responders]


def open_store(
    reactor: IReactorTime, args: argparse.Namespace, cert_dir: str
) -> tuple[ICertificateStore, str]:
    """The store the options name (default: the directory) and how to name it to the user."""
    url = getattr(args, "store", None)
    key_file = getattr(args, "store_key_file", None)
    if not url:
        if key_file:
            raise UsageError(
                f"--store-key-file {key_file!r} (or $TXACME_STORE_KEY_FILE) needs --store URL"
            )
        return DirectoryStore(cert_dir), cert_dir
    shown = redact_url(url)
    try:
        store = store_from_url(url, reactor=reactor, **({"key_file": key_file} if key_file else {}))
    except errors.ConfigurationError as e:
        reason = str(e)
        if shown in reason:
            raise UsageError(f"--store: {reason}")
        raise UsageError(f"--store {shown!r}: {reason}")
    if isinstance(store, DirectoryStore):
        return store, store.path.path
    return store, shown


@implementer(IResponder)
@attrs.define
class ProgressResponder:
    """Wraps a responder to show the validation step."""

    inner: IResponder
    ui: UI

    @property
    def challenge_type(self) -> str:
        """The wrapped responder's challenge type."""
        return str(self.inner.challenge_type)

    def start_responding(
        self,
        server_name: str,
        challenge: object,
        response: object,
    ) -> object:
        """Start the wrapped responder and show it."""
        self.ui.step(server_name, f"answering {self.challenge_type}")
        return self.inner.start_responding(server_name, challenge, response)

    def stop_responding(
        self,
        server_name: str,
        challenge: object,
        response: object,
    ) -> object:
        """Stop the wrapped responder."""
        self.ui.step(server_name, "finishing")
        return self.inner.stop_responding(server_name, challenge, response)
