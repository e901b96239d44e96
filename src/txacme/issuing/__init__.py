"""Issuing: the renewal policy, one order, the service that schedules them (its settings,
per-name tracking and events), locked issuance and on-demand decisions.

May import the core modules, :mod:`txacme.protocol`, :mod:`txacme.stores` and
:mod:`txacme.challenges`.
"""

__all__: list[str] = []
