"""The seed's import path for well-known ACME directory URLs (:mod:`txacme.protocol.urls`)."""

from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY

__all__ = ["LETSENCRYPT_DIRECTORY", "LETSENCRYPT_STAGING_DIRECTORY"]
