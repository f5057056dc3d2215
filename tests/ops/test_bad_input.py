"""Bad input over a real server: always a 4xx with a code, never a 500 or a 503.

A NUL character cannot be stored in PostgreSQL text; before these guards, one in an
order's instrument failed the whole batch it was in (every other client's request
with it answered 503), and in a query it was a 500.
"""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from market.accounts import create_account
from market.client import TokexApiError, TokexClient
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
    ("method", "path", "body"),
    [
        ("GET", "/v1/orders?status=%00", None),
        ("GET", "/v1/fills?instrument=a%00b", None),
        ("GET", "/v1/orders/99999999999999999999999", None),
        ("POST", "/v1/orders", {"client_order_id": "c", "instrument": "x\u0000",
                                "side": "buy", "quantity": 1000, "price": 5}),
        ("POST", "/v1/orders/batch", {"orders": [{"client_order_id": "c", "instrument": "\u0000",
                                                  "side": "buy", "quantity": 1000, "price": 5}]}),
        ("GET", "/v1/reports/statement?asset=%00", None),
    ],
)  # fmt: skip
async def test_signed_bad_input_is_a_400(
    buyer: TokexClient, method: str, path: str, body: object
) -> None:
    with pytest.raises(TokexApiError) as err:
        await buyer.request(method, path, json=body)
    assert err.value.status == 400, err.value
    assert err.value.code == "invalid_request"
    await buyer.aclose()


async def test_public_routes_refuse_nul_and_huge_numbers(server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        for path in ("/v1/trades?instrument=%00", "/v1/ledger/entries/99999999999999999999"):
            r = await http.get(path)
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", path
