"""Journal rows written outside the exchange (the app role may INSERT into the journal,
the Merkle nodes and the checkpoints) are not replayed into a served ledger nor signed."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from ledger.canonical import transaction_bytes
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.log import CheckpointForged, UnsignedJournal, open_ledger
from ledger.merkle import MerkleFrontier
from ledger.note import Signer
from schemas.ledger import Account, Bucket, CommittedTransaction, Entry, Posting, Transaction

ORIGIN = "test.tokex/ledger"
BANK = Account("exchange", "USD", "bank")
ALICE = Account("alice", "USD", "cash")


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


async def _honest_deposit(db_url: str, signer: Signer) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    try:
        deposit = Transaction(
            id="d", code="deposit", time=1, postings=(Posting(BANK, -100), Posting(ALICE, 100))
        )
        [result] = await ledger.apply_batch([deposit])
        assert result.committed
    finally:
        await ledger.close()


async def _forge_tail(conn: asyncpg.Connection, amount: int) -> CommittedTransaction:
    """Append a bank-to-Alice transaction at the next index, as the app role could."""
    n = await conn.fetchval("SELECT max(idx) + 1 FROM ledger_transactions")
    ids = {r["kind"]: r["id"] for r in await conn.fetch("SELECT id, kind FROM ledger_accounts")}
    entries = (Entry(BANK, Bucket(0), -amount), Entry(ALICE, Bucket(0), amount))
    tx = CommittedTransaction(n, "forged", "deposit", 2, entries, (), {})
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO ledger_transactions VALUES ($1, 'forged', 'deposit', 2, '\\x00', $2)",
            n,
            transaction_bytes(tx),
        )
        await conn.execute(
            "INSERT INTO ledger_entries VALUES ($1, 0, $2, 0, $4), ($1, 1, $3, 0, $5)",
            n,
            ids["bank"],
            ids["cash"],
            -amount,
            amount,
        )
    return tx


async def _checkpoints(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch("SELECT tree_size FROM ledger_checkpoints ORDER BY tree_size")
    return [r["tree_size"] for r in rows]


async def test_a_forged_tail_is_refused_naming_its_index_and_not_signed(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    await _honest_deposit(db_url, signer)
    await _forge_tail(db_conn, 9_000_000)
    with pytest.raises(UnsignedJournal, match="from index 1 on") as refused:
        await open_ledger(db_url, signer)
    assert refused.value.code == "ledger_regressed"  # a 503, like a database gone back
    assert await _checkpoints(db_conn) == [1]  # nothing signed over it
    # Every restart refuses it again; the operator may accept it explicitly.
    with pytest.raises(UnsignedJournal):
        await open_ledger(db_url, signer)
    ledger, log = await open_ledger(db_url, signer, accept_unsigned=True)
    try:
        assert (ledger.balance(ALICE).available, log.size) == (9_000_100, 2)
    finally:
        await ledger.close()


async def test_a_forged_tail_with_forged_nodes_and_checkpoint_is_refused(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    """The app role may also add the leaf and a checkpoint row for it: with the right root
    (hashes are public) but no signature by the log's key, it is refused at load."""
    await _honest_deposit(db_url, signer)
    tx = await _forge_tail(db_conn, 9_000_000)
    frontier = MerkleFrontier()
    bodies = await db_conn.fetch("SELECT body FROM ledger_transactions ORDER BY idx")
    nodes = []
    for row in bodies:
        nodes.extend(frontier.append(hashlib.sha256(b"\x00" + bytes(row["body"])).digest()))
    stored = {
        (r["level"], r["idx"])
        for r in await db_conn.fetch("SELECT level, idx FROM ledger_merkle_nodes")
    }
    new = [n for n in nodes if (n[0], n[1]) not in stored]
    await db_conn.executemany("INSERT INTO ledger_merkle_nodes VALUES ($1, $2, $3)", new)
    forger = Signer.generate(ORIGIN)  # a key of the forger's own: not the log's
    root = frontier.root()
    note = sign_checkpoint(
        Checkpoint(origin=ORIGIN, size=frontier.size, root_hash=root, time_ms=tx.time), forger
    )
    await db_conn.execute(
        "INSERT INTO ledger_checkpoints (tree_size, note, root, time_ms, key)"
        " VALUES ($1, $2, $3, $4, $5)",
        frontier.size,
        note,
        root,
        tx.time,
        signer.verifier().encode(),
    )
    with pytest.raises(CheckpointForged, match="not signed by the log's key"):
        await open_ledger(db_url, signer)


async def test_a_row_at_an_index_the_log_signed_is_refused_by_the_database(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    await _honest_deposit(db_url, signer)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db_conn.execute(
            "INSERT INTO ledger_transactions VALUES (0, 'again', 'deposit', 2, '\\x00', '\\x00')"
        )


async def test_an_honest_restart_is_served(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    await _honest_deposit(db_url, signer)
    ledger, log = await open_ledger(db_url, signer)
    try:
        assert (ledger.balance(ALICE).available, log.size) == (100, 1)
    finally:
        await ledger.close()


async def test_a_forged_tail_found_by_a_reload_after_a_failure_is_not_served(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    """The writer reloads from the database after a failed commit (and the exchange
    reopens after an outage): a tail appended meanwhile is refused there too, and
    memory keeps what the log signed."""
    ledger, log = await open_ledger(db_url, signer)
    try:
        deposit = Transaction(
            id="d", code="deposit", time=1, postings=(Posting(BANK, -100), Posting(ALICE, 100))
        )
        await ledger.apply_batch([deposit])
        await _forge_tail(db_conn, 9_000_000)
        with pytest.raises(UnsignedJournal, match="from index 1 on"):
            await ledger._recover()
        assert (ledger.balance(ALICE).available, log.size) == (100, 1)
        assert not ledger.healthy
    finally:
        await ledger.close()
    assert await _checkpoints(db_conn) == [1]
