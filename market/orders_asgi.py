"""The single-order routes as a bare ASGI app, in front of Litestar's router.

`POST /v1/orders`, `POST /v1/orders/batch` and `DELETE /v1/orders/{order_id}` are the
exchange's hot path. `OrderCalls(app, ...)` answers these (the exact method and path, no
query string) and passes everything else to `app`. `ops.app.create_app` puts it inside
`ops.observe` (request id, access log and request metrics: it sets the route template for
them, Litestar's) and in front of Litestar's exception handling, router and middleware
chain, with the NUL check and the database gate around it (`ops.middleware`), as for the
gateway's calls (`market.gateway.openai_asgi`).

Per request it does what Litestar's route does, without a request object, dependency
injection or three layers of send wrappers: read the body (the app's limit), decode it
strictly into the route's type (`msgspec`, unknown fields refused, as `ops.wire`'s
`StrictRequest`), authenticate it (`auth.authenticate_scope`: signature, replay window),
take the key's rate-limit token (`X-RateLimit-*` on the answer, as `AuthMiddleware` adds
them), then the route itself (`market.api.place`, `place_many`, `cancel`, shared with the
Litestar handlers) and the answer encoded once.

Anything unusual is Litestar's, untouched, before it has any effect: a body that does not
decode (or is not `application/json`, or is larger than the limit) goes to `app` with the
body replayed, so Litestar answers it as before (its 401 first if unsigned, then its 400
naming the field, or its 413); so does, before its body is read, a request announcing a
body within the limit that its signature headers alone refuse (`Authenticator.check_headers`:
Litestar's 401 comes from its headers too). An error from authentication on is answered by the app's
own exception handlers (`ops.errors`: the same status, code, message and headers,
Retry-After included), with the rate-limit headers once the token was taken.

Litestar's routes stay registered: they make the OpenAPI document (`/schema`) and answer
these paths in an app built without this dispatcher, the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.serialization import default_serializer
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from market.api import cancel, place, place_many, trader_exchange
from market.asgi import header
from market.auth import (
    Authenticator,
    AuthError,
    RateLimiter,
    authenticate_scope,
    signature_headers,
)
from market.signing import now_ms
from schemas.trading import PlaceOrder, PlaceOrders


class Route(enum.Enum):
    PLACE = "/v1/orders"
    BATCH = "/v1/orders/batch"
    CANCEL = "/v1/orders/{order_id}"  # Litestar's template of /v1/orders/{order_id:int}


_STATUS: Final = {Route.PLACE: 201, Route.BATCH: 200, Route.CANCEL: 200}
_DECODERS: Final[dict[Route, msgspec.json.Decoder[Any]]] = {
    Route.PLACE: msgspec.json.Decoder(PlaceOrder, strict=True),
    Route.BATCH: msgspec.json.Decoder(PlaceOrders, strict=True),
}
_CANCEL_PREFIX: Final = "/v1/orders/"
_MAX_ID_DIGITS: Final = 18  # below 2**63: longer ids are Litestar's to refuse
_JSON: Final = b"application/json"
_encoder = msgspec.json.Encoder(enc_hook=default_serializer)  # Litestar's, for the same bytes


def route_of(scope: Scope) -> Route | None:
    """The lean route this request is for, if any."""
    if scope["type"] != ScopeType.HTTP or scope.get("query_string"):
        return None
    method, path = scope.get("method"), scope["path"]
    if method == "POST":
        if path == Route.PLACE.value:
            return Route.PLACE
        if path == Route.BATCH.value:
            return Route.BATCH
    elif method == "DELETE" and path.startswith(_CANCEL_PREFIX):
        tail = path[len(_CANCEL_PREFIX) :]
        if 0 < len(tail) <= _MAX_ID_DIGITS and tail.isascii() and tail.isdigit():
            return Route.CANCEL
    return None


class OrderCalls:
    """See the module docstring. `wrap` puts the app's gates around the lean path."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter | None,
        max_body_bytes: int,
        *,
        wrap: Callable[[ASGIApp], ASGIApp] = lambda app: app,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self._serve = wrap(self._lean)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["path_template"] = route.value
        await self._serve(scope, receive, send)

    async def _lean(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = Route(scope["path_template"])  # set by __call__, which sends only these here
        app: Litestar = scope["litestar_app"]
        if self._refused_by_headers(scope, getattr(app.state, "authenticator", None)):
            await self.app(scope, receive, send)  # Litestar's 401, before the body is read
            return
        messages, body = await self._read(scope, receive)
        data = None if body is None else _decoded(route, scope, body)
        if body is None or data is None:  # Litestar's to answer, as if nothing happened
            await self.app(scope, _replaying(messages, receive), send)
            return
        extra: list[tuple[bytes, bytes]] = []
        try:
            authenticator: Authenticator = app.state.authenticator
            principal = await authenticate_scope(authenticator, scope, body, self.clock())
            if self.limiter is not None:
                extra = self.limiter.acquire(principal.key_id).raw_headers()
            sequencer = trader_exchange(app.state, principal)
            if route is Route.PLACE:
                answer: object = await place(sequencer, principal, data)
            elif route is Route.BATCH:
                answer = await place_many(sequencer, principal, data)
            else:
                answer = await cancel(sequencer, principal, data)
        except Exception as exc:
            await _send_error(app, scope, receive, send, exc, extra)
            return
        content = _encoder.encode(answer)
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(content)), *extra]
        await send({"type": "http.response.start", "status": _STATUS[route], "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    def _refused_by_headers(self, scope: Scope, authenticator: Authenticator | None) -> bool:
        """Whether the signature headers alone refuse a request announcing a body within the
        limit (`auth.AuthMiddleware` answers it the same way, before reading the body)."""
        declared = header(scope, b"content-length")
        if authenticator is None or declared is None or not declared.isdigit():
            return False
        if int(declared) > self.max_body_bytes:
            return False  # its body's answer (413) first, as ever
        try:
            authenticator.check_headers(*signature_headers(scope), self.clock())
        except AuthError:
            return True
        return False

    async def _read(
        self, scope: Scope, receive: Receive
    ) -> tuple[list[ReceiveMessage], bytes | None]:
        """The messages received, and the body (None: over the limit, or the client left)."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return [], None
        messages: list[ReceiveMessage] = []
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_body_bytes:
                return messages, None
            if not message.get("more_body", False):
                break
        return messages, parts[0] if len(parts) == 1 else b"".join(parts)


def _decoded(route: Route, scope: Scope, body: bytes) -> Any:
    """The route's argument, or None if it is not plainly good (Litestar then says why)."""
    if route is Route.CANCEL:
        return int(scope["path"][len(_CANCEL_PREFIX) :])
    if header(scope, b"content-type") != _JSON:
        return None
    try:
        return _DECODERS[route].decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """`receive` that gives `messages` again first."""
    pending = list(messages)

    async def replay() -> ReceiveMessage:
        return pending.pop(0) if pending else await receive()

    return replay


def _handler_of(app: Litestar, exc: Exception) -> Any:
    """The app's exception handler for `exc` (the most specific class, as Litestar picks)."""
    handlers = app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


async def _send_error(
    app: Litestar,
    scope: Scope,
    receive: Receive,
    send: Send,
    exc: Exception,
    extra: list[tuple[bytes, bytes]],
) -> None:
    """Answer `exc` with the app's own exception handlers (`ops.errors`), as Litestar's
    exception middleware would, with the rate-limit headers `extra` after its own."""
    handler = _handler_of(app, exc)
    if handler is None:
        raise exc
    request = app.request_class(scope=scope, receive=receive, send=send)
    response = handler(request, exc)

    async def send_with_extra(message: Message) -> None:
        if message["type"] == "http.response.start" and extra:
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    asgi = response.to_asgi_response(app=None, request=request, type_encoders=app.type_encoders)
    await asgi(scope, receive, send_with_extra)
