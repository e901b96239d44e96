"""
The extension points of txacme: certificate stores and challenge responders.

The zope interfaces say what every store and responder does; the
:class:`typing.Protocol` classes below them name the optional capabilities a
store may add, so callers test for them by type rather than by ``getattr``.

Core: imports nothing of txacme.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    import pem
    from twisted.internet.defer import Deferred


class ICertificateStore(Interface):
    """
    A place where certificates (with their keys and chains) are kept, by server name.

    Every method returns a ``Deferred``. The PEM objects of one server name are a
    list of :mod:`pem` objects: the private key, the certificate, then the chain.
    An empty list means "this name should have a certificate, but has none yet".
    """

    def get(server_name: str) -> object:
        """
        Fetch the PEM objects stored for ``server_name``.

        :return: ``Deferred`` firing with ``list[pem.AbstractPEMObject]``, or
            failing with ``KeyError`` when the store does not know the name.
        """

    def store(server_name: str, pem_objects: object) -> object:
        """
        Store the PEM objects (key, certificate, chain) for ``server_name``.

        Implementations replace the previous entry atomically: a reader sees the
        old objects or the new ones, never a mix or a partial write.

        :return: ``Deferred`` firing with ``None`` when the objects are stored.
        """

    def as_dict() -> object:
        """
        Fetch every entry.

        :return: ``Deferred`` firing with ``dict[str, list[pem.AbstractPEMObject]]``.
        """


class IResponder(Interface):
    """
    Answers one ACME challenge type, for example by serving an HTTP resource.
    """

    challenge_type = Attribute(
        "The ACME challenge type this responder answers, e.g. ``'http-01'``."
    )

    def start_responding(server_name: str, challenge: object, response: object) -> object:
        """
        Start answering ``challenge`` for ``server_name``.

        :param server_name: the identifier being validated (a DNS name without any
            ``*.`` prefix, or an IP address).
        :param challenge: the ``acme.challenges.Challenge`` offered by the CA.
        :param response: the ``acme.challenges.KeyAuthorizationChallengeResponse``
            carrying the key authorization.
        :return: ``None`` or a ``Deferred`` that fires when the CA can validate.
        """

    def stop_responding(server_name: str, challenge: object, response: object) -> object:
        """
        Stop answering a challenge started by :meth:`start_responding`.

        :return: ``None`` or a ``Deferred`` that fires when cleaned up.
        """


class EntryStore(Protocol):
    """
    The methods of :class:`~txacme.interfaces.ICertificateStore` with the result
    types its documentation gives, for type checkers.
    """

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """See :meth:`~txacme.interfaces.ICertificateStore.get`."""

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """See :meth:`~txacme.interfaces.ICertificateStore.store`."""

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """See :meth:`~txacme.interfaces.ICertificateStore.as_dict`."""


@runtime_checkable
class WantedStore(Protocol):
    """A store that records a name as wanted (an empty entry) before it has a certificate."""

    def mark_wanted(self, server_name: str) -> Deferred[bool]:
        """Record ``server_name`` as wanted; whether it was new."""


@runtime_checkable
class ClosableStore(Protocol):
    """
    A store holding resources (connections, threads) that its owner releases by
    calling :meth:`close` when it is done with it.
    """

    def close(self) -> Deferred[None] | None:
        """Release the store's resources; it is not used afterwards."""


@runtime_checkable
class DefaultCertificateStore(Protocol):
    """
    A store that also keeps a default certificate, served to clients that send
    no server name or one the store has no certificate for.
    """

    def get_default(self) -> Deferred[list[pem.AbstractPEMObject]]:
        """
        The default entry's PEM objects; fails with ``KeyError`` when there is none.
        """


__all__ = [
    "ClosableStore",
    "DefaultCertificateStore",
    "EntryStore",
    "ICertificateStore",
    "IResponder",
    "WantedStore",
]
