"""The Merkle log on a real PostgreSQL: persisted with every batch, signed per batch,
consistent after a failed commit and across restarts, append-only, proofs from the database."""

from __future__ import annotations

import random

import asyncpg
import pytest

from ledger.checkpoint import verify_checkpoint
from ledger.errors import LedgerUnavailable
from ledger.log import (
    LedgerRegressed,
    MerkleLog,
    SigningKeyNotCurrent,
    UnsignedJournal,
    db_consistency_proof,
    db_inclusion_proof,
    db_root,
    open_ledger,
)
from ledger.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion
from ledger.note import Signer
from ledger.rows import BatchRows
from ledger.store import committed_transactions
from ledger.writer import Ledger
from schemas.ledger import Account, Posting, Transaction

ORIGIN = "test.tokex/ledger"
BANK = Account("exchange", "USD", "bank")
USERS = [Account(f"u{i}", "USD", "cash") for i in range(5)]


def deposit(tx_id: str, user: Account, amount: int, time: int = 100) -> Transaction:
    return Transaction(
        id=tx_id,
        code="deposit",
        time=time,
        postings=(Posting(BANK, -amount), Posting(user, amount)),
    )


async def add_batches(ledger: Ledger, batches: int, per_batch: int, tag: str) -> None:
    for b in range(batches):
        txs = [
            deposit(f"{tag}-{b}-{i}", USERS[i % len(USERS)], 1 + i, time=1000 + b)
            for i in range(per_batch)
        ]
        results = await ledger.apply_batch(txs)
        assert all(r.committed for r in results)


async def stored_root(conn: asyncpg.Connection) -> tuple[int, bytes]:
    bodies = await committed_transactions(conn)
    return len(bodies), root_from_leaf_hashes([leaf_hash(b) for b in bodies])


async def latest_checkpoint(conn: asyncpg.Connection, signer: Signer) -> tuple[int, bytes, int]:
    note = await conn.fetchval(
        "SELECT note FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1"
    )
    cp = verify_checkpoint(note, [signer.verifier()], ORIGIN)
    assert cp.time_ms is not None
    return cp.size, cp.root_hash, cp.time_ms


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


