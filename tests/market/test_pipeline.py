"""Pipelined group commit: a batch staged on top of one still committing.

The database is made to hold a batch's commit: another session locks the journal
table in SHARE mode (reads go on, inserts wait), so batch A's statement waits in
PostgreSQL while batch B — an order that crosses A's — is staged on A's memory. Then
A's commit fails (its session is terminated) or the whole server is killed: neither
A nor B may leave any trace, and everything acknowledged before stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger.errors import LedgerUnavailable
from ledger.store import load_state, nonzero, recomputed_balances
from market.client import TokexApiError
from market.sequencer import Sequencer
from schemas.accounts import Role
from schemas.market import Fill, Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.market.test_sequencer import (
    Clock,
    assert_books_balance,
    cash,
    order,
    place,
    setup_market,
)
from tests.support.server import ServerProcess, operator_client


@contextlib.asynccontextmanager
async def journal_held(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A session that holds back every insert into the journal while the block runs."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE market_journal IN SHARE MODE")
            yield conn
    finally:
        await conn.close()


async def waiting_backends(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("SELECT DISTINCT pid FROM pg_locks WHERE NOT granted")
    return [r["pid"] for r in rows]


async def until(check: Callable[[], object], timeout_s: float = 20.0) -> None:
    """Until `check()` (or what it returns, if awaitable) is true."""

    async def wait() -> None:
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout_s)


async def test_a_failed_commit_fails_the_batch_staged_on_it_and_leaves_no_trace(
    db_url: str,
) -> None:
    s = await Sequencer.open(db_url, clock=Clock(), pipeline_depth=2)
    try:
        await setup_market(s)
        book_hash = s.engine.state_hash()
        cash_before = cash(s, "b1")
        balances = nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances())
        async with journal_held(db_url) as holder:
            first = asyncio.create_task(place(s, "b1", order("a", Side.BUY, 10_000, 5_000)))
            await until(lambda: waiting_backends(holder))
            second = asyncio.create_task(place(s, "p1", order("b", Side.SELL, 10_000, 5_000)))
            flights = s._pipeline.flights
            await until(lambda: len(flights) == 2 and flights[1].commit is not None)
            # B was staged on A's memory: it filled against A, whose commit is not done.
            staged = flights[1].batch
            assert staged is not None and any(isinstance(e, Fill) for e in staged.events)
            assert not first.done() and not second.done()
            (writer_pid,) = await waiting_backends(holder)
            await holder.execute("SELECT pg_terminate_backend($1)", writer_pid)
        for task in (first, second):
            with pytest.raises(LedgerUnavailable):
                await task
        assert s.engine.state_hash() == book_hash
        assert nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances()) == balances
        conn = await asyncpg.connect(db_url)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM market_orders WHERE client_order_id IN ('a', 'b')"
            )
            assert found == 0
        finally:
            await conn.close()
        # Both ids are new, and the two trade once resubmitted (the writer reconnected).
        assert (await place(s, "b1", order("a", Side.BUY, 10_000, 5_000))).status == "open"
        assert (await place(s, "p1", order("b", Side.SELL, 10_000, 5_000))).status == "filled"
        assert cash(s, "b1")[0] < cash_before[0]
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


SYM = "llama-3.1-70b/2030-12-01T00Z/1h"


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        env={
            "TOKEX_RATE_LIMIT": "100000",
            "TOKEX_RATE_BURST": "100000",
            "TOKEX_PIPELINE_DEPTH": "2",
        },
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def bid(coid: str, side: Side, price: int = 100) -> PlaceOrder:
    return PlaceOrder(client_order_id=coid, instrument=SYM, side=side, quantity=1000, price=price)


async def test_kill_9_with_two_batches_in_flight_keeps_what_was_acknowledged_only(
    db_url: str, server: ServerProcess
) -> None:
    operator = await operator_client(db_url, server.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=1, price_min=1, price_max=1000)
    )
    seller = operator.as_account(await operator.create_account(Role.PROVIDER, "p"))
    await seller.list_capacity("cap", SYM, 1_000_000)
    buyer_account = await operator.create_account(Role.BUYER, "b")
    await operator.deposit("d", buyer_account.account_id, 10**9)
    buyer = operator.as_account(buyer_account)
    acked = [await buyer.place_order(bid(f"acked-{i}", Side.BUY, 90 + i)) for i in range(5)]
    async with journal_held(db_url) as holder:
        first = asyncio.create_task(buyer.place_order(bid("a", Side.BUY, 200)))
        await until(lambda: waiting_backends(holder))
        second = asyncio.create_task(seller.place_order(bid("b", Side.SELL, 200)))
        await asyncio.sleep(0.5)  # B is staged on A in the server's memory, its commit queued
        assert not first.done() and not second.done()
        server.kill()
        for pid in await waiting_backends(holder):  # the killed server's session, mid-commit
            await holder.execute("SELECT pg_terminate_backend($1)", pid)
    for task in (first, second):
        with pytest.raises((httpx.HTTPError, OSError, TokexApiError)):
            await task
    server.start()
    for view in acked:  # everything acknowledged is there
        assert (await buyer.order(view.order_id)).client_order_id == view.client_order_id
    conn = await asyncpg.connect(db_url)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM market_orders WHERE client_order_id IN ('a', 'b')"
        )
        assert found == 0  # nothing unacknowledged is visible
        assert await conn.fetchval("SELECT count(*) FROM market_fills") == 0
        recovered, _, _ = await load_state(conn)
        recomputed = nonzero((await recomputed_balances(conn)).items())
        assert (
            nonzero((b.account, (b.available, b.held)) for b in recovered.all_balances())
            == recomputed
        )
    finally:
        await conn.close()
    # The book did not keep A either: B, resubmitted, rests instead of trading.
    assert (await seller.place_order(bid("b", Side.SELL, 200))).status == "open"
    await operator.aclose()
