"""The metered routes of `/openai/v1` as a bare ASGI app, in front of Litestar's router.

`POST /openai/v1/chat/completions` and `POST /openai/v1/completions` are the gateway's
hot path. `OpenAICalls(app, serve_call)` answers exactly these two (POST, the exact path,
no query string) with `serve_call` and passes everything else to `app`: a query string to
Litestar's route, which refuses it (400 `unknown_query_parameter`, as `GET /models` and
every route of the API do; these routes take none). `ops.app.create_app` puts it
inside `ops.observe` (request id, access log and request metrics, as for every route:
it sets the route template for them) and in front of Litestar's exception handling,
router and middleware chain, with the two pieces of that chain these routes need
around `serve_call` (`ops.middleware`: the NUL check and the database gate, 503
`database_unavailable` with Retry-After during an outage). Signed-request
authentication is not one of them: the gateway takes bearer keys.

`serve_call` does what Litestar's routes in `openai_api` do, without building a request
and a response object per call: the bearer key (`openai_api.authorize`), the body (up to
`openai_api.MAX_BODY_BYTES`, else 413 `payload_too_large`), `Gateway.call`, then the
answer: a body whole with its length (and `x-tokex-charge: pending` if its charge is not
committed yet), or a stream chunked as its pieces come, with the `x-tokex-receipt`
header. A buyer who hangs up mid-stream ends the call at once (the relay is cancelled,
so the upstream connection is closed and the call charged by the cut-call rule), as
Litestar's streaming response does. Errors before the answer starts
are `errors.answer_of`'s, in OpenAI's shape.

Litestar's routes stay registered: they make the OpenAPI document (`/schema`) and answer
these paths in an app built without this dispatcher, the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from market.asgi import CLIENT_CLOSED, header
from market.gateway.errors import PayloadTooLarge, answer_of
from market.gateway.openai_api import MAX_BODY_BYTES, authorize
from market.gateway.service import CHARGE_HEADER, RECEIPT_HEADER, Answer

#: The paths answered here -> the upstream's path.
ROUTES: Final = {
    "/openai/v1/chat/completions": "/chat/completions",
    "/openai/v1/completions": "/completions",
}

_JSON: Final = (b"content-type", b"application/json")
_SSE: Final = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE: Final = (b"cache-control", b"no-cache")
_RECEIPT: Final = RECEIPT_HEADER.encode()
_PENDING: Final = (CHARGE_HEADER.encode(), b"pending")
_DONE: Final = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


class OpenAICalls:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, serve: ASGIApp) -> None:
        self.app = app
        self.serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == ScopeType.HTTP
            and scope.get("method") == "POST"
            and scope["path"] in ROUTES
            and not scope.get("query_string")
        ):
            scope["path_template"] = scope["path"]
            await self.serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The request's body (413 beyond the limit); None if the client went away."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def serve_call(scope: Scope, receive: Receive, send: Send) -> None:
    """One metered call (see the module docstring)."""
    state = scope["app"].state
    try:
        authorization = header(scope, b"authorization")
        gateway, grant = await authorize(
            state, None if authorization is None else authorization.decode("latin-1")
        )
        raw = await read_body(scope, receive)
        if raw is None:  # nothing reserved yet: nobody to answer, and no server error
            await _send_closed(send)
            return
        answer = await gateway.call(grant, ROUTES[scope["path"]], raw)
    except Exception as exc:
        await _send_error(send, *answer_of(exc, state.get("database_supervisor")))
        return
    if answer.events is None:
        await _send_body(send, answer)
    else:
        await _send_stream(send, receive, answer)


async def _send_closed(send: Send) -> None:
    """The answer, to nobody, to a client that hung up before its body was in: recorded by
    `ops.observe` as `CLIENT_CLOSED` (499), not as the 500 of an app that sent nothing."""
    await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_error(send: Send, status: int, body: dict[str, Any], extra: dict[str, str]) -> None:
    content = _encoder.encode(body)
    headers = [_JSON, (b"content-length", b"%d" % len(content))]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})


async def _send_body(send: Send, answer: Answer) -> None:
    headers = [
        _JSON, (b"content-length", b"%d" % len(answer.body)),
        (_RECEIPT, answer.receipt_id.encode()),
    ]  # fmt: skip
    if answer.charge_pending:
        headers.append(_PENDING)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_stream(send: Send, receive: Receive, answer: Answer) -> None:
    """Send the stream's pieces as they come. A listener for the buyer's hang-up cancels
    this task (one task a stream, where Litestar's streaming response takes a task group
    of its own); the relay's cleanup then ends the call."""
    assert answer.events is not None
    events = answer.events
    task = asyncio.current_task()
    hung_up = False

    def hang_up(listener: asyncio.Future[None]) -> None:
        nonlocal hung_up
        if not listener.cancelled() and task is not None:
            hung_up = True
            task.cancel()

    listener = asyncio.ensure_future(_disconnected(receive))
    listener.add_done_callback(hang_up)
    headers = [_SSE, _NO_CACHE, (_RECEIPT, answer.receipt_id.encode())]
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        last = b""
        async for piece in events:
            if piece.endswith(_DONE):  # the tail, the last piece: sent with the end
                last = piece
                break
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        # the last send completes the response, which ends `receive` too: not a hang-up
        listener.remove_done_callback(hang_up)
        listener.cancel()
        await send({"type": "http.response.body", "body": last, "more_body": False})
    except asyncio.CancelledError:
        if not hung_up or task is None:
            raise
        task.uncancel()
    finally:
        listener.remove_done_callback(hang_up)
        listener.cancel()
        await events.aclose()