async def test_every_batch_is_logged_and_signed(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    ledger, log = await open_ledger(db_url, signer)
    try:
        await add_batches(ledger, batches=7, per_batch=37, tag="a")
        assert log.size == ledger.size == 7 * 37
    finally:
        await ledger.close()
    size, root = await stored_root(db_conn)
    assert (size, root) == (log.size, log.root)
    cp_size, cp_root, cp_time = await latest_checkpoint(db_conn, signer)
    assert (cp_size, cp_root) == (size, root)
    assert cp_time == 1006  # the latest transaction time, not the clock
    sizes = [
        r["tree_size"]
        for r in await db_conn.fetch("SELECT tree_size FROM ledger_checkpoints ORDER BY tree_size")
    ]
    assert sizes == [37 * (b + 1) for b in range(7)]
    # Every checkpoint's root is the root of the tree of that size, recomputed from the DB.
    for s in sizes:
        note = await db_conn.fetchval("SELECT note FROM ledger_checkpoints WHERE tree_size=$1", s)
        cp = verify_checkpoint(note, [signer.verifier()], ORIGIN)
        assert cp.root_hash == await db_root(db_conn, s)


async def test_failed_commit_leaves_the_log_consistent(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    ledger, log = await open_ledger(db_url, signer)
    try:
        await add_batches(ledger, batches=2, per_batch=10, tag="ok")
        before = (log.size, log.root, log.latest_checkpoint)

        async def broken(conn: asyncpg.Connection, rows: BatchRows) -> None:
            rows.insert("ledger_rejections", ("tx_id",), [(None,)])  # NOT NULL: write fails

        with pytest.raises(LedgerUnavailable):
            await ledger.apply_batch([deposit("lost-1", USERS[0], 5)], extra=broken)
        assert (log.size, log.root, log.latest_checkpoint) == before
        await add_batches(ledger, batches=2, per_batch=10, tag="after")
        assert log.size == 40
    finally:
        await ledger.close()
    assert await stored_root(db_conn) == (40, log.root)
    assert await db_conn.fetchval("SELECT count(*) FROM ledger_merkle_nodes WHERE level=0") == 40


async def test_restart_continues_the_same_tree(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    ledger, log = await open_ledger(db_url, signer)
    await add_batches(ledger, batches=3, per_batch=13, tag="one")
    first_root = log.root
    await ledger.close()

    ledger, log = await open_ledger(db_url, signer)
    try:
        assert (log.size, log.root) == (39, first_root)
        await add_batches(ledger, batches=3, per_batch=13, tag="two")
    finally:
        await ledger.close()
    assert await stored_root(db_conn) == (78, log.root)
    proof = await db_consistency_proof(db_conn, 39, 78)
    verify_consistency(39, 78, first_root, log.root, proof)


async def test_another_key_is_refused_at_start(db_url: str, signer: Signer) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await ledger.close()
    with pytest.raises(SigningKeyNotCurrent):
        await open_ledger(db_url, Signer.generate(ORIGIN))


async def test_entries_written_before_the_log_existed_are_caught_up_when_accepted(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    plain = await Ledger.open(db_url)
    await add_batches(plain, batches=2, per_batch=25, tag="plain")
    await plain.close()
    with pytest.raises(UnsignedJournal, match="50 transactions from index 0"):
        await open_ledger(db_url, signer)  # not signed unless the operator says so
    ledger, log = await open_ledger(db_url, signer, accept_unsigned=True)
    try:
        assert log.size == 50
        await add_batches(ledger, batches=1, per_batch=5, tag="logged")
    finally:
        await ledger.close()
    assert await stored_root(db_conn) == (55, log.root)
    assert (await latest_checkpoint(db_conn, signer))[:2] == (55, log.root)


async def test_proofs_from_the_database_verify(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    ledger, _log = await open_ledger(db_url, signer)
    try:
        rng = random.Random(3)
        for b in range(12):
            await add_batches(ledger, batches=1, per_batch=rng.randint(1, 30), tag=f"p{b}")
    finally:
        await ledger.close()
    bodies = await committed_transactions(db_conn)
    leaves = [leaf_hash(b) for b in bodies]
    n = len(leaves)
    for _ in range(60):
        size = rng.randint(1, n)
        index = rng.randrange(size)
        root = root_from_leaf_hashes(leaves[:size])
        verify_inclusion(
            leaves[index], index, size, await db_inclusion_proof(db_conn, index, size), root
        )
        first = rng.randint(1, size)
        verify_consistency(
            first,
            size,
            root_from_leaf_hashes(leaves[:first]),
            root,
            await db_consistency_proof(db_conn, first, size),
        )


@pytest.mark.parametrize("table", ["ledger_merkle_nodes", "ledger_checkpoints", "ledger_keys"])
async def test_log_tables_are_append_only(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, table: str
) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await add_batches(ledger, batches=1, per_batch=3, tag="x")
    await ledger.close()
    column = {"ledger_merkle_nodes": "hash", "ledger_checkpoints": "note", "ledger_keys": "name"}[
        table
    ]
    value = "'x'" if column != "hash" else "'\\x00'::bytea"
    for sql in (
        f"UPDATE {table} SET {column} = {value}",
        f"DELETE FROM {table}",
        f"TRUNCATE {table}",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db_conn.execute(sql)
    assert await db_conn.fetchval(f"SELECT count(*) FROM {table}") > 0


async def test_merkle_log_standalone_signer_name_is_default_origin(signer: Signer) -> None:
    assert MerkleLog(signer).origin == ORIGIN


async def test_the_committed_head_moves_only_when_its_batch_commits(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    """A batch cut by an outage may never reach the database: what the exchange holds it to
    after one (`ops.ledger_head`) is the head of the last batch that committed."""
    ledger, log = await open_ledger(db_url, signer)
    try:
        await add_batches(ledger, batches=2, per_batch=5, tag="ok")
        committed = log.committed_head
        assert (committed.size, committed.root, committed.note) == (
            10, log.root, log.latest_checkpoint,
        )  # fmt: skip
        async with ledger.staged() as batch:
            batch.apply(deposit("staged-1", USERS[0], 5))
        assert log.size == 11 and log.committed_head == committed  # staged, not committed
        await batch.committed()
        assert log.committed_head.size == 11 and log.committed_head.root == log.root
        assert log.committed_head.root == await db_root(db_conn, 11)
    finally:
        await ledger.close()
    reopened, again = await open_ledger(db_url, signer)
    try:
        assert again.committed_head.size == 11 and again.committed_head.note is not None
    finally:
        await reopened.close()


async def test_a_reload_onto_a_database_that_went_back_in_time_signs_no_fork(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    """The writer reloads by itself after a failed commit: if the database lost committed
    entries meanwhile (an older copy restored), the log refuses it rather than sign another
    tree at a size it already signed."""
    ledger, _log = await open_ledger(db_url, signer)
    try:
        await add_batches(ledger, batches=2, per_batch=5, tag="ok")
        signed = await db_conn.fetchval("SELECT count(*) FROM ledger_checkpoints")
        async with db_conn.transaction():  # what a restore of the copy after batch 1 does
            await db_conn.execute("SET LOCAL session_replication_role = replica")
            await db_conn.execute("DELETE FROM ledger_transactions WHERE idx >= 5")
            await db_conn.execute("DELETE FROM ledger_merkle_nodes WHERE idx * 2 ^ level >= 5")
            await db_conn.execute("DELETE FROM ledger_checkpoints WHERE tree_size > 5")

        async def broken(conn: asyncpg.Connection, rows: BatchRows) -> None:
            rows.insert("ledger_rejections", ("tx_id",), [(None,)])  # the commit fails

        with pytest.raises(LedgerUnavailable) as failed:
            await ledger.apply_batch([deposit("lost-1", USERS[0], 5)], extra=broken)
        assert isinstance(failed.value.__cause__, LedgerRegressed), failed.value
        with pytest.raises(LedgerUnavailable):
            await ledger.apply_batch([deposit("fork-1", USERS[0], 5)])
        assert await db_conn.fetchval("SELECT count(*) FROM ledger_checkpoints") == signed - 1
    finally:
        await ledger.close()
