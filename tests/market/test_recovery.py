"""Bounded recovery of the books on a real PostgreSQL: a snapshot plus the journal's tail
rebuilds what a replay from the first row does, a snapshot is exactly the journal up to
its position even while batches go on, a failed commit rebuilds from the snapshot in
memory, and a database without snapshots still recovers by replaying everything."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import asyncpg
import pytest

from ledger.errors import LedgerUnavailable
from ledger.rows import BatchRows
from ledger.store import nonzero
from market.replay import apply_entry
from market.sequencer import (
    CancelAllOp,
    CloseInstrumentOp,
    CreateInstrumentOp,
    DepositOp,
    ListingOp,
    PlaceOp,
    Sequencer,
)
from market.snapshot_writer import SnapshotPolicy
from market.snapshots import SettlingEngine, load_snapshots
from market.store import journal_from
from schemas.errors import DomainError
from schemas.market import Side, TimeInForce, TradingState
from schemas.trading import CreateInstrument, Deposit, Listing, OrderView, PlaceOrder

A = "llama-3.1-70b/2026-12-01T00Z/1h"
B = "llama-3.1-70b/2026-12-01T01Z/1h"
LOT = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000_000  # before both windows

    def __call__(self) -> int:
        return self.now


def every(entries: int) -> SnapshotPolicy:
    return SnapshotPolicy(interval_entries=entries, interval_seconds=3600)


async def open_seq(
    db_url: str, clock: Clock, policy: SnapshotPolicy, hooks: Sequence[object] = ()
) -> Sequencer:
    return await Sequencer.open(db_url, clock=clock, snapshots=policy, hooks=hooks)  # type: ignore[arg-type]


async def crash(s: Sequencer) -> None:
    """The process dies: no close, so no last snapshot of the books or the ledger."""
    for task in (s._ticker, s._runner):
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await s.ledger.wait_for_snapshot()
    await s.wait_for_snapshot()
    s._conn.terminate()
    s.ledger._conn.terminate()
    for conn in (s.ledger._snapshot_conn, s._snapshots._conn):
        if conn is not None:
            conn.terminate()


async def place(
    s: Sequencer, account: str, coid: str, side: Side, lots: int, price: int, **kw: object
) -> OrderView:
    instrument = kw.pop("instrument", B)
    req = PlaceOrder(
        client_order_id=coid, instrument=instrument, side=side, quantity=lots * LOT,
        price=price, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    view = await s.submit(PlaceOp(account, req))
    assert isinstance(view, OrderView)
    return view


async def trade_a_while(s: Sequencer, clock: Clock) -> None:
    """Two instruments; A trades and settles, then an engine-wide mass cancel and a GTD
    expiry reach every book (the settled one too); B goes on trading."""
    for i, symbol in enumerate((A, B)):
        await s.submit(
            CreateInstrumentOp(
                CreateInstrument(symbol=symbol, lot_size=LOT, tick_size=5, price_min=5,
                                 price_max=100_000, taker_fee_bps=20)
            )
        )  # fmt: skip
        for p in ("p1", "p2"):
            await s.submit(ListingOp(p, Listing(listing_id=f"l{i}", instrument=symbol,
                                                quantity=100 * LOT)))  # fmt: skip
    for b in ("b1", "b2"):
        await s.submit(DepositOp(Deposit(deposit_id=f"d-{b}", account_id=b, amount=10**9)))
    n = 0
    for symbol in (A, B, A, B):
        for price in (100, 105, 110):
            n += 1
            await place(s, "p1", f"s{n}", Side.SELL, 2, price, instrument=symbol)
            await place(s, "b1", f"b{n}", Side.BUY, 1, price, instrument=symbol)
            await place(s, "b2", f"r{n}", Side.BUY, 1, price - 50, instrument=symbol)
    await place(s, "b2", "gtd", Side.BUY, 1, 40, tif=TimeInForce.GTD, expire_at_ms=clock.now + 500)
    await s.submit(CloseInstrumentOp(A))
    clock.now += 1_000
    await s.submit(CancelAllOp("b1", None))  # reaches the settled book too
    for n in range(5):
        await place(s, "p2", f"late-s{n}", Side.SELL, 1, 120)
        await place(s, "b2", f"late-b{n}", Side.BUY, 1, 120)


def state(s: Sequencer) -> tuple[object, ...]:
    balances = nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances())
    return (
        s.engine.state_hash(),
        balances,
        s.settlements(),
        sorted(s.market.live),
        s.market.next_order_id,
    )


async def test_a_snapshot_and_the_tail_rebuild_what_the_first_row_does(db_url: str) -> None:
    clock = Clock()
    s = await open_seq(db_url, clock, every(25))
    await trade_a_while(s, clock)
    before = state(s)
    await crash(s)

    s = await open_seq(db_url, clock, every(25))
    try:
        assert state(s) == before
        rebuilt = s.last_rebuild
        assert rebuilt is not None and rebuilt.base_seq is not None
        assert (
            0 < rebuilt.replayed < 25
            and rebuilt.base_seq + rebuilt.replayed == s.market.next_journal_seq
        )
        # The settled book is only its instrument and seq; it still answers, closed.
        assert s.engine.book(A).to_snapshot().client_order_ids == []
        assert s.instrument_view(A).state == "settled"
        sold = await place(s, "p1", "after", Side.SELL, 1, 120)
        assert sold.status == "open"
        after = state(s)
    finally:
        await crash(s)
    s = await open_seq(db_url, clock, SnapshotPolicy(enabled=False))  # from the first row
    try:
        assert s.last_rebuild is not None and s.last_rebuild.base_seq is None
        assert state(s) == after
    finally:
        await s.close()


async def stored_snapshots_match_the_journal(db_url: str, settled: Sequence[str]) -> list[int]:
    """Each stored snapshot is the journal replayed up to its position: no entry more or
    less (settled books reduced in both). Returns the positions."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            snaps = await load_snapshots(conn)
            entries = [entry async for _, entry in journal_from(conn, 0)]
    finally:
        await conn.close()
    for snap in snaps:
        replayed = SettlingEngine()
        for entry in entries[: snap.journal_seq]:
            apply_entry(replayed, entry)
        stored = snap.restore()
        # Settled by then (here an instrument closes and settles in one batch).
        done = [
            symbol
            for symbol in settled
            if symbol in stored and stored.book(symbol).trading_state is TradingState.CLOSED
        ]
        replayed.reduce_settled(done)
        stored.reduce_settled(done)
        assert stored.state_hash() == replayed.state_hash(), snap.journal_seq
    return [snap.journal_seq for snap in snaps]


