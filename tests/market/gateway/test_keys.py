"""Inference keys in process: a signed key creation is taken once, whichever app (each
with its own `Authenticator` and replay window, as each gateway of `--workers N` has)
answers it: the database refuses the replay, by the signature the key keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.testing import AsyncTestClient

from market.accounts import create_account
from market.gateway import keys
from market.gateway.keys_api import keys_router
from market.signing import now_ms, sign_request
from ops.app import create_app
from ops.config import Settings
from schemas.accounts import AccountCreated, Role
from schemas.gateway import CreateInferenceKey

Client = AsyncTestClient[Any]


@pytest.fixture
async def gateways(db_url: str) -> AsyncIterator[tuple[Client, Client]]:
    """Two apps on one database: two gateways, each with a replay window of its own."""
    async with AsyncExitStack() as stack:
        apps = [create_app(Settings(database_url=db_url), route_handlers=[keys_router])
                for _ in range(2)]  # fmt: skip
        first, second = [
            await stack.enter_async_context(AsyncTestClient(app, base_url="http://tokex.test"))
            for app in apps
        ]
        yield first, second


@pytest.fixture
async def buyer(db_pool: asyncpg.Pool) -> tuple[AccountCreated, Ed25519PrivateKey]:
    async with db_pool.acquire() as conn:
        created, key = await create_account(conn, Role.BUYER, "key-maker", None)
    assert key is not None
    return created, key


def signed(buyer: tuple[AccountCreated, Ed25519PrivateKey], body: bytes) -> dict[str, str]:
    created, key = buyer
    return {"Content-Type": "application/json", **sign_request(
        key, created.key_id, "POST", "/v1/inference-keys", body, now_ms()
    )}  # fmt: skip


async def keys_of(db_pool: asyncpg.Pool, buyer: AccountCreated) -> list[str]:
    async with db_pool.acquire() as conn:
        return [view.key_id for view in await keys.keys_of(conn, buyer.account_id)]


async def test_a_signed_key_creation_replayed_to_another_gateway_makes_no_second_key(
    gateways: tuple[Client, Client],
    buyer: tuple[AccountCreated, Ed25519PrivateKey],
    db_pool: asyncpg.Pool,
) -> None:
    first, second = gateways
    body = b'{"token_budget": 1000}'
    headers = signed(buyer, body)
    made = await first.post("/v1/inference-keys", content=body, headers=headers)
    assert made.status_code == 201, made.text
    assert made.json()["secret"].startswith("tkx_")
    for gateway in (second, first):  # the other's window never saw it; this one's did
        replayed = await gateway.post("/v1/inference-keys", content=body, headers=headers)
        assert (replayed.status_code, replayed.json()["code"]) == (401, "replayed_signature")
        assert replayed.json()["message"] == "this signature was already used"
        assert "tkx_" not in replayed.text
    assert await keys_of(db_pool, buyer[0]) == [made.json()["key_id"]]
    # the same body signed again (a new timestamp) is a new request: a second key
    again = await second.post("/v1/inference-keys", content=body, headers=signed(buyer, body))
    assert again.status_code == 201, again.text
    assert len(await keys_of(db_pool, buyer[0])) == 2


async def test_keys_made_without_a_signed_request_do_not_collide(
    buyer: tuple[AccountCreated, Ed25519PrivateKey], db_pool: asyncpg.Pool
) -> None:
    """No signature (None) is no claim: any number of such keys, each its own."""
    async with db_pool.acquire() as conn:
        for _ in range(2):
            await keys.create_key(conn, buyer[0].account_id, CreateInferenceKey(), signature=None)
    assert len(await keys_of(db_pool, buyer[0])) == 2


async def test_a_buyer_holds_at_most_max_active_keys_live_keys(
    gateways: tuple[Client, Client],
    buyer: tuple[AccountCreated, Ed25519PrivateKey],
    db_pool: asyncpg.Pool,
) -> None:
    """The gateway's rate limit is per key: a buyer minting keys must not multiply it, so
    beyond 100 live keys a creation is 409 `too_many_keys`; revoked and expired keys do
    not count (found by a review)."""
    assert keys.MAX_ACTIVE_KEYS == 100
    first, _ = gateways
    n = iter(range(1, 10))

    async def create() -> Any:  # each body its own, so no two signatures can be equal
        body = b'{"token_budget": %d}' % next(n)
        return await first.post("/v1/inference-keys", content=body, headers=signed(buyer, body))

    async with db_pool.acquire() as conn:
        for _ in range(keys.MAX_ACTIVE_KEYS - 1):
            await keys.create_key(conn, buyer[0].account_id, CreateInferenceKey(), signature=None)
    made = await create()
    assert made.status_code == 201, made.text
    refused = await create()
    assert (refused.status_code, refused.json()["code"]) == (409, "too_many_keys")
    assert "tkx_" not in refused.text
    assert len(await keys_of(db_pool, buyer[0])) == keys.MAX_ACTIVE_KEYS
    created, key = buyer
    path = f"/v1/inference-keys/{made.json()['key_id']}"
    revoke = sign_request(key, created.key_id, "DELETE", path, b"", now_ms())
    assert (await first.delete(path, headers=revoke)).status_code == 200
    again = await create()
    assert again.status_code == 201, again.text
    async with db_pool.acquire() as conn:  # one key expires: it no longer counts either
        await conn.execute(
            "UPDATE gateway_inference_keys SET expires_ms = 1 WHERE key_id = $1",
            again.json()["key_id"],
        )
    last = await create()
    assert last.status_code == 201, last.text
