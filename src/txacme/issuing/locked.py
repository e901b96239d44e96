"""
Issuing under a lock, for stores shared by several processes: at most one
process orders a name at a time, and a process that waited for the lock takes
the certificate another one just stored instead of ordering again.

May import the core modules, :mod:`txacme.stores` and the rest of :mod:`txacme.issuing`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import attrs
import pem
from twisted.internet.interfaces import IReactorTime

from txacme.issuing.order import IssuedCertificate
from txacme.logs import Logger
from txacme.stores.coordination import CoordinatingStore, Lease, run_locked

log = Logger()


@attrs.frozen
class StoredCertificate(IssuedCertificate):
    """
    An :class:`~txacme.issuing.order.IssuedCertificate` found in the store
    (another process stored it) instead of being ordered.
    """

    from_store: bool = True

    @classmethod
    def from_pem(cls, pem_objects: Sequence[pem.AbstractPEMObject]) -> StoredCertificate:
        """
        Build from a store entry (key, certificate, chain).

        :raises ValueError: when the entry holds no readable certificate or key.
        """
        return cls.from_pem_objects(pem_objects)


_I = TypeVar("_I", bound=IssuedCertificate)


async def coordinated_issue(
    store: CoordinatingStore,
    name: str,
    obtain: Callable[[], Awaitable[_I]],
    still_due: Callable[[list[pem.AbstractPEMObject]], bool],
    *,
    clock: IReactorTime,
    ttl: float | None = None,
    timeout: float | None = None,
) -> _I | StoredCertificate:
    """
    Issue ``name`` at most once across the cluster.

    Takes the lock of ``name``, reads the entry again and, when it holds a
    certificate for which ``still_due(pem_objects)`` is false (another process
    just renewed it), returns it as a :class:`StoredCertificate` without
    ordering. Otherwise runs ``obtain()`` (the order) and writes its
    ``pem_objects`` with
    :meth:`~txacme.stores.coordination.ICoordinatingStore.store_fenced`.

    :return: the issued certificate, or a :class:`StoredCertificate`.
    :raises txacme.stores.coordination.LockTimeout: when the lock stayed busy.
    :raises txacme.stores.coordination.LockLost: when the lease was lost (the
        certificate is not stored).
    """

    async def work(lease: Lease) -> _I | StoredCertificate:
        try:
            current = list(await store.get(name))
        except KeyError:
            current = []
        if current and not still_due(current):
            log.info(
                "another process stored a certificate for {name} meanwhile; not ordering",
                name=name,
                event="cluster_skipped",
            )
            return StoredCertificate.from_pem(current)
        issued = await obtain()
        await store.store_fenced(lease, list(issued.pem_objects))
        return issued

    return await run_locked(store, name, work, clock=clock, ttl=ttl, timeout=timeout)


__all__ = ["StoredCertificate", "coordinated_issue"]
