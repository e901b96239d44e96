"""txacme: certificates that obtain and renew themselves over ACME for Twisted."""

__version__ = "1.0.0.dev0"
