"""The ledger writer against a real PostgreSQL: durability, idempotency, concurrency,
append-only tables, restart and recovery from a failed commit."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from ledger.errors import LedgerBusy, LedgerUnavailable
from ledger.rows import BatchRows
from ledger.store import (
    WriterSession,
    end_writer_sessions,
    load_state,
    nonzero,
    recomputed_balances,
    stored_balances,
)
from ledger.writer import Ledger, WriterState
from schemas.ledger import Account, HoldCreate, HoldPost, Posting, Transaction
from tests.ledger.writer_support import holds, submit
from tests.support.pg import PgServer

BANK = Account("exchange", "USD", "bank")
ALICE = Account("alice", "USD", "cash")
BOB = Account("bob", "USD", "cash")


def transfer(tx_id: str, src: Account, dst: Account, amount: int, time: int = 10) -> Transaction:
    return Transaction(
        id=tx_id, code="transfer", time=time, postings=(Posting(src, -amount), Posting(dst, amount))
    )


async def assert_books_agree(db_url: str, ledger: Ledger | None = None) -> None:
    """Balances recomputed from the entries = what recovery loads (snapshot + journal)
    = the writer's memory = the stored snapshot once the writer has written one."""
    conn = await asyncpg.connect(db_url)
    try:
        recomputed = nonzero((await recomputed_balances(conn)).items())
        recovered, _, _ = await load_state(conn)
        assert nonzero((b.account, (b.available, b.held)) for b in recovered.all_balances()) == (
            recomputed
        )
        if ledger is not None:
            memory = nonzero((b.account, (b.available, b.held)) for b in ledger.balances())
            assert memory == recomputed
            assert {h: v.remaining for h, v in recovered.holds.items()} == await holds(ledger)
            await ledger.snapshot()
            assert nonzero((await stored_balances(conn)).items()) == recomputed
    finally:
        await conn.close()


@pytest.fixture
async def ledger(db_url: str):  # type: ignore[no-untyped-def]
    writer = await Ledger.open(db_url)
    yield writer
    await writer.close()


async def test_200_concurrent_transfers_never_overdraw_one_account(
    ledger: Ledger, db_url: str
) -> None:
    assert (await submit(ledger, transfer("deposit", BANK, ALICE, 100))).committed
    results = await asyncio.gather(
        *(submit(ledger, transfer(f"t{i}", ALICE, BOB, 1)) for i in range(200))
    )
    assert sum(r.committed for r in results) == 100
    assert {r.code for r in results if not r.committed} == {"insufficient_funds"}
    assert ledger.balance(ALICE).available == 0
    assert ledger.balance(BOB).available == 100
    await assert_books_agree(db_url, ledger)


async def test_concurrent_transfers_of_mixed_sizes_commit_exactly_the_affordable_ones(
    ledger: Ledger, db_url: str
) -> None:
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    amounts = [(i % 7) + 1 for i in range(200)]
    results = await asyncio.gather(
        *(submit(ledger, transfer(f"t{i}", ALICE, BOB, n)) for i, n in enumerate(amounts))
    )
    spent = sum(n for n, r in zip(amounts, results, strict=True) if r.committed)
    assert spent == 100 - ledger.balance(ALICE).available
    assert 0 <= ledger.balance(ALICE).available < 7  # nothing affordable was refused...
    # ...in queue order: each refusal came when the balance could not cover it.
    balance = 100
    for n, r in zip(amounts, results, strict=True):
        assert r.committed == (n <= balance)
        balance -= n if r.committed else 0
    await assert_books_agree(db_url, ledger)


async def test_idempotency_same_body_same_result_different_body_conflict(
    ledger: Ledger, db_url: str
) -> None:
    first = await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    again = await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    assert first == again and first.committed and first.index == 0
    assert ledger.balance(ALICE).available == 100  # applied once
    conflict = await submit(ledger, transfer("deposit", BANK, ALICE, 101))
    assert not conflict.committed and conflict.code == "idempotency_conflict"
    assert ledger.size == 1


