"""Crash test: kill -9 the server under load, again and again; nothing acknowledged is lost.

After every restart, every order the client saw acknowledged is there with the
same id and at least the fills it was acknowledged with, and a retry of its
client order id returns it. At the end: no fill duplicated or lost (one ledger
transaction per fill, order fills add up), every asset sums to zero, and the
balances recovery loads equal the recomputation from the entries.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger.store import load_state, nonzero, recomputed_balances
from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, OrderView, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"  # far ahead of the wall clock: its window closes at its end
CRASHES = 6


@pytest.fixture
def server_process(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose per-key rate limit does not get in the way of the load."""
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        env={"TOKEX_RATE_LIMIT": "100000", "TOKEX_RATE_BURST": "100000"},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def clients(
    db_url: str, server_process: ServerProcess
) -> AsyncIterator[tuple[TokexClient, list[TokexClient]]]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=1, price_min=1, price_max=1000)
    )
    traders = []
    for i in range(2):
        p = await operator.create_account(Role.PROVIDER, f"p{i}")
        provider = operator.as_account(p)
        await provider.list_capacity("cap", SYM, 10_000_000)
        b = await operator.create_account(Role.BUYER, f"b{i}")
        await operator.deposit(f"d{i}", b.account_id, 10**12)
        traders += [provider, operator.as_account(b)]
    yield operator, traders
    await operator.aclose()


async def load(client: TokexClient, side: Side, rng: random.Random, acked: dict[str, OrderView],
               tag: str) -> None:  # fmt: skip
    n = 0
    while True:
        n += 1
        coid = f"{tag}-{n}"
        price = rng.randint(95, 105)
        try:
            view = await client.place_order(
                PlaceOrder(client_order_id=coid, instrument=SYM, side=side,
                           quantity=1000 * rng.randint(1, 5), price=price)
            )  # fmt: skip
            acked[coid] = view
        except TokexApiError:
            pass  # refused (e.g. rate limited): not acknowledged
        except (httpx.HTTPError, OSError):
            await asyncio.sleep(0.05)  # the server is down: not acknowledged


async def test_kill_9_under_load_loses_nothing_acknowledged(
    clients: tuple[TokexClient, list[TokexClient]], server_process: ServerProcess, db_url: str
) -> None:
    _, traders = clients
    rng = random.Random(1234)
    acked: dict[str, tuple[TokexClient, OrderView]] = {}
    for round_ in range(CRASHES):
        seen: list[dict[str, OrderView]] = [{} for _ in traders]
        tasks = [
            asyncio.create_task(
                load(t, Side.SELL if i % 2 == 0 else Side.BUY, rng, seen[i], f"r{round_}t{i}")
            )
            for i, t in enumerate(traders)
        ]
        await asyncio.sleep(rng.uniform(0.3, 0.9))
        server_process.kill()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for i, orders in enumerate(seen):
            for coid, view in orders.items():
                acked[coid] = (traders[i], view)
        server_process.start()
        # Everything acknowledged so far is there, as acknowledged or further along.
        for coid, (client, view) in acked.items():
            now = await client.order(view.order_id)
            assert now.client_order_id == coid
            assert now.filled_quantity >= view.filled_quantity
            assert now.quantity == view.quantity
    assert len(acked) > 50, "the load produced too few acknowledged orders to mean anything"
    # A retry of an acknowledged client order id returns the same order.
    for coid, (client, view) in list(acked.items())[:20]:
        retry = await client.place_order(
            PlaceOrder(client_order_id=coid, instrument=SYM, side=view.side,
                       quantity=view.quantity, price=view.price)
        )  # fmt: skip
        assert retry.order_id == view.order_id
    server_process.stop()

    conn = await asyncpg.connect(db_url)
    try:
        fills = await conn.fetchval("SELECT count(*) FROM market_fills")
        fill_txs = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE code = 'fill'"
        )
        assert fills == fill_txs > 0
        mismatched = await conn.fetchval(
            """SELECT count(*) FROM market_orders o
                WHERE o.filled_quantity <> coalesce(
                      (SELECT sum(quantity) FROM market_fills f
                        WHERE f.maker_order_id = o.order_id OR f.taker_order_id = o.order_id), 0)"""
        )
        assert mismatched == 0
        sums = await conn.fetch(
            """SELECT a.asset, sum(e.amount) AS total FROM ledger_entries e
                 JOIN ledger_accounts a ON a.id = e.account_id GROUP BY a.asset"""
        )
        assert sums and all(r["total"] == 0 for r in sums)
        recovered, _, _ = await load_state(conn)
        recomputed = nonzero((await recomputed_balances(conn)).items())
        assert nonzero((b.account, (b.available, b.held)) for b in recovered.all_balances()) == (
            recomputed
        )
        assert all(
            available >= 0 and held >= 0
            for account, (available, held) in recomputed.items()
            if account.kind not in ("bank", "issuance")
        )
    finally:
        await conn.close()
