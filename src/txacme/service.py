"""The seed's import path for :class:`AcmeIssuingService` and its events.

The code lives in :mod:`txacme.issuing.service` and :mod:`txacme.issuing.events`.
"""

from txacme.issuing.events import (
    Emergency,
    Failed,
    Obtained,
    Obtaining,
    RenewalScheduled,
    ServiceEvent,
)
from txacme.issuing.service import AcmeIssuingService

__all__ = [
    "AcmeIssuingService",
    "Emergency",
    "Failed",
    "Obtained",
    "Obtaining",
    "RenewalScheduled",
    "ServiceEvent",
]
