"""The seed's import path for the endpoint: :class:`AutoTLSEndpoint` and the endpoint-string
functions.

The code lives in :mod:`txacme.serving.endpoint` and :mod:`txacme.config.endpoint`.
"""

from txacme.config.endpoint import (
    EndpointConfig,
    endpoint_from_config,
    endpoint_from_string_parts,
    parse_endpoint_string_parts,
)
from txacme.serving.endpoint import AutoTLSEndpoint, AutoTLSPort

__all__ = [
    "AutoTLSEndpoint",
    "AutoTLSPort",
    "EndpointConfig",
    "endpoint_from_config",
    "endpoint_from_string_parts",
    "parse_endpoint_string_parts",
]
