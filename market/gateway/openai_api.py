"""`/openai/v1`: the OpenAI-compatible gateway (bearer inference keys, not Ed25519).

Any OpenAI SDK works unchanged with `base_url=http://HOST:PORT/openai/v1` and an inference
key (`POST /v1/inference-keys`) as its API key:

- `GET /openai/v1/models`: the models this key may use now;
- `POST /openai/v1/chat/completions`, `POST /openai/v1/completions`: forwarded to a
  provider's endpoint (`service.Gateway.call`), streaming or not.

The router is public to the signed-request middleware (`opt=PUBLIC`): a signature neither
admits nor is needed here; every route checks the bearer key first (`authorize`)
(401 `invalid_api_key` otherwise) and its rate (a token bucket per key, 429 `rate_limited`
with Retry-After). Errors are in OpenAI's shape (`errors`).

In the exchange's app (`ops.app.create_app`) the two POST routes are answered by the lean
path in front of Litestar (`openai_asgi`), with the same functions (`authorize`,
`Gateway.call`); these handlers make their OpenAPI document and answer them in an app
built without that dispatcher.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import MediaType, Request, Router, get, post
from litestar.datastructures import State
from litestar.response import Response, Stream

from market.auth import PUBLIC
from market.gateway import keys
from market.gateway.errors import openai_exception_handlers
from market.gateway.service import CHARGE_HEADER, RECEIPT_HEADER, Answer, Gateway
from market.signing import now_ms
from schemas.errors import DomainError, ErrorKind

#: Prompts are larger than orders: the gateway's routes take bodies up to this.
MAX_BODY_BYTES = 4 * 1024 * 1024


class GatewayNotRunning(DomainError):
    code = "exchange_unavailable"
    kind = ErrorKind.UNAVAILABLE


def provide_gateway(state: State) -> Gateway:
    gateway: Gateway | None = state.get("gateway")
    if gateway is None:
        raise GatewayNotRunning("the gateway is not running in this process")
    return gateway


async def authorize(state: State, authorization: str | None) -> tuple[Gateway, keys.KeyGrant]:
    """The gateway and the grant of the key in the `Authorization` header (401
    `invalid_api_key`), within its rate (429 `rate_limited`). Grants are kept for
    `service.GRANTS_CACHE_S` (a revocation here clears them at once); a key's expiry is
    checked on every call. Called by each route itself (and by `openai_asgi`) rather than
    through Litestar's dependency injection: a tenth of the gateway's CPU a call went to
    resolving these."""
    gateway = provide_gateway(state)
    secret = keys.bearer_secret(authorization)
    digest = keys.secret_hash(secret)
    now = now_ms()

    async def load() -> keys.KeyGrant:
        pool: asyncpg.Pool = state.pool
        async with pool.acquire() as conn:
            return await keys.authenticate(conn, secret, now)

    grant = await gateway.grants.get_or_load(digest, load)
    if grant.expires_ms is not None and now >= grant.expires_ms:
        raise keys.InvalidInferenceKey("this inference key has expired")
    gateway.limiter.acquire(grant.key_id)
    return gateway, grant


async def _authorize(request: Request[Any, Any, Any]) -> tuple[Gateway, keys.KeyGrant]:
    return await authorize(request.app.state, request.headers.get("authorization"))


def to_response(answer: Answer) -> Response[Any] | Stream:
    headers = {RECEIPT_HEADER: answer.receipt_id}
    if answer.events is None:
        if answer.charge_pending:
            headers[CHARGE_HEADER] = "pending"
        return Response(answer.body, media_type=MediaType.JSON, headers=headers)
    headers["Cache-Control"] = "no-cache"
    return Stream(answer.events, media_type="text/event-stream", headers=headers)


@get("/models", summary="The models this key may use now")
async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
    gateway, grant = await _authorize(request)
    return {"object": "list", "data": await gateway.models(grant)}


@post("/chat/completions", status_code=200, summary="Chat completion, metered")
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
    gateway, grant = await _authorize(request)
    return to_response(await gateway.call(grant, "/chat/completions", await request.body()))


@post("/completions", status_code=200, summary="Text completion, metered")
async def completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
    gateway, grant = await _authorize(request)
    return to_response(await gateway.call(grant, "/completions", await request.body()))


openai_router = Router(
    "/openai/v1",
    route_handlers=[list_models, chat_completions, completions],
    exception_handlers=openai_exception_handlers(),
    opt=PUBLIC,
    request_max_body_size=MAX_BODY_BYTES,
    tags=["gateway"],
)
