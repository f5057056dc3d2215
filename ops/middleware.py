"""ASGI middleware of the exchange's own (besides authentication in `market.auth`)."""

from __future__ import annotations

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
    WebSocketCloseEvent,
)

from ops.errors import ErrorBody

_BODY = ErrorBody(
    code="invalid_request", message="NUL characters are not allowed in paths or queries"
)


class RefuseNulBytes:
    """Refuse a path or query string with a NUL character (400 `invalid_request`).

    No identifier, symbol or filter of the exchange contains one, and PostgreSQL text
    cannot hold one: refusing at the door keeps such values out of every handler, the
    sequencer's batches and streamed reports (which have answered 200 before they read).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in (ScopeType.HTTP, ScopeType.WEBSOCKET) and (
            "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")
        ):
            if scope["type"] == ScopeType.HTTP:
                body = msgspec.json.encode(_BODY)
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
                chunk: HTTPResponseBodyEvent = {
                    "type": "http.response.body",
                    "body": body,
                    "more_body": False,
                }
                await send(start)
                await send(chunk)
            else:
                close: WebSocketCloseEvent = {"type": "websocket.close", "code": 1008, "reason": ""}
                await send(close)
            return
        await self.app(scope, receive, send)