async def test_a_failed_id_stays_failed_even_after_funds_arrive(ledger: Ledger) -> None:
    failed = await submit(ledger, transfer("pay", ALICE, BOB, 50))
    assert not failed.committed and failed.code == "insufficient_funds"
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    retried = await submit(ledger, transfer("pay", ALICE, BOB, 50))
    assert retried == failed
    assert ledger.balance(BOB).available == 0


async def test_a_batch_accepts_and_rejects_each_transaction_on_its_own(
    ledger: Ledger, db_url: str
) -> None:
    results = await ledger.apply_batch(
        [
            transfer("d", BANK, ALICE, 10),
            transfer("too-much", ALICE, BOB, 11),
            transfer("ok", ALICE, BOB, 4),
            transfer("ok", ALICE, BOB, 4),  # same id, same body in one batch: one effect
            transfer("ok", ALICE, BOB, 5),  # same id, other body
        ]
    )
    assert [r.committed for r in results] == [True, False, True, True, False]
    assert results[2] == results[3]
    assert results[4].code == "idempotency_conflict"
    assert ledger.balance(BOB).available == 4
    await assert_books_agree(db_url, ledger)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries",
        "UPDATE ledger_transactions SET code = 'forged'",
        "DELETE FROM ledger_transactions",
        "TRUNCATE ledger_transactions CASCADE",
        "UPDATE ledger_accounts SET owner = 'mallory'",
        "DELETE FROM ledger_holds",
        "UPDATE ledger_rejections SET code = 'x'",
    ],
)
async def test_entry_tables_refuse_changes_in_the_database_itself(
    ledger: Ledger, db_url: str, statement: str
) -> None:
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    await submit(
        ledger,
        Transaction(
            id="h", code="hold", time=10, holds=(HoldCreate(hold_id="H", account=ALICE, amount=1),)
        ),
    )
    await submit(ledger, transfer("nope", ALICE, BOB, 1000))
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 4
    finally:
        await conn.close()


async def test_the_database_enforces_the_floor_on_stored_balances(
    ledger: Ledger, db_url: str
) -> None:
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    await ledger.snapshot()
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE ledger_balances SET available = -1 WHERE available = 100")
    finally:
        await conn.close()


async def test_a_second_writer_is_refused(ledger: Ledger, db_url: str) -> None:
    with pytest.raises(LedgerBusy):
        await Ledger.open(db_url)


async def test_the_session_of_a_writer_given_up_is_ended_so_the_next_can_write(
    ledger: Ledger, db_url: str
) -> None:
    """A writer cut off from the server (a partition: the server never hears the client
    go) keeps its session and the writer lock; the next writer ends that session first."""
    sessions = await _writer_sessions(db_url)
    with pytest.raises(LedgerBusy):
        await Ledger.open(db_url)
    assert await end_writer_sessions(db_url, sorted(sessions)) == 0  # none left
    second = await Ledger.open(db_url)
    await submit(second, transfer("deposit", BANK, ALICE, 100))
    await second.close()
    assert await end_writer_sessions(db_url, []) == 0


async def _writer_sessions(url: str) -> set[WriterSession]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """SELECT pid, backend_start FROM pg_stat_activity
                WHERE application_name = 'tokex-writer' AND datname = current_database()"""
        )
    finally:
        await conn.close()
    return {WriterSession(row["pid"], row["backend_start"]) for row in rows}


async def test_ending_a_given_up_writers_sessions_spares_another_databases_writer(
    ledger: Ledger, db_url: str, pg: PgServer, pg_template: str
) -> None:
    """Two exchanges on one server, in two databases: the pids one gave up may by now be
    sessions of the other's writer (pids are reused), which it must not end."""
    async with pg.fresh_database(pg_template) as other_url:
        theirs = await Ledger.open(other_url)
        try:
            sessions = await _writer_sessions(other_url)
            assert sessions
            await end_writer_sessions(db_url, sorted(sessions), wait_s=0.5)
            assert await _writer_sessions(other_url) == sessions
            await submit(theirs, transfer("deposit", BANK, ALICE, 100))  # its writer lives on
        finally:
            await theirs.close()


