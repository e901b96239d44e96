"""Suite-wide test set-up."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _work_in_temporary_directory() -> Iterator[None]:
    """
    Run the suite from a throw-away directory.

    trial's ``TestCase.mktemp()`` creates directories relative to the current
    directory; this keeps them out of the source tree.
    """
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="txacme-tests-") as directory:
        os.chdir(directory)
        try:
            yield
        finally:
            os.chdir(previous)
