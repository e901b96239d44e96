"""
The endpoint-string parser class behind ``le:``, ``lets:`` and ``acme:``; it
forwards to :mod:`txacme.config.endpoint`.

This module stays light on purpose: Twisted imports every plugin module whenever
it scans for endpoint parsers, so the heavy code (client, service, TLS) is only
imported by :meth:`ACMEServerParser.parseStreamServer`, the one import made
inside a function for that reason.

Under ``twistd`` (or ``twist``) a bad endpoint string ends the program with its
one-line error (``txacme: error: ...``, exit status 1) instead of a traceback;
elsewhere it raises :class:`~txacme.errors.ConfigurationError` as usual.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorTime,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ACMEServerParser:
    """
    Parse ``PREFIX:<certificate directory>:<sub-endpoint description>[:keyword=value...]``.

    :param prefix: the endpoint-string prefix, e.g. ``"le"``.
    :param directory_url: the CA's directory URL, or ``None`` when the string
        must give it with ``directory=`` (the ``acme:`` prefix).
    """

    def __init__(self, prefix: str, directory_url: str | None) -> None:
        self.prefix = prefix
        self.directory_url = directory_url

    def parseStreamServer(  # noqa: N802
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        """Build an :class:`txacme.serving.endpoint.AutoTLSEndpoint` from the parsed string."""
        from txacme.config.endpoint import endpoint_from_string_parts
        from txacme.config.hints import running_under_twistd
        from txacme.errors import ConfigurationError

        try:
            # Twisted hands every endpoint parser its full reactor.
            return endpoint_from_string_parts(
                cast(IReactorTime, reactor),
                self.prefix,
                self.directory_url,
                [str(a) for a in args],
                {k: str(v) for k, v in kwargs.items()},
            )
        except ConfigurationError as e:
            if running_under_twistd():
                # twistd would print a 35-line traceback around the one line that matters.
                raise SystemExit(f"txacme: error: {e}") from None
            raise

    def __repr__(self) -> str:
        return f"ACMEServerParser(prefix={self.prefix!r}, directory_url={self.directory_url!r})"


__all__ = ["ACMEServerParser"]