async def test_a_snapshot_written_while_batches_go_on_is_its_journal_position(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_seq(db_url, clock, every(20))
    blocker = await asyncpg.connect(db_url)
    try:
        await trade_a_while(s, clock)
        await s.wait_for_snapshot()
        written = await stored_snapshots_match_the_journal(db_url, [A])
        assert written
        # Hold the table: the next snapshot is taken, its write waits, batches go on.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE market_snapshots IN ACCESS EXCLUSIVE MODE")
        for n in range(25):
            await place(s, "b1", f"more{n}", Side.BUY, 1, 60)
        assert s._snapshots.memory is not None
        assert s._snapshots.memory.journal_seq > max(written)  # taken, not yet written
        before = state(s)
        # Crash with that write in flight: its row never lands, half or whole.
        for task in (s._ticker, s._runner):
            assert task is not None
            task.cancel()
        s._conn.terminate()
        s.ledger._conn.terminate()
        assert s._snapshots._conn is not None
        s._snapshots._conn.terminate()
        await tx.rollback()
    finally:
        await blocker.close()
    await asyncio.sleep(0.2)
    assert await stored_snapshots_match_the_journal(db_url, [A]) == written

    s = await open_seq(db_url, clock, every(20))
    try:
        assert state(s) == before
        assert s.last_rebuild is not None and s.last_rebuild.base_seq == max(written)
    finally:
        await s.close()  # a clean stop writes a last snapshot: at the journal's end
    positions = await stored_snapshots_match_the_journal(db_url, [A])
    assert max(positions) == s.market.next_journal_seq


class FailOnce:
    """A commit hook whose write fails when armed (a database error mid-batch)."""

    def __init__(self) -> None:
        self.armed = False

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        if self.armed:
            self.armed = False
            await conn.execute("SELECT 1 / 0")

    async def reload(self, conn: asyncpg.Connection) -> None:
        return None


async def test_a_failed_commit_rebuilds_from_the_snapshot_in_memory(db_url: str) -> None:
    clock, hook = Clock(), FailOnce()
    s = await open_seq(db_url, clock, every(20), hooks=[hook])
    try:
        await trade_a_while(s, clock)
        memory = s._snapshots.memory
        assert memory is not None and memory.journal_seq > 0
        await s.wait_for_snapshot()
        conn = await asyncpg.connect(db_url)  # memory, not the database, is where it starts
        try:
            await conn.execute("DELETE FROM market_snapshots")
        finally:
            await conn.close()
        before = state(s)
        hook.armed = True
        with pytest.raises(LedgerUnavailable):
            await place(s, "b1", "lost", Side.BUY, 1, 120)
        assert state(s) == before
        rebuilt = s.last_rebuild
        assert rebuilt is not None
        assert rebuilt.base_seq == memory.journal_seq  # not the first row
        assert rebuilt.replayed == s.market.next_journal_seq - memory.journal_seq
        retry = await place(s, "b1", "lost", Side.BUY, 1, 120)
        assert retry.status == "filled"
    finally:
        await s.close()


async def test_a_database_without_snapshots_recovers_by_replaying_everything(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_seq(db_url, clock, SnapshotPolicy(enabled=False))  # as before snapshots
    await trade_a_while(s, clock)
    before = state(s)
    await s.close()
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM market_snapshots") == 0
    finally:
        await conn.close()

    s = await open_seq(db_url, clock, every(20))
    try:
        assert state(s) == before
        rebuilt = s.last_rebuild
        assert rebuilt is not None and rebuilt.base_seq is None
        assert rebuilt.replayed == s.market.next_journal_seq > 20
        await s.wait_for_snapshot()  # a long replay is followed by a snapshot at once
        assert await stored_snapshots_match_the_journal(db_url, [A]) == [s.market.next_journal_seq]
    finally:
        await crash(s)
    s = await open_seq(db_url, clock, every(20))
    try:
        assert s.last_rebuild is not None and s.last_rebuild.replayed == 0
        assert state(s) == before
    finally:
        await s.close()


def accounts_of(s: Sequencer, symbol: str) -> list[object]:
    """The ledger accounts in memory that belong to `symbol`: its token's and escrows."""
    return [
        b.account
        for b in s.ledger.balances()
        if b.account.asset == f"tok:{symbol}" or b.account.kind == f"escrow:{symbol}"
    ]


async def test_a_settled_instruments_accounts_are_retired_and_recovery_does_not_load_them(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_seq(db_url, clock, every(25))
    await trade_a_while(s, clock)
    assert accounts_of(s, A) == [] and accounts_of(s, B) != []  # retired when A settled
    before = state(s)
    opened = len(s.ledger.balances())
    await crash(s)
    conn = await asyncpg.connect(db_url)
    try:
        ever = await conn.fetchval("SELECT count(*) FROM ledger_accounts")
        retired = await conn.fetchval(
            """SELECT count(*) FROM ledger_retired_accounts r
                 JOIN ledger_accounts a ON a.id = r.account_id
                WHERE a.asset = $1 OR a.kind = $2""",
            f"tok:{A}", f"escrow:{A}",
        )  # fmt: skip
        # A's entitlement and escrow (b1 bought from p1), capacities (p1, p2) and
        # issuance: all of A's accounts, and only them.
        assert retired == 5 == await conn.fetchval("SELECT count(*) FROM ledger_retired_accounts")
        assert retired == await conn.fetchval(
            "SELECT count(*) FROM ledger_accounts WHERE asset = $1 OR kind = $2",
            f"tok:{A}", f"escrow:{A}",
        )  # fmt: skip
    finally:
        await conn.close()
    for restart in ("after a crash", "after a clean stop"):
        s = await open_seq(db_url, clock, every(25))
        try:
            assert state(s) == before, restart
            assert len(s.ledger.balances()) == opened == ever - retired
            assert accounts_of(s, A) == []
            assert all(total == 0 for total in s.ledger.asset_totals().values())
            with pytest.raises(DomainError) as refused:
                await s.submit(ListingOp("p1", Listing(listing_id="late", instrument=A,
                                                       quantity=LOT)))  # fmt: skip
            assert refused.value.code == "instrument_settled"
        finally:
            await s.close()
