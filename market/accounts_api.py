"""Account routes (`/v1/accounts`).

- `POST /v1/accounts` (operator): create an account for a public key the caller supplies
  (`CreateAccount.public_key` is required here: the server never generates, sees or returns
  a private key; `TokexClient.create_account` generates the pair on the client's side).
  201 `AccountCreated` (with `private_key` null).
- `GET /v1/accounts/me` (any role): the caller's own account.
- `GET /v1/accounts/{account_id}` (operator, auditor): any account; 404 if none.
- `GET /v1/accounts?role=&limit=` (operator, auditor): accounts in the order they were
  made, of one role if given, at most `limit` (1 to 10,000; default 1,000).

Request-signing keys (rotation: add the new key, switch to it, revoke the old one):

- `POST /v1/accounts/me/keys` (any role, signed by an active key of the account): add a
  public key (`AddKey.public_key`, checked as at creation; 409 `duplicate_public_key` if it
  is anyone's already; 409 `too_many_keys` if the account has `MAX_ACTIVE_KEYS`, 10,
  active keys already: the rate limit is per key). 201 `KeyView` of the new key.
- `DELETE /v1/accounts/me/keys/{key_id}` (any role): revoke one of the caller's keys, the
  signing one included, except the account's last active key (409 `last_active_key`).
- `DELETE /v1/accounts/{account_id}/keys/{key_id}` (operator): revoke any account's key,
  the last one included (locking the account out, e.g. after a leak).

A revocation answers 200 `KeyView` with `revoked_at_ms`; revoking a revoked key again
answers the same view (idempotent); a key of another account, or none, is 404
`signing_key_not_found`. It takes effect at once in the database and in the answering
process's authenticator (`Authenticator.forget`); the other processes of `serve --workers N`
keep the key cached for at most `Authenticator.cache_ttl_s` (30 s), and a websocket `orders`
subscription made with the key ends within that time too (`market.stream`).

Every write here claims its request's signature with the write (`stream_claims.claim_write`):
the same signed request again, through any process of `serve --workers N`, is 401
`replayed_signature` and changes nothing.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from market.accounts import (
    add_key,
    create_account,
    get_account,
    list_accounts,
    parse_public_key,
    revoke_key,
)
from market.api import Cursor, Limit
from market.auth import Authenticator, Principal, requires_role
from market.pages import Page, decode_cursor
from market.signing import now_ms
from market.stream_claims import claim_write
from schemas.accounts import AccountCreated, AccountView, AddKey, CreateAccount, KeyView, Role
from schemas.errors import DomainError, ErrorKind

__all__ = ["PublicKeyRequired", "accounts_router"]


class PublicKeyRequired(DomainError):
    code = "public_key_required"
    kind = ErrorKind.INVALID


@post(
    "/",
    guards=[requires_role(Role.OPERATOR)],
    status_code=201,
    summary="Create an account (operator)",
)
async def create_account_route(
    data: JSONBody[CreateAccount],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
) -> AccountCreated:
    if data.public_key is None:
        raise PublicKeyRequired(
            "public_key (base64 of the raw 32-byte Ed25519 public key) is required; "
            "generate the key pair on your side"
        )
    raw = parse_public_key(data.public_key)
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        created, _ = await create_account(conn, data.role, data.name, raw)
    return created


@get("/me", summary="The caller's own account")
async def my_account(
    principal: NamedDependency[Principal], pool: NamedDependency[asyncpg.Pool]
) -> AccountView:
    async with pool.acquire() as conn:
        return await get_account(conn, principal.account_id)


@get(
    "/{account_id:str}",
    guards=[requires_role(Role.OPERATOR, Role.AUDITOR)],
    summary="Any account (operator, auditor)",
)
async def account_by_id(
    account_id: FromPath[str], pool: NamedDependency[asyncpg.Pool]
) -> AccountView:
    async with pool.acquire() as conn:
        return await get_account(conn, account_id)


@get(
    "/",
    guards=[requires_role(Role.OPERATOR, Role.AUDITOR)],
    summary="The accounts, newest first, a page at a time (operator, auditor)",
)
async def accounts_list(
    pool: NamedDependency[asyncpg.Pool],
    role: FromQuery[Role | None] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AccountView]:
    keyset = decode_cursor(cursor, "accounts", 2, (int, str))
    async with pool.acquire() as conn:
        return await list_accounts(conn, role, limit, keyset)


@post("/me/keys", status_code=201, summary="Add a request-signing key to the caller's account")
async def add_my_key(
    data: JSONBody[AddKey],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
) -> KeyView:
    raw = parse_public_key(data.public_key)
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        return await add_key(conn, principal.account_id, raw)


@delete("/me/keys/{key_id:str}", status_code=200, summary="Revoke one of the caller's keys")
async def revoke_my_key(
    key_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    request: Request[Any, Any, Any],
) -> KeyView:
    return await _revoke(request, pool, principal, principal.account_id, key_id, keep_one=True)


@delete(
    "/{account_id:str}/keys/{key_id:str}",
    guards=[requires_role(Role.OPERATOR)],
    status_code=200,
    summary="Revoke any account's key, the last one included (operator)",
)
async def revoke_account_key(
    account_id: FromPath[str],
    key_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    request: Request[Any, Any, Any],
) -> KeyView:
    return await _revoke(request, pool, principal, account_id, key_id, keep_one=False)


async def _revoke(
    request: Request[Any, Any, Any],
    pool: asyncpg.Pool,
    principal: Principal,
    account_id: str,
    key_id: str,
    *,
    keep_one: bool,
) -> KeyView:
    """Revoke in the database, then drop the key from this process's cache: from the next
    request on, this process refuses it (`unknown_key`)."""
    async with pool.acquire() as conn, conn.transaction():
        await claim_write(conn, principal, now_ms())
        view = await revoke_key(conn, account_id, key_id, keep_one=keep_one)
    authenticator: Authenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is not None:
        authenticator.forget(key_id)
    return view


accounts_router = Router(
    "/v1/accounts",
    route_handlers=[
        create_account_route,
        accounts_list,
        my_account,
        account_by_id,
        add_my_key,
        revoke_my_key,
        revoke_account_key,
    ],
    tags=["accounts"],
)
