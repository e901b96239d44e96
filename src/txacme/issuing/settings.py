"""
What an :class:`~txacme.issuing.service.AcmeIssuingService` is built from: the
settings of its orders (:class:`IssuingSettings`) and of its schedule
(:class:`SchedulingSettings`), and the types of the objects and callbacks it is
given (the client it needs, :class:`ServiceClient`; the issuance function,
:class:`IssueFunction`).

The service also takes the same settings as keywords (``key_type=``,
``max_concurrent=``...; see :class:`ServiceOptions`); :func:`resolve_settings`
turns those into the settings objects, checking every value.

May import the core modules, :mod:`txacme.protocol` and the other issuing modules
below the service (:mod:`~txacme.issuing.policy`, :mod:`~txacme.issuing.order`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypedDict, cast

import attrs
import pem
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txacme.errors import ConfigurationError, UnsupportedKeyType
from txacme.interfaces import IResponder
from txacme.issuing.order import IssuedCertificate, obtain_certificate
from txacme.issuing.policy import RenewalSettings
from txacme.keys import DEFAULT_KEY_TYPE, KEY_TYPES, PrivateKey
from txacme.names import normalize_server_name
from txacme.protocol.client import Client

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "ClientCreator",
    "IssueFunction",
    "IssuingSettings",
    "KeyGenerator",
    "OrderOptions",
    "PanicCallback",
    "RenewalAnswer",
    "SchedulingSettings",
    "ServiceClient",
    "ServiceOptions",
    "StoredCallback",
    "default_issue",
    "renewal_settings",
    "resolve_settings",
]

DEFAULT_CHECK_INTERVAL = timedelta(hours=12)
"""How often the service checks the whole store by default."""


class RenewalAnswer(Protocol):
    """
    What the service reads of an ARI answer
    (:class:`txacme.protocol.client.RenewalInfo`): the suggested window and the
    seconds until it should be asked again (``None``: the default).
    """

    @property
    def start(self) -> datetime:
        """The start of the suggested renewal window."""

    @property
    def end(self) -> datetime:
        """The end of the suggested renewal window."""

    @property
    def retry_after(self) -> float | None:
        """Seconds until the window should be fetched again, if the CA said."""


class ServiceClient(Protocol):
    """
    The ACME client as the service uses it (:class:`txacme.protocol.client.Client`
    is one): it registers the account, answers renewal information, and is closed.
    The client is also handed to the :class:`IssueFunction`.
    """

    @property
    def supports_ari(self) -> bool:
        """Whether the CA offers renewal information (RFC 9773)."""

    def start(self, email: str | None = None) -> object:
        """Find or register the account (a ``Deferred`` or a value)."""

    def renewal_info(self, certificate: x509.Certificate, /) -> Awaitable[RenewalAnswer]:
        """The CA's renewal information for ``certificate``."""

    def close(self) -> object:
        """Release the client's connections (a ``Deferred`` or a value)."""


class OrderOptions(TypedDict, total=False):
    """The keywords the service gives the :class:`IssueFunction`: ``key`` or ``key_type``."""

    key: PrivateKey
    key_type: str
    profile: str | None
    replaces: str | None


class IssueFunction(Protocol):
    """
    Places one order: called as ``issue(client, names, responders, **options)``
    (:func:`txacme.issuing.order.obtain_certificate`'s arguments).
    """

    def __call__(
        self,
        client: ServiceClient,
        names: list[str],
        responders: list[IResponder],
        /,
        **options: Unpack[OrderOptions],
    ) -> Awaitable[IssuedCertificate] | IssuedCertificate:
        """Order a certificate for ``names``."""


ClientCreator = Callable[[], "Awaitable[ServiceClient] | ServiceClient"]
"""Makes a new client (or a ``Deferred`` of one)."""

KeyGenerator = Callable[[], PrivateKey]
"""Returns the private key of each new certificate."""

PanicCallback = Callable[[Failure, str], object]
"""``panic(failure, server_name)``: called for an emergency."""

StoredCallback = Callable[[str, list[pem.AbstractPEMObject]], object]
"""``on_stored(server_name, pem_objects)``: called after a certificate is stored."""


def default_issue(
    client: ServiceClient,
    names: list[str],
    responders: list[IResponder],
    /,
    **options: Unpack[OrderOptions],
) -> Deferred[IssuedCertificate]:
    """
    :func:`~txacme.issuing.order.obtain_certificate`, the default
    :class:`IssueFunction`; it needs a :class:`txacme.protocol.client.Client`.
    """
    return obtain_certificate(cast(Client, client), names, responders, **options)


def _key_type(instance: object, attribute: object, value: str | None) -> None:
    if value is not None and value not in KEY_TYPES:
        raise UnsupportedKeyType(
            f"unsupported key_type {value!r}; use one of: {', '.join(KEY_TYPES)}"
        )


