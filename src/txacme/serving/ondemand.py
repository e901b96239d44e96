"""
On-demand issuance wired into the automatic endpoint: the
:class:`~txacme.issuing.ondemand.OnDemandIssuer` with what it needs to remove
idle names from the store and the index, and to leave no trace of failed
names in the state file and the metrics.

May import the core modules, stores, issuing and reporting.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime

from txacme.interfaces import ICertificateStore
from txacme.issuing.ondemand import REGISTRY_FILENAME, Issued, OnDemandIssuer, OnDemandPolicy
from txacme.issuing.refusals import RefusalLog
from txacme.reporting.metrics import Metrics
from txacme.reporting.state import StateRecorder
from txacme.serving.index import CertificateIndex
from txacme.stores.coordination import provides_coordination
from txacme.stores.directory import PEM_SUFFIX, DirectoryStore


def store_remover(
    store: ICertificateStore, index: CertificateIndex
) -> Callable[[str], Deferred[object]]:
    """
    ``remove(name)``: stop serving ``name`` and take it out of ``store`` (its
    ``remove`` method, or the ``<name>.pem`` file of a directory store), so
    that it is not renewed.
    """

    def remove(name: str) -> Deferred[object]:
        index.remove(name)
        removing = getattr(store, "remove", None)
        if callable(removing):
            return maybeDeferred(removing, name)
        if isinstance(store, DirectoryStore):
            try:
                os.unlink(store.path.child(name + PEM_SUFFIX).path)
            except FileNotFoundError:
                pass
        return succeed(None)

    return remove


def make_on_demand_issuer(
    policy: OnDemandPolicy,
    issue: Callable[[str], Awaitable[Issued]],
    index: CertificateIndex,
    store: ICertificateStore,
    *,
    options: Mapping[str, Any],
    refusals: RefusalLog,
    metrics: Metrics | None,
    state: StateRecorder | None,
    clock: IReactorTime,
) -> OnDemandIssuer:
    """
    The issuer of an endpoint; ``options`` are keyword arguments of
    :class:`~txacme.issuing.ondemand.OnDemandIssuer` (``rate``, ``max_names``,
    ``idle``, ``registry``...). A directory store keeps its registry of
    on-demand names in :data:`~txacme.issuing.ondemand.REGISTRY_FILENAME`
    unless ``registry`` is given. With a store shared by several processes
    (:func:`~txacme.stores.coordination.provides_coordination`) idle names
    are forgotten by this process but not removed from the store: one
    process does not see the handshakes the others serve; and the names
    held are kept in memory only (no registry file written by several
    processes).
    """
    arguments = dict(options)
    shared = provides_coordination(store)
    if "registry" not in arguments and isinstance(store, DirectoryStore) and not shared:
        arguments["registry"] = store.path.child(REGISTRY_FILENAME).path
    forget: list[Callable[[str], object]] = []
    if metrics is not None:
        forget.append(metrics.forget)
    if state is not None:
        forget.append(state.forget)
    # A store shared by several processes: one process does not see the
    # handshakes of the others, so it never removes a shared entry as idle.
    remove = None if shared else store_remover(store, index)
    return OnDemandIssuer(
        policy,
        issue,
        index,
        remove=remove,
        forget=forget,
        refusals=refusals,
        clock=clock,
        **arguments,
    )


__all__ = ["make_on_demand_issuer", "store_remover"]
