"""The dead-man switch (`POST /v1/orders/cancel-after`, `market.sequencer.deadman`) on a
real PostgreSQL: it fires on the sequencer's clock, refreshes and disarms, and a
restart in between neither loses nor repeats its cancel."""

from __future__ import annotations

import asyncio

import asyncpg

from market.sequencer import CancelAfterOp, Sequencer
from schemas.market import Side
from tests.market.test_sequencer import (
    SYM,
    Clock,
    assert_books_balance,
    cash,
    order,
    place,
    setup_market,
)


async def _until_cancelled(s: Sequencer, account: str, within_s: float = 1.0) -> float:
    """Wait for `account` to have no cash on hold; how long it took (s)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while cash(s, account)[1] != 0:
        assert loop.time() - start < within_s, "the switch did not fire in time"
        await asyncio.sleep(0.02)
    return loop.time() - start


async def _mass_cancels(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        bodies = await conn.fetch("SELECT body FROM market_journal ORDER BY seq")
    finally:
        await conn.close()
    return sum(b"mass_cancel" in bytes(r["body"]) for r in bodies)


async def test_an_unrefreshed_switch_cancels_within_a_second(db_url: str) -> None:
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        await setup_market(s)
        await place(s, "b1", order("a", Side.BUY, 1_000, 5_000))
        await place(s, "b2", order("b", Side.BUY, 1_000, 4_000))  # not armed: stays
        armed = await s.submit(CancelAfterOp("b1", 5_000))
        assert armed.deadline_ms == clock.now + 5_000
        clock.now += 4_000
        refreshed = await s.submit(CancelAfterOp("b1", 5_000))  # a refresh moves it on
        assert refreshed.deadline_ms == clock.now + 5_000
        clock.now += 4_000
        await asyncio.sleep(0.6)
        assert cash(s, "b1")[1] == 5_010  # not yet due
        clock.now += 1_001
        await _until_cancelled(s, "b1")
        assert cash(s, "b1") == (1_000_000, 0)
        assert [o.owner for o in s.engine.book(SYM).open_orders()] == ["b2"]
        assert s.market.cancel_after == {}
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_disarmed_switch_cancels_nothing(db_url: str) -> None:
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        await setup_market(s)
        await place(s, "b1", order("a", Side.BUY, 1_000, 5_000))
        await s.submit(CancelAfterOp("b1", 1_000))
        disarmed = await s.submit(CancelAfterOp("b1", 0))
        assert disarmed.deadline_ms is None
        clock.now += 10_000
        await asyncio.sleep(0.6)
        assert cash(s, "b1")[1] == 5_010
    finally:
        await s.close()
    assert await _mass_cancels(db_url) == 0


async def test_a_restart_neither_loses_nor_repeats_the_cancel(db_url: str) -> None:
    """Armed, then the server goes away; the deadline passes while it is down: the
    restarted sequencer fires the switch once, and the next restart does not again."""
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock)
    await setup_market(s)
    await place(s, "b1", order("a", Side.BUY, 1_000, 5_000))
    await s.submit(CancelAfterOp("b1", 2_000))
    await s.close()
    clock.now += 3_000
    s = await Sequencer.open(db_url, clock=clock)
    try:
        assert s.market.cancel_after == {"b1": clock.now - 1_000}  # remembered
        await _until_cancelled(s, "b1")
        await place(s, "b1", order("after", Side.BUY, 1_000, 5_000))  # a new order stays
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        assert s.market.cancel_after == {}
        clock.now += 10_000
        await asyncio.sleep(0.6)
        assert cash(s, "b1")[1] == 5_010  # the new order was not cancelled by a replay
        await assert_books_balance(s, db_url)
    finally:
        await s.close()
    assert await _mass_cancels(db_url) == 1
