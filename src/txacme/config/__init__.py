"""Configuration from text: endpoint strings (``le:``, ``lets:``, ``acme:``) and DNS options.

* :mod:`txacme.config.plugin`: the parser class Twisted's plugin system finds (kept light).
* :mod:`txacme.config.endpoint`: endpoint strings checked and typed, and the endpoint built
  from them.
* :mod:`txacme.config.dns`: the ``dns=...`` options and the ``dns-01`` responder built from them.
* :mod:`txacme.config.responders`: the responders a configuration asks for, for the endpoint
  and the ``txacme`` command.

The top layer beside :mod:`txacme.cli`: it may import anything in the library, and nothing
imports it but the plugin, the CLI and the seed's import paths.
"""

__all__: list[str] = []
