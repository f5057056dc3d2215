"""The exchange's outermost ASGI layer: request ids, the access log and request metrics.

Around Litestar's whole handler (`observe(app)`, outside its routing and exception
handling), so that every HTTP request is seen, 404s included, with the status the client
really got:

- a request id: the client's `X-Request-Id` if it is acceptable
  (`market.request_context.accept_request_id`), else a new one; it is set in the
  request's context (the sequencer tags the request's ops with it) and echoed in the
  response's `X-Request-Id`;
- one access line per request (logger `tokex.access`, event `access`): method, path
  (never the query), route template, status, duration, the key id that signed it (a key
  id, not a secret), the request id;
- `tokex_http_requests_total{method, route, status}`, by route template (a 404 is
  `route="unmatched"`, so scanners cannot make up label values);
- `tokex_websocket_clients`: websockets open now.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from market.asgi import header
from market.metrics import HTTP_REQUESTS, WEBSOCKET_CLIENTS
from market.request_context import REQUEST_ID, accept_request_id
from ops.logs import clipped, direct_handler

access_log = logging.getLogger("tokex.access")

HEADER = b"x-request-id"
KEY_HEADER = b"x-tokex-key"
#: The route label of a request no route matched.
UNMATCHED = "unmatched"


#: The counter of each (method, route, status) seen: `labels` looks one up under a lock and
#: builds its key anew each time; routes are templates, so this stays small.
_REQUESTS: dict[tuple[str, str, int], Any] = {}


def _count(method: str, route: str, status: int) -> None:
    counter = _REQUESTS.get((method, route, status))
    if counter is None:
        counter = _REQUESTS[method, route, status] = HTTP_REQUESTS.labels(
            method, route, str(status)
        )
    counter.inc()


def _header(scope: Scope, name: bytes) -> str | None:
    value = header(scope, name)
    return None if value is None else value.decode("latin-1")


class Observe:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.WEBSOCKET:
            WEBSOCKET_CLIENTS.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                WEBSOCKET_CLIENTS.dec()
            return
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(_header(scope, HEADER))
        echoed = (HEADER, request_id.encode())
        status = 500  # what the client sees if nothing was sent (the server's own answer)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            await send(message)

        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
            self._record(scope, request_id, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, request_id: str, status: int, duration_s: float) -> None:
        route = scope.get("path_template") or UNMATCHED
        method = str(scope.get("method", ""))
        _count(method, route, status)
        direct = direct_handler(access_log, logging.INFO)
        if direct is None and not access_log.isEnabledFor(logging.INFO):
            return
        key_id = _header(scope, KEY_HEADER)
        fields = {
            "request_id": request_id, "method": method, "path": clipped(scope["path"]),
            "route": route,
            "status": status, "duration_ms": round(duration_s * 1000, 3),
            "key_id": None if key_id is None else clipped(key_id),
        }  # fmt: skip
        if direct is not None:  # the line as logging would write it, without the record
            direct.write_line(logging.INFO, access_log.name, "access", fields)
        else:
            access_log.info("access", extra=fields)


def observe(app: Litestar) -> Litestar:
    """Put `Observe` around the app's whole handler (as Litestar's OpenTelemetry plugin
    does), so it sees every request, 404s and 405s included."""
    app.asgi_handler = Observe(app.asgi_handler)
    return app
