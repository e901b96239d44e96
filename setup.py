"""Packaging for txacme: automatic TLS certificates for Twisted servers."""

from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="txacme",
    version="1.0.0.dev0",
    description="Certificates that obtain and renew themselves over ACME (RFC 8555) for Twisted",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    # The endpoint-string plugin lives in Twisted's plugin package, which has no
    # __init__.py of ours: Twisted finds it on every sys.path entry.
    package_dir={"": "src", "twisted.plugins": "twisted/plugins"},
    packages=find_packages("src") + ["twisted.plugins"],
    package_data={"txacme": ["py.typed"], "twisted": ["plugins/txacme_endpoints.py"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=[
        "twisted[tls]>=23.10",
        "treq>=23.11",
        "acme>=3.0",
        "josepy>=1.14",
        "cryptography>=42",
        "pyOpenSSL>=24.0",
        "pem>=23.1",
        "attrs>=23.1",
        "txsni>=0.2",
        "idna>=3",
    ],
    extras_require={
        "dns": ["dnspython>=2.6"],
        "lexicon": ["dns-lexicon>=3.17,<4", "dnspython>=2.6"],
        "metrics": ["prometheus-client>=0.20"],
        "postgres": ["psycopg[binary]>=3.2"],
        "all": [
            "dnspython>=2.6",
            "dns-lexicon>=3.17,<4",
            "prometheus-client>=0.20",
            "psycopg[binary]>=3.2",
        ],
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"],
        "dev": [
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
            "sphinx>=7",
            "towncrier>=23",
            # The layer contracts in .importlinter (sibling layers need 2.1).
            "import-linter>=2.1",
        ],
    },
    entry_points={"console_scripts": ["txacme = txacme.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Security :: Cryptography",
        "Typing :: Typed",
    ],
)
