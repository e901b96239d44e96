"""The RFC 8555 protocol: the client (:mod:`~txacme.protocol.client`), its transport (nonces,
JWS, retries: :mod:`~txacme.protocol.transport`), the resources as values
(:mod:`~txacme.protocol.resources`), ARI (:mod:`~txacme.protocol.ari`) and directory URLs
(:mod:`~txacme.protocol.urls`).

Owns everything said to an ACME server and nothing about when or why. May import the core
modules (:mod:`txacme.errors`, :mod:`txacme.names`, :mod:`txacme.keys`, :mod:`txacme.formats`,
:mod:`txacme.certificates`) only. Importing the package imports none of its modules.
"""

__all__: list[str] = []
