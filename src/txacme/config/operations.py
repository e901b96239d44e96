"""
What an endpoint string adds to the issuing service for the operator: the
deploy hook (``deploy_hook=``, ``deploy_hook_timeout=``), the record of the
issuing CA (:mod:`txacme.issuing.provenance`) and ``preferred_chain=``.

Configuration layer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Protocol

from txacme.interfaces import ICertificateStore
from txacme.issuing.events import ServiceEvent
from txacme.issuing.hooks import DeployHook
from txacme.issuing.order import obtain_certificate
from txacme.issuing.provenance import IssuerRecords
from txacme.stores.directory import DirectoryStore


class OperationsConfig(Protocol):
    """
    What :func:`operations` reads of an endpoint's configuration
    (:class:`txacme.config.endpoint.EndpointConfig` has it).
    """

    @property
    def cert_dir(self) -> str:
        """The certificate directory (where the issuer record is kept)."""
        ...

    @property
    def directory_url(self) -> str:
        """The configured CA's directory URL."""
        ...

    @property
    def preferred_chain(self) -> str | None:
        """``preferred_chain=``, or ``None``."""
        ...

    @property
    def deploy_hook(self) -> tuple[str, ...] | None:
        """``deploy_hook=`` as a command line split into words, or ``None``."""
        ...

    @property
    def deploy_hook_timeout(self) -> float:
        """``deploy_hook_timeout=``, in seconds."""
        ...


__all__ = ["OperationsConfig", "operations"]


def pem_path_of(store: ICertificateStore) -> Callable[[str], str | None] | None:
    """``TXACME_PEM`` for a directory store: ``<directory>/<name>.pem``; else ``None``."""
    if not isinstance(store, DirectoryStore):
        return None
    directory = store.path.path
    return lambda name: os.path.join(directory, name + ".pem")


def operations(
    reactor: Any, config: OperationsConfig, store: ICertificateStore
) -> tuple[dict[str, Any], list[Callable[[ServiceEvent], object]]]:
    """The issuing service's extra keyword arguments and event subscribers for ``config``."""
    options: dict[str, Any] = {
        "issuer_records": IssuerRecords.in_directory(config.cert_dir, config.directory_url)
    }
    if config.preferred_chain is not None:
        options["issue"] = functools.partial(
            obtain_certificate, preferred_chain=config.preferred_chain
        )
    subscribers: list[Callable[[ServiceEvent], object]] = []
    if config.deploy_hook is not None:
        hook = DeployHook(
            reactor,
            config.deploy_hook,
            timeout=config.deploy_hook_timeout,
            pem_path=pem_path_of(store),
        )
        subscribers.append(hook.subscriber)
    return options, subscribers
