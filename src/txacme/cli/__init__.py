"""The ``txacme`` command line for operators. The top layer: it may import anything in the
library."""

from txacme.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
