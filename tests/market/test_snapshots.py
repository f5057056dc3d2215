"""The snapshot store of the books (market.snapshots): taking, reducing settled books,
writing and loading on PostgreSQL, and the journal's tail."""

from __future__ import annotations

import asyncpg
import pytest

from market.errors import InvalidSnapshot
from market.snapshots import (
    KEEP_SNAPSHOTS,
    MarketSnapshot,
    SettlingEngine,
    load_snapshots,
    take,
    write_snapshot,
)
from market.store import encode_entry, journal_from
from schemas.market import (
    AdvanceTime,
    Command,
    MassCancel,
    NewOrder,
    SetTradingState,
    Side,
    TradingState,
)
from tests.market.helpers import LOT, instrument

A = "llama-3.1-70b/2026-12-01T00Z/1h"
B = "llama-3.1-70b/2026-12-01T01Z/1h"


def _order(symbol: str, order_id: int, side: Side, price: int, owner: str = "m") -> NewOrder:
    return NewOrder(
        instrument=symbol, order_id=order_id, owner=owner, side=side, quantity=LOT,
        time=1_000 + order_id, price=price, client_order_id=f"c{order_id}",
    )  # fmt: skip


def _engine() -> SettlingEngine:
    """Two books with orders and used client order ids; A then closed (as at settlement)."""
    engine = SettlingEngine([instrument(A), instrument(B)])
    for n, (symbol, side, price) in enumerate(
        [
            (A, Side.BUY, 500),
            (A, Side.SELL, 510),
            (B, Side.BUY, 495),
            (B, Side.SELL, 505),
            (A, Side.BUY, 510),
            (B, Side.SELL, 520),
        ],
        start=1,
    ):
        engine.process(_order(symbol, n, side, price, owner=f"o{n % 3}"))
    engine.process(SetTradingState(instrument=A, state=TradingState.CLOSED, time=2_000))
    return engine


def test_a_snapshot_restores_the_same_books_and_does_not_follow_later_changes() -> None:
    engine = _engine()
    before = engine.state_hash()
    snap = take(engine, journal_seq=8, time_ms=2_000)
    engine.process(_order(B, 9, Side.BUY, 500))
    assert engine.state_hash() != before
    assert snap.restore().state_hash() == before
    assert (snap.journal_seq, snap.time_ms) == (8, 2_000)


def test_undecodable_snapshot_bytes_are_refused() -> None:
    with pytest.raises(InvalidSnapshot):
        MarketSnapshot(journal_seq=1, time_ms=0, engine=b"\x93not an engine").restore()


def test_a_settled_book_keeps_only_its_instrument_and_seq() -> None:
    engine = _engine()
    compacted = _engine()
    assert compacted.reduce_settled({A}) == 1
    book, full = compacted.book(A), engine.book(A)
    assert book.trading_state is TradingState.CLOSED
    assert book.next_seq == full.next_seq
    assert book.to_snapshot().client_order_ids == []
    assert full.to_snapshot().client_order_ids != []
    # The live instrument is untouched; reducing twice changes nothing more.
    assert compacted.book(B).state_hash() == engine.book(B).state_hash()
    assert compacted.reduce_settled({A}) == 0


@pytest.mark.parametrize(
    "command",
    [
        MassCancel(time=3_000, owner="o1"),
        MassCancel(time=3_000, owner=None),
        AdvanceTime(time=9_999),
        MassCancel(time=3_000, owner="o2", instrument=A),
    ],
)
def test_what_still_reaches_a_settled_book_does_the_same_to_a_reduced_one(
    command: Command,
) -> None:
    """Reduce then replay, or replay then reduce: the same books (what recovery relies on)."""
    engine, compacted = _engine(), _engine()
    compacted.reduce_settled({A})
    assert [type(e) for e in engine.process(command)] == [
        type(e) for e in compacted.process(command)
    ]
    assert engine.state_hash() != compacted.state_hash()
    engine.reduce_settled({A})
    assert engine.state_hash() == compacted.state_hash()


def test_a_settled_book_with_orders_is_refused() -> None:
    engine = _engine()
    with pytest.raises(InvalidSnapshot, match="has orders"):
        engine.reduce_settled({B})


async def test_snapshots_are_stored_newest_first_and_pruned(db_conn: asyncpg.Connection) -> None:
    assert await load_snapshots(db_conn) == []
    engine = _engine()
    snaps = [take(engine, journal_seq=seq, time_ms=seq * 10) for seq in (5, 9, 14, 20)]
    for n, snap in enumerate(snaps):
        await write_snapshot(db_conn, snap, now_ms=n)
    stored = await load_snapshots(db_conn)
    assert stored == snaps[::-1][:KEEP_SNAPSHOTS]
    assert stored[0].restore().state_hash() == engine.state_hash()
    # The same position again (a retried write) is no error and changes nothing.
    await write_snapshot(db_conn, snaps[-1], now_ms=99)
    assert await load_snapshots(db_conn) == stored


async def test_a_failed_snapshot_write_leaves_the_stored_ones(db_conn: asyncpg.Connection) -> None:
    engine = _engine()
    kept = [take(engine, journal_seq=seq, time_ms=0) for seq in (3, 4)]
    for snap in kept:
        await write_snapshot(db_conn, snap, now_ms=0)
    with pytest.raises(asyncpg.CheckViolationError):
        await write_snapshot(db_conn, take(engine, journal_seq=-1, time_ms=0), now_ms=0)
    assert await load_snapshots(db_conn) == kept[::-1]


async def test_the_journal_tail_starts_at_the_snapshot(db_conn: asyncpg.Connection) -> None:
    entries = [_order(B, n, Side.BUY, 500) for n in range(1, 6)]
    await db_conn.executemany(
        "INSERT INTO market_journal (seq, time_ms, body) VALUES ($1, $2, $3)",
        [(n, e.time, encode_entry(e)) for n, e in enumerate(entries)],
    )
    async with db_conn.transaction():
        tail = [(seq, entry) async for seq, entry in journal_from(db_conn, 3)]
    assert tail == [(3, entries[3]), (4, entries[4])]
