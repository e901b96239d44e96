"""
Serving: TLS with the right certificate at every handshake.

* :mod:`txacme.serving.index`: the in-memory certificate index;
  :mod:`txacme.serving.watcher` reloads it from a store on a timer.
* :mod:`txacme.serving.tls`: the SNI + ALPN connection creator (``tls-alpn-01`` included).
* :mod:`txacme.serving.hello`: the ClientHello parser and the factory that holds a
  handshake while a hook works (on-demand issuance, a cluster's look-ups).
* :mod:`txacme.serving.cluster`: one node of a cluster sharing a coordinating store.
* :mod:`txacme.serving.endpoint`: :class:`~txacme.serving.endpoint.AutoTLSEndpoint`,
  all of the above behind one endpoint.

May import everything below it: the core modules, protocol, challenges, stores, issuing, reporting.
"""

__all__: list[str] = []
