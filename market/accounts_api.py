"""Account routes (`/v1/accounts`).

- `POST /v1/accounts` (operator): create an account for a public key the caller supplies
  (`CreateAccount.public_key` is required here: the server never generates, sees or returns
  a private key; `TokexClient.create_account` generates the pair on the client's side).
  201 `AccountCreated` (with `private_key` null).
- `GET /v1/accounts/me` (any role): the caller's own account.
- `GET /v1/accounts/{account_id}` (operator, auditor): any account; 404 if none.
- `GET /v1/accounts?role=&limit=` (operator, auditor): accounts in the order they were
  made, of one role if given, at most `limit` (1 to 10,000; default 1,000).
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from market.accounts import create_account, get_account, list_accounts, parse_public_key
from market.auth import Principal, requires_role
from schemas.accounts import AccountCreated, AccountView, CreateAccount, Role
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
    data: JSONBody[CreateAccount], pool: NamedDependency[asyncpg.Pool]
) -> AccountCreated:
    if data.public_key is None:
        raise PublicKeyRequired(
            "public_key (base64 of the raw 32-byte Ed25519 public key) is required; "
            "generate the key pair on your side"
        )
    raw = parse_public_key(data.public_key)
    async with pool.acquire() as conn:
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
    summary="Every account, oldest first (operator, auditor)",
)
async def accounts_list(
    pool: NamedDependency[asyncpg.Pool],
    role: FromQuery[Role | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
) -> list[AccountView]:
    async with pool.acquire() as conn:
        return await list_accounts(conn, role, limit)


accounts_router = Router(
    "/v1/accounts",
    route_handlers=[create_account_route, accounts_list, my_account, account_by_id],
    tags=["accounts"],
)
