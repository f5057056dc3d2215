"""Inference key routes (`/v1/inference-keys`, buyer only; Ed25519-signed like every /v1 route).

- `POST /v1/inference-keys`: `{}` gives a key for every model the buyer holds; optional
  `models`, `token_budget`, `expires_ms`. 201 with the secret `tkx_...`, shown this once.
  The same signed request again, through any gateway process: 401 `replayed_signature`,
  and no second key (its signature is stored with the key: `keys.create_key`).
- `GET /v1/inference-keys`: the buyer's keys (never a secret: only their hashes are kept).
- `DELETE /v1/inference-keys/{key_id}`: revoke at once; 200 with the key; 404 if not its own.

Both writes also claim their request's signature with the write
(`stream_claims.claim_write`): the same signed request again, through any gateway
process, is 401 `replayed_signature`.
"""

from __future__ import annotations

import asyncpg
from litestar import Router, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from market.auth import Principal, requires_role
from market.gateway import keys
from market.signing import now_ms
from market.stream_claims import claim_write
from schemas.accounts import Role
from schemas.gateway import CreateInferenceKey, InferenceKeyCreated, InferenceKeyView


@post("/", status_code=201, summary="Make an inference key for /openai/v1 (buyer)")
async def create_key(
    data: JSONBody[CreateInferenceKey],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
) -> InferenceKeyCreated:
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        return await keys.create_key(
            conn, principal.account_id, data, signature=principal.signature or None
        )


@get("/", summary="Your inference keys, without secrets (buyer)")
async def list_keys(
    principal: NamedDependency[Principal], pool: NamedDependency[asyncpg.Pool]
) -> list[InferenceKeyView]:
    async with pool.acquire() as conn:
        return await keys.keys_of(conn, principal.account_id)


@delete("/{key_id:str}", status_code=200, summary="Revoke an inference key (buyer)")
async def revoke_key(
    key_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    state: State,
) -> InferenceKeyView:
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        revoked = await keys.revoke(conn, principal.account_id, key_id)
    gateway = state.get("gateway")
    if gateway is not None:  # the gateway keeps grants for a moment: not this one
        gateway.grants.clear()
    return revoked


keys_router = Router(
    "/v1/inference-keys",
    route_handlers=[create_key, list_keys, revoke_key],
    guards=[requires_role(Role.BUYER)],
    tags=["gateway"],
)
