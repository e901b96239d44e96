"""Serving: the in-memory certificate index, the SNI + ALPN connection creator, the ClientHello
hook,
the cluster node and :class:`~txacme.serving.endpoint.AutoTLSEndpoint`.

May import everything below it: the core modules, protocol, challenges, stores, issuing, reporting.
"""

__all__: list[str] = []
