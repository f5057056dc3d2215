"""Cursor pagination end to end: 5,000 orders and 5,000 fills of one account, read in
pages of 100 in both directions while new orders keep arriving."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import Side, TimeInForce
from schemas.trading import CreateInstrument, OrderView, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"
N = 5_000
PAGE = 100


@dataclass
class Traded:
    buyer: TokexClient
    provider: TokexClient


@pytest.fixture
def server_process(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database_url=db_url, data_dir=tmp_path,
        env={"TOKEX_RATE_LIMIT": "100000", "TOKEX_RATE_BURST": "100000"},
    )  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _order(coid: str, side: Side, price: int, **kw: object) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=1, price=price,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def _place(client: TokexClient, orders: list[PlaceOrder]) -> None:
    for start in range(0, len(orders), 50):
        results = await client.place_orders(orders[start : start + 50])
        assert all(r.order is not None for r in results), results


@pytest.fixture
async def traded(db_url: str, server_process: ServerProcess) -> AsyncIterator[Traded]:
    """A provider rests N asks of one token; a buyer takes each with an order of its own:
    N orders and N fills for each of them."""
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1, tick_size=1, price_min=1, price_max=1000)
    )
    p = await operator.create_account(Role.PROVIDER, "provider")
    b = await operator.create_account(Role.BUYER, "buyer")
    provider, buyer = operator.as_account(p), operator.as_account(b)
    await provider.list_capacity("cap", SYM, 2 * N)
    await operator.deposit("dep", b.account_id, 100 * N)
    await _place(provider, [_order(f"ask-{i}", Side.SELL, 10) for i in range(N)])
    ioc = TimeInForce.IOC
    await _place(buyer, [_order(f"buy-{i}", Side.BUY, 10, tif=ioc) for i in range(N)])
    yield Traded(buyer, provider)
    await operator.aclose()


async def _walk(
    client: TokexClient, path: str, params: dict[str, Any], *, newer: bool,
    cursor: str | None = None,
) -> tuple[list[list[dict[str, Any]]], str | None]:  # fmt: skip
    """Every page from `cursor` in one direction; the pages and the last cursor seen."""
    records: list[list[dict[str, Any]]] = []
    while True:
        query = {**params, "limit": PAGE, **({"cursor": cursor} if cursor else {})}
        page = await client.request("GET", path, params=query)
        assert len(page["items"]) <= PAGE
        records.append(page["items"])
        following = page["prev_cursor"] if newer else page["next_cursor"]
        if not page["items"] or following is None:
            return records, following if newer else page["prev_cursor"]
        cursor = following


async def _keep_ordering(buyer: TokexClient, stop: asyncio.Event) -> int:
    """New resting bids, far below the market, while the pages are read."""
    n = 0
    while not stop.is_set():
        await buyer.place_order(_order(f"new-{n}", Side.BUY, 1))
        n += 1
        await asyncio.sleep(0.01)
    return n


async def test_orders_and_fills_page_in_both_directions_while_orders_arrive(
    traded: Traded,
) -> None:
    buyer = traded.buyer
    before = {o.order_id for o in await buyer.orders(status="all")}
    assert len(before) == N
    stop = asyncio.Event()
    arriving = asyncio.create_task(_keep_ordering(buyer, stop))
    try:
        for path, key in (("/v1/orders", "order_id"), ("/v1/fills", "seq")):
            params: dict[str, Any] = {"status": "all"} if path == "/v1/orders" else {}
            pages, back = await _walk(buyer, path, params, newer=False)
            down = [r for page in pages for r in page]
            keys = [r[key] for r in down]
            assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
            if path == "/v1/orders":
                assert before <= set(keys)  # every order that existed, once
            else:
                assert len(keys) == N and all(r["client_order_id"] for r in down)
            # Back up from the last page (the oldest records) by its prev_cursor.
            last = [r[key] for r in pages[-1]]
            up, _ = await _walk(buyer, path, params, newer=True, cursor=back)
            up_keys = [r[key] for page in up for r in page]
            assert len(set(last + up_keys)) == len(last) + len(up_keys)  # none twice
            assert set(keys) <= set(last + up_keys)  # the walk back up misses nothing
            below = last[0]
            for page in up:  # each page newest first, each above the one before
                chunk = [r[key] for r in page]
                assert chunk == sorted(chunk, reverse=True)
                assert not chunk or chunk[-1] > below
                below = chunk[0] if chunk else below
    finally:
        stop.set()
        placed = await arriving
    assert placed > 0  # orders really arrived during the walks
    assert len({o.order_id for o in await buyer.orders(status="all")}) == N + placed
    # The client's iterator walks every page too.
    seen: list[OrderView] = [o async for o in traded.provider.iter_orders("all", limit=500)]
    assert [o.client_order_id for o in seen] == [f"ask-{i}" for i in reversed(range(N))]
    forged = base64.urlsafe_b64encode(b'["n","not a number"]').decode().rstrip("=")
    for cursor in ("%%%", "bm90IGpzb24", forged):
        with pytest.raises(TokexApiError) as bad:
            await buyer.request("GET", "/v1/orders", params={"cursor": cursor})
        assert (bad.value.status, bad.value.code) == (400, "invalid_cursor")
