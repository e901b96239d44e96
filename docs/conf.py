"""Sphinx configuration for txacme's documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "_ext")))

project = "txacme"
author = "the txacme developers"
copyright = "the txacme developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "txacme_sphinx",
]
autodoc_member_order = "bysource"
# The zope-interface documenter (docs/_ext/txacme_sphinx.py) plugs into the class-based autodoc.
autodoc_use_legacy_class_based = True
autodoc_typehints = "description"
nitpicky = False
# Projects whose documentation no Debian package ships (so no offline
# inventory): their names stay unlinked. Type variables are not documented.
nitpick_ignore_regex = [
    (r"py:.*", r"(pem|josepy|acme|OpenSSL|SSL|messages|prometheus_client)(\..*)?"),
    (r"py:.*", r"(JWK|JWASignature|CollectorRegistry|TypeIs|PrivateKeyTypes)"),
    # Type aliases used in annotations, and a stdlib enum Python's inventory lacks.
    (r"py:.*", r"(EntrySource|OnChange|StoreEntries|socket\.AddressFamily)"),
    # The type variables of txacme.issuing.ondemand.LRUCache.
    (r"py:class", r"txacme\.issuing\.ondemand\.[KV]"),
    (r"py:.*", r"cryptography\.hazmat\.primitives\.asymmetric\.(mlkem|mldsa)\..*"),
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*"),
    # twisted.logger's LogLevel and ILogObserver, named by their private modules.
    (r"py:.*", r"(twisted\.logger\._\w+\.)?(LogLevel|ILogObserver)"),
]
exclude_patterns = ["_build"]
html_theme = "alabaster"

# Other projects' object inventories, read from the documentation packages
# scripts/test installs (python3-doc, twisted-doc, python-cryptography-doc,
# python-treq-doc), so the build needs no network. A missing one is skipped.
_INVENTORIES = {
    "python": ("https://docs.python.org/3", "/usr/share/doc/python3.11/html/objects.inv"),
    "twisted": (
        "https://docs.twisted.org/en/stable/api",
        "/usr/share/doc/twisted-doc/html/api/objects.inv",
    ),
    "cryptography": (
        "https://cryptography.io/en/latest",
        "/usr/share/doc/python-cryptography-doc/html/objects.inv",
    ),
    "treq": (
        "https://treq.readthedocs.io/en/latest",
        "/usr/share/doc/python-treq-doc/html/objects.inv",
    ),
}
intersphinx_mapping = {
    name: (url, inventory)
    for name, (url, inventory) in _INVENTORIES.items()
    if os.path.exists(inventory)
}
suppress_warnings = ["ref.python"]