def _normalize_names(names: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    result: dict[str, tuple[str, ...]] = {}
    for primary, extra in names.items():
        if isinstance(extra, str):
            raise ConfigurationError(f"names[{primary!r}] must be a list of names, not a string")
        key = normalize_server_name(primary)
        ordered = [key]
        for name in extra:
            canonical = normalize_server_name(name)
            if canonical not in ordered:
                ordered.append(canonical)
        result[key] = tuple(ordered)
    return result


@attrs.frozen
class IssuingSettings:
    """
    What each order asks for.

    :ivar key_type: the type of new certificate keys (``None``: ``"ec256"``);
        ignored when ``generate_key`` is given.
    :ivar generate_key: returns the private key of each new certificate.
    :ivar profile: the ACME profile to ask for, or ``None``.
    :ivar names: the names of each store entry that has more than its own, by
        primary name, in canonical form, primary first (given as any mapping
        of names to lists of names).
    :ivar issue: the issuance function (default :func:`default_issue`).
    """

    key_type: str | None = attrs.field(default=None, validator=_key_type)
    generate_key: KeyGenerator | None = None
    profile: str | None = None
    names: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, converter=_normalize_names)
    issue: IssueFunction = default_issue

    def identifiers(self, name: str) -> tuple[str, ...]:
        """The names ordered for the store entry ``name``, primary first."""
        return self.names.get(name, (name,))

    def order_options(self, replaces: str | None) -> OrderOptions:
        """The keywords of one order, with a new key when ``generate_key`` is set."""
        options: OrderOptions = {"profile": self.profile, "replaces": replaces}
        if self.generate_key is not None:
            options["key"] = self.generate_key()
        else:
            options["key_type"] = self.key_type or DEFAULT_KEY_TYPE
        return options


def _check_interval(value: timedelta | float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise ConfigurationError(f"check_interval must be positive, not {value!r}")
    return seconds


def _max_concurrent(instance: object, attribute: object, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_concurrent must be a positive integer, not {value!r}")


def renewal_settings(
    renewal_fraction: float = 1 / 3, emergency_fraction: float = 1 / 6
) -> RenewalSettings:
    """
    The lifetime rule of the service's ``renewal_fraction`` and
    ``emergency_fraction``: certificates living under 10 days are renewed when
    the larger of ``renewal_fraction`` and 1/2 remains.
    """
    return RenewalSettings(
        fraction=renewal_fraction,
        short_fraction=max(1 / 2, renewal_fraction),
        emergency_fraction=emergency_fraction,
    )


@attrs.frozen
class SchedulingSettings:
    """
    When the service checks and issues.

    :ivar check_interval: seconds between full checks of the store (given as
        a ``timedelta`` or seconds).
    :ivar max_concurrent: how many issuances run at once.
    :ivar renewal: the lifetime rule (see :func:`renewal_settings`).
    :ivar rng: randomness for backoff jitter.
    """

    check_interval: float = attrs.field(
        default=DEFAULT_CHECK_INTERVAL.total_seconds(), converter=_check_interval
    )
    max_concurrent: int = attrs.field(default=5, validator=_max_concurrent)
    renewal: RenewalSettings = attrs.field(factory=renewal_settings)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)


class ServiceOptions(TypedDict, total=False):
    """
    The settings :class:`~txacme.issuing.service.AcmeIssuingService` also takes
    as keywords (instead of ``issuing=`` and ``scheduling=``).
    """

    key_type: str | None
    profile: str | None
    names: Mapping[str, Sequence[str]] | None
    issue: IssueFunction | None
    max_concurrent: int
    renewal_fraction: float
    emergency_fraction: float
    rng: random.Random | None


_ISSUING_KEYWORDS = ("key_type", "profile", "names", "issue")
_SCHEDULING_KEYWORDS = ("max_concurrent", "renewal_fraction", "emergency_fraction", "rng")


def _conflict(group: str, given: Sequence[str]) -> ConfigurationError:
    return ConfigurationError(f"give {', '.join(given)} in {group}= or as keywords, not both")


def _issuing(
    issuing: IssuingSettings | None,
    generate_key: KeyGenerator | None,
    options: ServiceOptions,
) -> IssuingSettings:
    given = [k for k in _ISSUING_KEYWORDS if k in options]
    if issuing is not None:
        if given or generate_key is not None:
            raise _conflict("issuing", [*given, *(["generate_key"] if generate_key else [])])
        return issuing
    return IssuingSettings(
        key_type=options.get("key_type"),
        generate_key=generate_key,
        profile=options.get("profile"),
        names=options.get("names") or {},
        issue=options.get("issue") or default_issue,
    )


def _scheduling(
    scheduling: SchedulingSettings | None,
    check_interval: timedelta | float | None,
    options: ServiceOptions,
) -> SchedulingSettings:
    given = [k for k in _SCHEDULING_KEYWORDS if k in options]
    if scheduling is not None:
        if given or check_interval is not None:
            extra = ["check_interval"] if check_interval is not None else []
            raise _conflict("scheduling", [*given, *extra])
        return scheduling
    interval = DEFAULT_CHECK_INTERVAL if check_interval is None else check_interval
    rng = options.get("rng")
    return SchedulingSettings(
        check_interval=interval,
        max_concurrent=options.get("max_concurrent", 5),
        renewal=renewal_settings(
            options.get("renewal_fraction", 1 / 3), options.get("emergency_fraction", 1 / 6)
        ),
        rng=rng if rng is not None else random.Random(),
    )


def resolve_settings(
    issuing: IssuingSettings | None,
    scheduling: SchedulingSettings | None,
    *,
    check_interval: timedelta | float | None = None,
    generate_key: KeyGenerator | None = None,
    **options: Unpack[ServiceOptions],
) -> tuple[IssuingSettings, SchedulingSettings]:
    """
    The settings of a service given settings objects or keywords (not both for
    the same group).

    :raises txacme.errors.ConfigurationError: for a bad value or a setting given twice.
    """
    resolved_issuing = _issuing(issuing, generate_key, options)
    return resolved_issuing, _scheduling(scheduling, check_interval, options)
