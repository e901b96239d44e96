"""
A certificate store kept by a web service (the example of docs/stores.rst).

The service speaks a small REST protocol:

* ``GET {base}/certificates`` answers ``{"names": ["example.com", ...]}``;
* ``GET {base}/certificates/{name}`` answers the entry as PEM text (empty for
  a name that is wanted but has no certificate yet), or 404;
* ``PUT {base}/certificates/{name}`` replaces the entry with the PEM text sent.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pem
import treq
from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from txacme.certificates import validate_pem_objects
from txacme.interfaces import ICertificateStore
from txacme.names import normalize_server_name


class StoreUnavailable(Exception):
    """The web service answered something other than success or "not found"."""


@implementer(ICertificateStore)
class RESTStore:
    """
    Certificates kept by a web service.

    :param base_url: the service's root, e.g. ``"https://vault.internal/api"``.
    :param http: what sends requests: the ``treq`` module, a
        ``treq.client.HTTPClient``, or ``treq.testing.StubTreq`` in tests.
    :param headers: sent with every request (an ``Authorization`` header...).
    """

    def __init__(
        self, base_url: str, http: Any = treq, headers: dict[bytes, list[bytes]] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.headers = headers or {}

    def _url(self, name: str | None = None) -> str:
        url = f"{self.base_url}/certificates"
        return url if name is None else f"{url}/{quote(name, safe='')}"

    async def _check(self, response: Any, what: str) -> bytes:
        body: bytes = await treq.content(response)
        if not 200 <= response.code < 300:
            raise StoreUnavailable(f"{what}: HTTP {response.code}")
        return body

    def get(self, server_name: str) -> Deferred[list[pem.AbstractPEMObject]]:
        """The entry of ``server_name``; ``KeyError`` when the service has none."""
        return Deferred.fromCoroutine(self._get(server_name))

    async def _get(self, server_name: str) -> list[pem.AbstractPEMObject]:
        name = normalize_server_name(server_name)
        response = await self.http.get(self._url(name), headers=self.headers)
        if response.code == 404:
            await treq.content(response)
            raise KeyError(name)
        body = await self._check(response, f"GET {name}")
        return pem.parse(body)

    def store(self, server_name: str, pem_objects: object) -> Deferred[None]:
        """Replace the entry of ``server_name`` (key, certificate, chain)."""
        return Deferred.fromCoroutine(self._store(server_name, pem_objects))

    async def _store(self, server_name: str, pem_objects: object) -> None:
        name = normalize_server_name(server_name)
        objects = validate_pem_objects(pem_objects, name)  # refuse garbage before sending it
        data = b"".join(obj.as_bytes() for obj in objects)
        headers = {**self.headers, b"Content-Type": [b"application/x-pem-file"]}
        response = await self.http.put(self._url(name), data=data, headers=headers)
        await self._check(response, f"PUT {name}")

    def as_dict(self) -> Deferred[dict[str, list[pem.AbstractPEMObject]]]:
        """Every entry, by name."""
        return Deferred.fromCoroutine(self._as_dict())

    async def _as_dict(self) -> dict[str, list[pem.AbstractPEMObject]]:
        response = await self.http.get(self._url(), headers=self.headers)
        names = json.loads(await self._check(response, "GET certificates"))["names"]
        entries = await gatherResults([self.get(name) for name in names], consumeErrors=True)
        return dict(zip(names, entries, strict=True))
