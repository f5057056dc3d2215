"""The receipt journal (market.gateway.journal) on a real PostgreSQL: a call's end waits for
its receipt's own commit, not for the sequencer's batch in flight; the charge follows and
clears the receipt's owed row; a crash between the two is charged at the restart, once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from market.clearing import rules as settlement
from market.gateway.journal import ReceiptJournal
from market.gateway.meter import Meter, Reservations
from market.gateway.progress import close_crashed
from market.sequencer import Sequencer
from tests.market.gateway.gateway_support import RECEIPTS
from tests.market.test_delivery import SYM, Clock, open_market, trade
from tests.market.test_gateway_charge import receipt

GROUP = ("b1", "p1", SYM)


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url, Clock())
    await trade(s, "b1", "p1", 10_000, 3_000, "1")
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def locked(db_url: str, table: str) -> AsyncIterator[None]:
    """`table` locked by another session (ACCESS EXCLUSIVE) while the block runs."""
    blocker = await asyncpg.connect(db_url)
    lock = blocker.transaction()
    await lock.start()
    try:
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await lock.rollback()
        await blocker.close()


def entitlement(seq: Sequencer) -> int:
    return seq.ledger.balance(settlement.entitlement(*GROUP)).total


async def owed(conn: asyncpg.Connection) -> set[str]:
    return {
        r["receipt_id"] for r in await conn.fetch("SELECT receipt_id FROM gateway_receipts_owed")
    }


async def charged_in(conn: asyncpg.Connection, receipt_id: str) -> str | None:
    row = await conn.fetchrow(
        f"SELECT charged_in FROM {RECEIPTS} WHERE receipt_id = $1", receipt_id
    )
    assert row is not None, "no such receipt"
    value: str | None = row["charged_in"]
    return value


async def test_a_calls_end_waits_for_its_receipt_not_for_the_ledger_batch_in_flight(
    seq: Sequencer, journal: ReceiptJournal, db_conn: asyncpg.Connection, db_url: str
) -> None:
    """The ledger's batches are stuck (a lock on the delivery table): receipts still become
    durable at once and their calls may end; the charges commit once the batch can."""
    reservations = Reservations()
    meter = Meter(lambda: seq, reservations, 60.0, journal.bound(""), 2)
    meter.start()
    before = entitlement(seq)
    async with locked(db_url, "market_deliveries"):
        first, second = receipt("b1", 30), receipt("b1", 12)
        for r in (first, second):
            reservations.reserve(GROUP, r.key_id, r.tokens)
            reservations.finish(GROUP, r.key_id, r.tokens, r.tokens)
        await asyncio.wait_for(meter.charge(first), 5)  # durable; its charge is now stuck
        await asyncio.sleep(0.2)
        assert seq.ledger.in_flight, "the charge's batch should be waiting on the lock"
        await asyncio.wait_for(meter.charge(second), 5)  # not behind the stuck batch
        assert await owed(db_conn) == {first.receipt_id, second.receipt_id}
        assert await charged_in(db_conn, first.receipt_id) is None
        assert reservations.outstanding[GROUP] == 42  # not charged yet: still promised away
    try:
        await meter.flush()  # the second's charge (the first's committed when the lock went)
        await meter.flush()
    finally:
        await meter.close()
    assert entitlement(seq) == before - 42
    assert await owed(db_conn) == set() and reservations.outstanding == {}
    assert await charged_in(db_conn, first.receipt_id) is not None
    assert await charged_in(db_conn, second.receipt_id) is not None
    assert meter.waited == {1: 2}  # each waited for its own journal commit only


async def test_a_receipt_whose_charge_a_crash_cut_is_charged_at_the_restart_once(
    seq: Sequencer, db_pool: asyncpg.Pool, db_conn: asyncpg.Connection, journal: ReceiptJournal
) -> None:
    """Journaled, then the crash: no charge. The next start charges it (its key's use
    counted once), a second start finds nothing owed."""
    before = entitlement(seq)
    cut = receipt("b1", 25)
    await journal.write([cut], "")
    assert await owed(db_conn) == {cut.receipt_id} and entitlement(seq) == before

    reservations = Reservations()  # a new process: nothing in memory
    meter = Meter(lambda: seq, reservations, 60.0, journal.bound(""))
    meter.start()
    try:
        assert await close_crashed(db_pool, meter, reservations) == []  # no open call
        assert reservations.outstanding == {GROUP: 25}  # promised away until it commits
        await meter.flush()
        assert await close_crashed(db_pool, meter, reservations) == []
        await meter.flush()
    finally:
        await meter.close()
    assert entitlement(seq) == before - 25
    assert await owed(db_conn) == set() and reservations.outstanding == {}
    assert reservations.key_used == {cut.key_id: 25}
    assert await charged_in(db_conn, cut.receipt_id) is not None
    (n,) = await db_conn.fetchrow(
        "SELECT count(*) FROM gateway_delivery_receipts WHERE receipt_id = $1", cut.receipt_id
    )
    assert n == 1  # charged once


async def test_a_failed_journal_write_tells_the_call_and_is_written_again(
    seq: Sequencer, db_pool: asyncpg.Pool, db_conn: asyncpg.Connection, db_url: str
) -> None:
    """The receipts table is locked past the write's timeout: the waiting call hears 503
    `ledger_unavailable`; once the lock goes the receipt is written and charged anyway."""
    reservations = Reservations()
    journal = ReceiptJournal(db_pool, timeout_s=0.3)
    meter = Meter(lambda: seq, reservations, 0.2, journal.bound(""))
    meter.start()
    r = receipt("b1", 9)
    reservations.reserve(GROUP, r.key_id, r.tokens)
    reservations.finish(GROUP, r.key_id, r.tokens, r.tokens)
    before = entitlement(seq)
    async with locked(db_url, "gateway_receipts_owed"):
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(meter.charge(r), 5)
        assert getattr(failed.value, "code", None) == "ledger_unavailable"
    try:
        for _ in range(50):  # written again after the flush period, then charged
            if entitlement(seq) == before - 9:
                break
            await asyncio.sleep(0.1)
    finally:
        await meter.close()
        await journal.close()
    assert entitlement(seq) == before - 9 and await owed(db_conn) == set()
    assert await charged_in(db_conn, r.receipt_id) is not None


async def test_the_journal_holds_at_most_its_writers_connections_whatever_comes(
    db_pool: asyncpg.Pool, db_conn: asyncpg.Connection
) -> None:
    """The sequencer process's journal takes every gateway process's writes: more at once
    than its writers wait for one, rather than take the pool's last connections (kept,
    they would never go back to a write waiting on the pool)."""
    journal = ReceiptJournal(db_pool, 2)
    try:
        written = [receipt("b1", n + 1) for n in range(12)]
        await asyncio.wait_for(asyncio.gather(*(journal.write([r], "gw1") for r in written)), 10)
        assert len(journal._idle) <= 2
        async with db_pool.acquire() as other, db_pool.acquire() as more:  # the rest is free
            assert await other.fetchval("SELECT 1") == await more.fetchval("SELECT 1") == 1
    finally:
        await journal.close()
    assert await owed(db_conn) == {r.receipt_id for r in written}
