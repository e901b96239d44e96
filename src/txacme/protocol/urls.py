"""Directory URLs of well-known ACME certificate authorities."""

from __future__ import annotations

LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
"""Let's Encrypt production (the ``le:`` endpoint prefix)."""

LETSENCRYPT_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
"""Let's Encrypt staging: untrusted certificates, generous rate limits (``lets:``)."""

__all__ = ["LETSENCRYPT_DIRECTORY", "LETSENCRYPT_STAGING_DIRECTORY"]
