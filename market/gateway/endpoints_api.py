"""Endpoint routes (`/v1/endpoints`, provider only).

- `POST /v1/endpoints`: register an OpenAI-compatible server for a model. The base URL is
  checked (`ssrf.resolve`: 400 `endpoint_scheme`, `invalid_endpoint_url`,
  `endpoint_unresolvable`, `endpoint_address_refused`) and probed (`GET {base_url}/models`:
  422 `endpoint_unhealthy` if it does not answer); 409 `endpoint_exists` for an id in use.
  201 with the endpoint (never its credential).
- `GET /v1/endpoints`: the caller's endpoints, with their last health.
- `DELETE /v1/endpoints/{endpoint_id}`: 204; 404 `endpoint_not_found` if not the caller's.

Both writes claim their request's signature with the write (`stream_claims.claim_write`):
the same signed request again, through any gateway process, is 401 `replayed_signature`
and changes nothing (a captured delete cannot remove the endpoint registered again).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Router, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from market.auth import Principal, requires_role
from market.gateway import endpoints as store
from market.gateway.health import probe
from market.gateway.ssrf import parse_allow_hosts, resolve
from market.signing import now_ms
from market.stream_claims import claim_write
from schemas.accounts import Role
from schemas.gateway import EndpointView, Health, RegisterEndpoint


def allow_hosts(state: State) -> frozenset[str]:
    """The operator's `TOKEX_ENDPOINT_ALLOW_HOSTS` (`Settings.endpoint_allow_hosts`)."""
    settings: Any = state.get("settings")
    return parse_allow_hosts(getattr(settings, "endpoint_allow_hosts", ""))


def _changed(state: State) -> None:
    """The gateway keeps the healthy endpoints for a moment: read them again now."""
    gateway = state.get("gateway")
    if gateway is not None:
        gateway.endpoints_changed()


@post("/", status_code=201, summary="Register an inference endpoint (provider)")
async def register_endpoint(
    data: JSONBody[RegisterEndpoint],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    state: State,
) -> EndpointView:
    target = await resolve(data.base_url, allow_hosts(state))
    monitor = state.get("health_monitor")
    health, detail = await probe(target, data.credential, getattr(monitor, "client", None))
    if health is not Health.HEALTHY:
        raise store.EndpointUnhealthy(f"{data.base_url.rstrip('/')}/models: {detail}")
    async with pool.acquire() as conn, conn.transaction():
        now = now_ms()
        await claim_write(conn, principal, now)
        row = await store.register(conn, principal.account_id, data, now)
    _changed(state)
    return row.view()


@get("/", summary="Your inference endpoints (provider)")
async def list_endpoints(
    principal: NamedDependency[Principal], pool: NamedDependency[asyncpg.Pool]
) -> list[EndpointView]:
    async with pool.acquire() as conn:
        rows = await store.endpoints_of(conn, principal.account_id)
    return [row.view() for row in rows]


@delete("/{endpoint_id:str}", status_code=204, summary="Remove an inference endpoint (provider)")
async def delete_endpoint(
    endpoint_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    state: State,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        await store.delete(conn, principal.account_id, endpoint_id)
    _changed(state)


endpoints_router = Router(
    "/v1/endpoints",
    route_handlers=[register_endpoint, list_endpoints, delete_endpoint],
    guards=[requires_role(Role.PROVIDER)],
    tags=["gateway"],
)
