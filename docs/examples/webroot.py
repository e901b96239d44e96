"""
An ``http-01`` responder that writes into another web server's document root
(the example of docs/responders.rst).

The web server already on port 80 (nginx, Apache, a ``twistd web``) serves
``<webroot>/.well-known/acme-challenge/<token>`` as a static file; this
responder writes the file for the time of the validation.
"""

from __future__ import annotations

import os
from typing import Any

from zope.interface import implementer

from txacme.interfaces import IResponder


@implementer(IResponder)
class WebrootResponder:
    """
    Answers ``http-01`` by writing token files under ``webroot``.

    :param webroot: the document root of the web server on port 80.
    """

    challenge_type = "http-01"

    def __init__(self, webroot: str) -> None:
        self.directory = os.path.join(webroot, ".well-known", "acme-challenge")

    def _path(self, challenge: Any) -> str:
        token = challenge.encode("token")  # base64url: safe as a file name
        return os.path.join(self.directory, token)

    def start_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """Write the key authorization where the web server serves it."""
        os.makedirs(self.directory, exist_ok=True)
        path = self._path(challenge)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="ascii") as f:
            f.write(response.key_authorization)
        os.chmod(temporary, 0o644)  # the web server may run as another user
        os.replace(temporary, path)  # never serve half a file

    def stop_responding(self, server_name: str, challenge: Any, response: Any) -> None:
        """Remove the file again."""
        try:
            os.unlink(self._path(challenge))
        except FileNotFoundError:
            pass
