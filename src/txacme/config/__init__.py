"""Configuration from text: endpoint strings (``le:``, ``lets:``, ``acme:``) and DNS options.

The top layer beside :mod:`txacme.cli`: it may import anything in the library, and nothing
imports it but the plugin, the CLI and the seed's import paths.
"""

__all__: list[str] = []
