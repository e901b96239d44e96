"""
Packaging for txacme: the metadata is in pyproject.toml.

Only the package layout stays here: the endpoint-string plugin lives in Twisted's plugin package,
which has no ``__init__.py`` of ours (Twisted finds ``twisted/plugins`` on every sys.path entry), so
it is mapped by hand next to the packages found under ``src``.
"""

from setuptools import find_packages, setup

setup(
    package_dir={"": "src", "twisted.plugins": "twisted/plugins"},
    packages=find_packages("src") + ["twisted.plugins"],
)
