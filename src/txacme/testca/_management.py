"""
The management resource ``/testca/<action>``: the public control API of
:class:`~txacme.testca.TestCA` (roots, clock, faults, renewal windows,
certificate status, settings, recorded requests) over plain JSON, for
:class:`~txacme.testca.TestCAProcess`, which runs the CA in a child process. It
is served on the CA's loopback port without authentication, and its requests
are neither recorded nor faulted.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from twisted.web.server import Request

from txacme.testca import _jws
from txacme.testca._base import MAX_BODY, CABase
from txacme.testca._model import Reply, parse_time, rfc3339
from txacme.testca._problems import Problem


class ManagementMixin(CABase):
    """The management handler of :class:`~txacme.testca.TestCA`."""

    if TYPE_CHECKING:
        # The rest of TestCA's public control API this handler fronts; for the type checker only.

        @property
        def root_pem(self) -> bytes: ...

        @property
        def root_pems(self) -> list[bytes]: ...

        @property
        def intermediate_pem(self) -> bytes: ...

        def advance(self, amount: float | datetime.timedelta) -> None: ...

        def fail_next(
            self,
            problem_type: str,
            detail: str = ...,
            *,
            endpoint: str | None = ...,
            status: int | None = ...,
            retry_after: int | None = ...,
            count: int = ...,
        ) -> None: ...

        def delay_next(
            self, seconds: float, *, endpoint: str | None = ..., count: int = ...
        ) -> None: ...

        def set_renewal_window(
            self,
            cert: x509.Certificate | bytes | str,
            start: datetime.datetime,
            end: datetime.datetime,
            explanation_url: str | None = ...,
        ) -> None: ...

    def _management(self, request: Request, action: str) -> Reply:
        if request.method == b"GET":
            if action == "root":
                return Reply(200, self.root_pem, "application/x-pem-file")
            if action == "roots":
                return Reply(200, b"".join(self.root_pems), "application/x-pem-file")
            if action == "intermediate":
                return Reply(200, self.intermediate_pem, "application/x-pem-file")
            if action == "now":
                return Reply.json(200, {"now": rfc3339(self.now())})
            if action == "requests":
                return Reply.json(200, [attrs.asdict(r) for r in self.requests])
            raise Problem("malformed", f"no management resource {action!r}", status=404)
        if request.method != b"POST":
            raise Problem("malformed", "use GET or POST", status=405)
        assert request.content is not None
        body = _jws.json_object(request.content.read(MAX_BODY), "management request")
        try:
            return self._manage(action, body)
        except (KeyError, ValueError, TypeError) as e:
            raise Problem("malformed", f"bad management request: {e!r}")

    def _manage(self, action: str, body: dict[str, Any]) -> Reply:
        if action == "advance":
            self.advance(float(body["seconds"]))
        elif action == "fail-next":
            self.fail_next(
                str(body["type"]),
                str(body.get("detail", "injected by TestCA.fail_next")),
                endpoint=body.get("endpoint"),
                status=body.get("status"),
                retry_after=body.get("retry_after"),
                count=int(body.get("count", 1)),
            )
        elif action == "delay-next":
            self.delay_next(
                float(body["seconds"]),
                endpoint=body.get("endpoint"),
                count=int(body.get("count", 1)),
            )
        elif action == "renewal-window":
            self.set_renewal_window(
                str(body["cert_id"]),
                parse_time(body["start"], "start"),
                parse_time(body["end"], "end"),
                body.get("explanation_url"),
            )
        elif action == "certificate":
            record = self.record_for(str(body["cert_id"]))
            start, end = self.renewal_window(record.cert_id)
            return Reply.json(
                200,
                {
                    "cert_id": record.cert_id,
                    "revoked": record.revoked,
                    "revocation_reason": record.revocation_reason,
                    "replaced_by": record.replaced_by,
                    "renewal_window": [rfc3339(start), rfc3339(end)],
                },
            )
        elif action == "settings":
            for name in ("http01_port", "tlsalpn01_port", "retry_after", "bad_nonce_rate"):
                if name in body:
                    setattr(self, name, body[name])
            if "forbidden_names" in body:
                self.forbidden_names = set(body["forbidden_names"])
        else:
            raise Problem("malformed", f"no management action {action!r}", status=404)
        return Reply.json(200, {"ok": True})