async def test_a_session_begun_after_the_one_given_up_under_its_pid_is_not_ended(
    db_url: str,
) -> None:
    """The writer given up had a session under pid P that ended; P is now a later session
    (pids are reused): ending the old writer's sessions leaves it alone."""
    ledger = await Ledger.open(db_url)
    try:
        sessions = await _writer_sessions(db_url)
        earlier = [WriterSession(s.pid, s.started - timedelta(seconds=1)) for s in sessions]
        assert await end_writer_sessions(db_url, earlier, wait_s=0.5) == 0
        assert await _writer_sessions(db_url) == sessions
        await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    finally:
        await ledger.close()


async def test_a_given_up_writer_names_the_sessions_it_had(db_url: str) -> None:
    ledger = await Ledger.open(db_url, snapshot_every=1)
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    await ledger.wait_for_snapshot()  # its snapshot connection is open too
    sessions = await _writer_sessions(db_url)
    try:
        assert set(ledger.abandon()) == sessions
        assert await end_writer_sessions(db_url, ledger.abandon()) == 0
    finally:
        await ledger.close()


async def test_a_failed_commit_leaves_no_trace_in_memory_or_database(
    ledger: Ledger, db_url: str
) -> None:
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))

    async def failing(conn: asyncpg.Connection, rows: BatchRows) -> None:
        rows.insert("ledger_rejections", ("tx_id",), [(None,)])  # NOT NULL: the write fails

    with pytest.raises(LedgerUnavailable):
        await ledger.apply_batch([transfer("lost", ALICE, BOB, 60)], extra=failing)
    assert ledger.balance(ALICE).available == 100
    assert ledger.size == 1
    await assert_books_agree(db_url, ledger)
    # The id was never recorded: it can be submitted again and succeed.
    again = await submit(ledger, transfer("lost", ALICE, BOB, 60))
    assert again.committed and again.index == 1
    await assert_books_agree(db_url, ledger)


async def test_balances_and_holds_survive_a_database_restart(db_url: str, pg: PgServer) -> None:
    writer = await Ledger.open(db_url)
    await submit(writer, transfer("deposit", BANK, ALICE, 100))
    await submit(
        writer,
        Transaction(
            id="h",
            code="hold",
            time=10,
            holds=(HoldCreate(hold_id="H", account=ALICE, amount=70, expires_at=99),),
        ),
    )
    await submit(
        writer,
        Transaction(
            id="p",
            code="post",
            time=11,
            postings=(Posting(BOB, 20),),
            holds=(HoldPost(hold_id="H", amount=20),),
        ),
    )
    before = nonzero((b.account, (b.available, b.held)) for b in writer.balances())
    await writer.close()

    pg.restart(mode="immediate")  # a crash of PostgreSQL: WAL replay on start

    reopened = await Ledger.open(db_url)
    try:
        after = nonzero((b.account, (b.available, b.held)) for b in reopened.balances())
        assert after == before
        await assert_books_agree(db_url, reopened)
        hold = (await holds(reopened)).get("H")
        assert hold is not None and hold == 50
        assert reopened.size == 3
        # Idempotency survives too, and the hold expires as it would have.
        assert (await submit(reopened, transfer("deposit", BANK, ALICE, 100))).index == 0
        async with reopened.batch() as batch:
            expired = [batch.apply(tx) for tx in batch.state.expiries(100)]
        assert [r.committed for r in expired] == [True]
        assert reopened.balance(ALICE).available == 80
        await assert_books_agree(db_url, reopened)
    finally:
        await reopened.close()


async def test_a_crash_between_snapshots_loses_nothing_committed(db_url: str) -> None:
    writer = await Ledger.open(db_url, snapshot_every=4)
    await submit(writer, transfer("deposit", BANK, ALICE, 100))
    await submit(
        writer,
        Transaction(
            id="h", code="hold", time=10, holds=(HoldCreate(hold_id="H", account=ALICE, amount=9),)
        ),
    )
    for i in range(9):
        await submit(writer, transfer(f"t{i}", ALICE, BOB, i + 1))
    await writer.wait_for_snapshot()  # snapshots are written in the background
    # The background snapshots may have caught up with every batch: one more after a
    # snapshot that took all there was, so that the crash comes between snapshots.
    await writer.snapshot()
    await submit(writer, transfer("t9", ALICE, BOB, 1))
    before = nonzero((b.account, (b.available, b.held)) for b in writer.balances())
    size = writer.size
    await writer.wait_for_snapshot()
    writer._conn.terminate()  # the process dies: no close, no final snapshot

    conn = await asyncpg.connect(db_url)
    try:
        snapshot_index = await conn.fetchval("SELECT next_index FROM ledger_snapshot")
    finally:
        await conn.close()
    assert 0 < snapshot_index < size  # recovery has a journal to replay

    reopened = await Ledger.open(db_url)
    try:
        assert reopened.size == size
        assert nonzero((b.account, (b.available, b.held)) for b in reopened.balances()) == before
        hold = (await holds(reopened)).get("H")
        assert hold is not None and hold == 9
        await assert_books_agree(db_url, reopened)
    finally:
        await reopened.close()


