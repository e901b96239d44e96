"""Sphinx configuration for txacme's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

project = "txacme"
author = "the txacme developers"
copyright = "the txacme developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
intersphinx_mapping: dict[str, tuple[str, None]] = {}
suppress_warnings = ["ref.python"]
