"""ASGI middleware of the exchange's own (besides authentication in `market.auth`)."""

from __future__ import annotations

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.routes import HTTPRoute
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
    WebSocketAcceptEvent,
    WebSocketCloseEvent,
)
from litestar.utils import normalize_path

from ops.errors import DATABASE_UNAVAILABLE_CODE, DATABASE_UNAVAILABLE_MESSAGE, error_bytes

_NUL_MESSAGE = "NUL characters are not allowed in paths or queries"


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
                body = error_bytes(scope["path"], 400, "invalid_request", _NUL_MESSAGE)
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


#: Paths the database gate lets through: /health and /ready say themselves why they are
#: 503, and the OpenAPI schema and /metrics need no database (an outage is when metrics
#: matter most).
GATE_EXEMPT_PREFIXES = ("/health", "/ready", "/schema", "/metrics")


class DatabaseGate:
    """While the database supervisor (`app.state.database_supervisor`, see `ops.supervisor`)
    says the database is not back, answer 503 `database_unavailable` with `Retry-After`
    (`ledger_regressed` while the exchange refuses a database that went back in time),
    before authentication or any handler touches the database; a websocket is accepted
    and closed at once with 1013 (try again later: a refusal before the accept would reach
    the client as a bare 403)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        supervisor = scope["app"].state.get("database_supervisor")
        if (
            supervisor is not None
            and not supervisor.ready
            and scope["type"] in (ScopeType.HTTP, ScopeType.WEBSOCKET)
            and not scope.get("path", "").startswith(GATE_EXEMPT_PREFIXES)
        ):
            code, message = DATABASE_UNAVAILABLE_CODE, DATABASE_UNAVAILABLE_MESSAGE
            refusal = supervisor.regressed  # the database is back, but went back in time
            if refusal is not None:
                code, message = refusal.code, refusal.message
            if scope["type"] == ScopeType.HTTP:
                body = error_bytes(scope["path"], 503, code, message)
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(supervisor.retry_after_s).encode()),
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
                await receive()  # websocket.connect
                accept: WebSocketAcceptEvent = {
                    "type": "websocket.accept",
                    "subprotocol": None,
                    "headers": [],
                }
                close: WebSocketCloseEvent = {
                    "type": "websocket.close",
                    "code": 1013,
                    "reason": code,
                }
                await send(accept)
                await send(close)
            return
        await self.app(scope, receive, send)


#: Request headers that make an answer one account's (a signed request, a gateway bearer).
_PRIVATE_REQUEST_HEADERS = (b"x-tokex-key", b"authorization")


class PrivateNoStore:
    """`Cache-Control: no-store` on the answer to every signed (or bearer) request.

    Balances, orders, fills and account details are one account's: neither the browser's
    HTTP cache (the dashboard fetches them) nor a proxy on the way may keep a copy. A
    proxy's rule against caching answers to `Authorization` requests does not cover the
    `X-Tokex-*` headers, so the answer says so itself. Outermost, so that the lean order
    and gateway paths (which answer outside Litestar) get it too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not any(
            name.lower() in _PRIVATE_REQUEST_HEADERS for name, _ in scope["headers"]
        ):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ]
                headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_no_store)


class AnswerOptions:
    """`OPTIONS` on a route: 204 with `Allow` naming the route's methods, for anyone.

    Litestar answers OPTIONS itself, but behind the app's middleware (401
    `missing_signature` unsigned, public routes included), through `ops.wire.strict_query`,
    and for a path whose handlers come from more than one router or controller (`GET` and
    `POST /v1/orders`) with the methods of the first only: its OPTIONS handler keeps the
    route it was made for. The answer carries no data, so it is made here, before
    authentication and the database gate, from the app's final routes. A path no route
    matches, and a route with an OPTIONS handler of its own, go on to Litestar.
    """

    def __init__(self, app: ASGIApp, litestar: Litestar) -> None:
        self.app = app
        self.router = litestar.asgi_router
        #: id of a route's own OPTIONS handler -> (the handler, kept alive; its `Allow`)
        self.allow: dict[int, tuple[object, bytes]] = {}
        for route in litestar.routes:
            if not isinstance(route, HTTPRoute) or "OPTIONS" not in route.route_handler_map:
                continue
            handler = route.route_handler_map["OPTIONS"][0]
            if getattr(handler.fn, "__qualname__", "").startswith("HTTPRoute.create_options"):
                self.allow[id(handler)] = (handler, ", ".join(sorted(route.methods)).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allow = None
        if scope["type"] == ScopeType.HTTP and scope.get("method") == "OPTIONS":
            allow = self._allow(scope)
        if allow is None:
            await self.app(scope, receive, send)
            return
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", allow)],
        }
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(start)
        await send(end)

    def _allow(self, scope: Scope) -> bytes | None:
        """The route's `Allow` (its template set for the access line), or None: not ours."""
        path = scope["path"]
        if root_path := scope.get("root_path", ""):
            path = path.split(root_path, maxsplit=1)[-1]
        try:
            _, handler, _, _, template = self.router.handle_routing(
                path=normalize_path(path), method="OPTIONS"
            )
        except HTTPException:  # no such route (404), or no OPTIONS on it
            return None
        found = self.allow.get(id(handler))
        if found is None:
            return None
        scope["path_template"] = template
        return found[1]
