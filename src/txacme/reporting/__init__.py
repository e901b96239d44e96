"""What the running service reports: Prometheus metrics and the per-name state file.

Observers of the issuing service's events; may import the core modules, stores and issuing.
"""

__all__: list[str] = []
