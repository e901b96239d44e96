"""txacme's endpoint-string parsers: ``le:``, ``lets:`` and ``acme:``."""

from txacme.config.plugin import ACMEServerParser
from txacme.protocol.urls import LETSENCRYPT_DIRECTORY, LETSENCRYPT_STAGING_DIRECTORY

le = ACMEServerParser("le", LETSENCRYPT_DIRECTORY)
lets = ACMEServerParser("lets", LETSENCRYPT_STAGING_DIRECTORY)
acme = ACMEServerParser("acme", None)
