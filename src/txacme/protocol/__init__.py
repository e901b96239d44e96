"""The RFC 8555 protocol: the client, its transport (nonces, JWS, retries), resources, ARI,
directory URLs.

Owns everything said to an ACME server and nothing about when or why. May import the core modules
(:mod:`txacme.errors`, :mod:`txacme.names`, :mod:`txacme.keys`, :mod:`txacme.certificates`) only.
"""

__all__: list[str] = []