async def test_a_staged_batch_that_raises_leaves_no_trace(ledger: Ledger, db_url: str) -> None:
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    with pytest.raises(RuntimeError):
        async with ledger.batch() as batch:
            assert batch.apply(transfer("a", ALICE, BOB, 70)).committed
            # A later check in the same batch sees the earlier effect.
            assert batch.state.balance(ALICE).available == 30
            assert not batch.apply(transfer("b", ALICE, BOB, 31)).committed
            raise RuntimeError("the caller failed half-way")
    assert ledger.balance(ALICE).available == 100
    assert ledger.size == 1
    async with ledger.batch(["a"]) as batch:
        assert batch.apply(transfer("a", ALICE, BOB, 70)).index == 1
    assert ledger.balance(BOB).available == 70
    await assert_books_agree(db_url, ledger)


async def test_a_retry_at_a_later_time_is_the_same_request(ledger: Ledger) -> None:
    """The caller stamps the time when it applies a request; a retry comes later."""
    first = await submit(ledger, transfer("deposit", BANK, ALICE, 100, time=10))
    retry = await submit(ledger, transfer("deposit", BANK, ALICE, 100, time=99))
    assert retry == first and ledger.balance(ALICE).available == 100
    refused = await submit(ledger, transfer("pay", ALICE, BOB, 500, time=11))
    assert (await submit(ledger, transfer("pay", ALICE, BOB, 500, time=12))) == refused


async def test_snapshots_land_in_order_while_batches_keep_coming(db_url: str) -> None:
    """Background snapshots are written one at a time, in the order taken: what recovery
    loads (snapshot + journal) is always the committed truth."""
    writer = await Ledger.open(db_url, snapshot_every=2)
    try:
        await submit(writer, transfer("deposit", BANK, ALICE, 10_000))
        for i in range(40):
            await asyncio.gather(
                writer.apply_batch(
                    [transfer(f"a{i}", ALICE, BOB, 7), transfer(f"b{i}", BOB, ALICE, 2)]
                ),
                writer.wait_for_snapshot(),
            )
        await writer.wait_for_snapshot()
        conn = await asyncpg.connect(db_url)
        try:
            recovered, _, _ = await load_state(conn)
            recomputed = nonzero((await recomputed_balances(conn)).items())
        finally:
            await conn.close()
        assert nonzero((b.account, (b.available, b.held)) for b in recovered.all_balances()) == (
            recomputed
        )
        assert writer.balance(BOB).available == 40 * 5
    finally:
        await writer.close()


async def test_the_writer_says_where_it_is_and_a_closed_one_writes_nothing(db_url: str) -> None:
    writer = await Ledger.open(db_url)
    assert (writer.state, writer.healthy) == (WriterState.OPEN, True)

    async def failing(conn: asyncpg.Connection, rows: BatchRows) -> None:
        rows.insert("ledger_rejections", ("tx_id",), [(None,)])  # NOT NULL: the write fails

    with pytest.raises(LedgerUnavailable):
        await writer.apply_batch([transfer("deposit", BANK, ALICE, 100)], extra=failing)
    assert writer.state is WriterState.OPEN  # reloaded from the database: nothing lost
    await writer.close()
    assert (writer.state, writer.healthy) == (WriterState.CLOSED, False)
    with pytest.raises(LedgerUnavailable):
        await writer.apply_batch([transfer("deposit", BANK, ALICE, 100)])
