"""An account's answers are never stored by a browser or a proxy cache (`no-store`), on
Litestar's routes and on the lean order path alike; public market data may be cached."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from market.accounts import create_account
from market.client import TokexClient
from schemas.accounts import Role


@pytest.fixture
async def buyer(db_url: str, server: str) -> TokexClient:
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.BUYER, "b", None)
    finally:
        await conn.close()
    assert key is not None
    return TokexClient(server, created.key_id, key)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/accounts/me"),
        ("GET", "/v1/balances"),
        ("GET", "/v1/orders?status=open"),
        ("GET", "/v1/fills"),
        ("DELETE", "/v1/orders/424242"),  # the lean order path (market.orders_asgi): a 404
    ],
)
async def test_signed_answers_are_no_store(buyer: TokexClient, method: str, path: str) -> None:
    request = buyer.build_request(method, path)
    response = await buyer._http.send(request)
    assert response.headers.get("cache-control") == "no-store", (path, response.status_code)
    await buyer.aclose()


async def test_a_refused_signature_is_no_store_too(server: str) -> None:
    headers = {"X-Tokex-Key": "key_0123456789abcdef", "X-Tokex-Timestamp": "1"}
    async with httpx.AsyncClient(base_url=server) as http:
        r = await http.get("/v1/balances", headers={**headers, "X-Tokex-Signature": "AA=="})
    assert r.status_code == 401
    assert r.headers.get("cache-control") == "no-store"


async def test_public_data_keeps_its_own_cache_policy(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        assert (await http.get("/v1/instruments")).headers.get("cache-control") != "no-store"
        page = await http.get("/")
    assert page.headers["x-frame-options"] == "DENY"  # browsers without frame-ancestors
