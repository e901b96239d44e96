"""What the running service reports: Prometheus metrics, the per-name state file and the
status page (``metrics``, ``state``, ``statuspage``).

Observers of the issuing service's events (:mod:`txacme.issuing.events`); may import the core
modules, protocol, stores and issuing.
"""

__all__: list[str] = []
