"""The seal of the balance snapshot: what is signed, how it is read back and checked.

Why: `ledger_balances` and `ledger_hold_state` are rewritten by every snapshot, so the
exchange's database role may UPDATE and DELETE them (`ops.db_grants`), and start-up loads
them before it replays the journal after `ledger_snapshot.next_index`. Unchecked, an edit
made with the database credentials alone (move money from the bank's account to a buyer's)
would become spendable at the next start. The journal and the entries are append-only
and cannot be edited that way; the snapshot only shortens the replay.

So each snapshot is sealed: `SnapshotDigest` (its index, a SHA-256 of every balance row
and one of every open hold's row, computed by the database over the tables as written) is
signed with the key that signs the checkpoints (`SnapshotSealer`: the Merkle log, whose
key follows rotations). The database computes the digests: a snapshot is written in the
background, and hashing a table's worth of rows in the server's event loop would stall
it. Start-up computes them again over what it loads and checks the signature; one who
holds only database credentials holds no key. A snapshot that fails is not loaded: the
ledger is rebuilt from the journal (`ledger.store.load_sealed`).

The writer also checks the tables before each snapshot it seals (`write_snapshot`): an
edit made while the exchange runs would otherwise be signed over by the next snapshot.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Protocol, runtime_checkable

import asyncpg

from ledger.errors import LedgerCorrupt

#: The first line of every sealed message (so a seal can never pass for another signature).
SEAL_CONTEXT = b"tokex ledger snapshot v1\n"

# One pass over each table, in the database. Rows in a fixed order and fixed-width (or
# length-prefixed) encoding, so the same rows always give the same digest.
_BALANCES_DIGEST = """
SELECT sha256(coalesce(string_agg(int8send(account_id) || int8send(available)
                                  || int8send(held), ''::bytea ORDER BY account_id),
                       ''::bytea))
  FROM ledger_balances
"""
_HOLDS_DIGEST = """
SELECT sha256(coalesce(string_agg(int4send(octet_length(hold_id))
                                  || convert_to(hold_id, 'UTF8') || int8send(remaining),
                                  ''::bytea ORDER BY hold_id COLLATE "C"),
                       ''::bytea))
  FROM ledger_hold_state WHERE remaining > 0
"""


class SnapshotTampered(LedgerCorrupt):
    """The snapshot tables differ from what the exchange last sealed: they were edited
    outside the exchange. Nothing is signed over them; the next snapshot is full."""

    code = "ledger_snapshot_tampered"


class SnapshotDigest(NamedTuple):
    """What a seal covers: the snapshot's index and digests of its two tables."""

    next_index: int
    balances: bytes
    holds: bytes

    def message(self) -> bytes:
        return SEAL_CONTEXT + f"{self.next_index}\n".encode() + self.balances + self.holds


#: The digest of an empty snapshot at index 0 (SQL's sha256 of no bytes is the same).
EMPTY = SnapshotDigest(0, hashlib.sha256(b"").digest(), hashlib.sha256(b"").digest())


@runtime_checkable
class SnapshotSealer(Protocol):
    """Signs and checks snapshot seals (`ledger.log.MerkleLog` is one: a `CommitHook` the
    writer finds among its hooks)."""

    def seal_snapshot(self, message: bytes) -> tuple[str, bytes]:
        """(the verifier key string, its signature of `message`), by the current key."""

    def snapshot_sealed(self, key: str, message: bytes, seal: bytes) -> bool:
        """Whether `key` is a key this exchange holds and `seal` is its signature."""


async def table_digests(conn: asyncpg.Connection) -> tuple[bytes, bytes]:
    """The digests of `ledger_balances` and of the open rows of `ledger_hold_state`."""
    balances: bytes = await conn.fetchval(_BALANCES_DIGEST)
    holds: bytes = await conn.fetchval(_HOLDS_DIGEST)
    return bytes(balances), bytes(holds)


async def current_digest(conn: asyncpg.Connection) -> SnapshotDigest:
    """The digest of the snapshot as the database holds it now."""
    index = await conn.fetchval("SELECT next_index FROM ledger_snapshot")
    return SnapshotDigest(index, *await table_digests(conn))


async def seal_problem(
    conn: asyncpg.Connection, digest: SnapshotDigest, sealer: SnapshotSealer
) -> str | None:
    """Why the stored seal does not vouch for `digest` (None: it does). An empty snapshot
    at index 0 (a new ledger) needs no seal: it holds nothing to trust."""
    row = await conn.fetchrow("SELECT seal_key, seal FROM ledger_snapshot")
    if row is None or row["seal"] is None:
        if digest == EMPTY:
            return None
        return "it is not sealed (written before snapshots were sealed, or edited)"
    if not sealer.snapshot_sealed(row["seal_key"], digest.message(), bytes(row["seal"])):
        return f"its seal (by {row['seal_key']}) does not match its rows"
    return None


async def lock_and_check(
    conn: asyncpg.Connection, expected: SnapshotDigest | None, *, full: bool
) -> None:
    """Inside the snapshot's transaction: lock the snapshot tables against other writers
    until it commits, and check they still hold `expected`, what was sealed last (a `full`
    snapshot replaces every row: it checks nothing). Raises `SnapshotTampered`."""
    await conn.execute(
        "LOCK TABLE ledger_snapshot, ledger_balances, ledger_hold_state IN EXCLUSIVE MODE"
    )
    if full:
        return
    if expected is None:  # nothing sealed to compare with: only a full snapshot may seal
        raise SnapshotTampered("no sealed snapshot to check the tables against")
    if await current_digest(conn) != expected:
        raise SnapshotTampered(
            "the balance snapshot tables were changed outside the exchange since it sealed"
            f" them at index {expected.next_index}: not sealing over them; the next snapshot"
            " replaces them"
        )


async def seal(conn: asyncpg.Connection, next_index: int, sealer: SnapshotSealer) -> SnapshotDigest:
    """After the snapshot's rows are written (same transaction): sign them at `next_index`
    and record the seal. Returns what was sealed."""
    digest = SnapshotDigest(next_index, *await table_digests(conn))
    key, signature = sealer.seal_snapshot(digest.message())
    await conn.execute(
        "UPDATE ledger_snapshot SET next_index = $1, seal_key = $2, seal = $3",
        next_index,
        key,
        signature,
    )
    return digest
