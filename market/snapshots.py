"""Snapshots of the books, so that recovery replays only the journal's tail.

A `MarketSnapshot` is the matching engine's state (`MatchingEngine.snapshot()`) after
every `market_journal` entry below `journal_seq` and none above, with the sequencer's
time then. It is taken on the sequencer's loop between two batches (memory then holds
exactly what is committed), and written later, on a connection of its own, as one row of
`market_snapshots`: the state and its journal position go in together or not at all.
Recovery loads the newest row it can decode and replays the journal from its
`journal_seq`; with none, from the first row.

Each row is sealed (migration 0019): its position, time, format and a SHA-256 of its
engine bytes signed with the key that signs the ledger's checkpoints (`ledger.seal`'s
`SnapshotSealer`, the Merkle log). The exchange's database role may write this table,
so recovery loads only a row whose seal holds (`stored_snapshots` with a sealer): a row
written outside the exchange (books with resting orders no hold backs) is skipped, and
the journal of commands replayed from an older sealed row, or from its first row.

Settled instruments are never replayed: once an instrument has settled, its book is
reduced to what can still matter (`SettlingEngine.reduce_settled`): its instrument, closed, and its
next seq. Nothing reaches a settled book any more but the engine-wide commands (a mass
cancel answers it with a reject, which takes a seq), so that is all it needs; the client
order ids it had seen are dropped (the sequencer refuses orders on a settled instrument
before the engine, and `market_orders` keeps each `client_order_id` for good). The
sequencer reduces a book as soon as its settlement commits, and recovery does the same
at its end, so a replay and the running exchange hold the same books, hash for hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Final

import asyncpg
import msgspec

from ledger.seal import SnapshotSealer
from market.book import OrderBook
from market.engine import MatchingEngine
from market.errors import InvalidSnapshot
from schemas.market import BookSnapshot

#: Version of what a row of `market_snapshots` means (the engine bytes carry their own).
SNAPSHOT_FORMAT: Final = 1

#: Snapshots kept: the newest, and one to fall back on if it does not decode.
KEEP_SNAPSHOTS: Final = 2

#: The first line of every sealed message (a seal never passes for another signature).
SEAL_CONTEXT: Final = b"tokex market snapshot v1\n"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The books after every journal entry below `journal_seq` (and none above)."""

    journal_seq: int
    time_ms: int
    engine: bytes

    def restore(self) -> SettlingEngine:
        """The engine as it was; `InvalidSnapshot` if the bytes do not decode."""
        return SettlingEngine.restore_from(self.engine)

    def seal_message(self) -> bytes:
        """What the seal signs: the position, time and format, and the engine's SHA-256
        (megabytes: computed off the event loop by `_seal_message`)."""
        head = f"{self.journal_seq}\n{self.time_ms}\n{SNAPSHOT_FORMAT}\n".encode()
        return SEAL_CONTEXT + head + hashlib.sha256(self.engine).digest()


async def _seal_message(snap: MarketSnapshot) -> bytes:
    return await asyncio.to_thread(snap.seal_message)


def take(engine: MatchingEngine, journal_seq: int, time_ms: int) -> MarketSnapshot:
    """Copy the engine's state now (its books go on changing; the bytes do not)."""
    return MarketSnapshot(journal_seq=journal_seq, time_ms=time_ms, engine=engine.snapshot())


def _compact(book: BookSnapshot) -> BookSnapshot:
    return msgspec.structs.replace(book, bids=[], asks=[], client_order_ids=[])


class SettlingEngine(MatchingEngine):
    """The matching engine, able to reduce a settled instrument's book in place."""

    __slots__ = ()

    @classmethod
    def restore_from(cls, data: bytes) -> SettlingEngine:
        engine = cls.restore(data)
        assert isinstance(engine, SettlingEngine)
        return engine

    def reduce_settled(self, settled: Collection[str]) -> int:
        """Reduce the books of `settled` instruments (see the module doc) that are not
        yet; return how many were. A settled book with orders is a bug: refused."""
        reduced = 0
        for symbol in settled:
            book = self.book(symbol).to_snapshot()
            if book.bids or book.asks:
                raise InvalidSnapshot(f"settled instrument {symbol} has orders")
            if book.client_order_ids:
                # The engine has no public way to swap a book; this subclass is its own.
                self._books[symbol] = OrderBook.from_snapshot(_compact(book))
                reduced += 1
        return reduced


# -- PostgreSQL ------------------------------------------------------------------------


async def write_snapshot(
    conn: asyncpg.Connection,
    snap: MarketSnapshot,
    now_ms: int,
    sealer: SnapshotSealer | None = None,
) -> None:
    """Store `snap` (one row: state and journal position together), sealed by `sealer`
    if given, and prune the older ones beyond `KEEP_SNAPSHOTS`, in one transaction. A
    snapshot at a position already stored is left as it is if it is the same row (the
    same position holds the same state; a retried write), else a sealed one replaces it
    (a row written outside the exchange there must not keep the sealed one out)."""
    key: str | None = None
    seal: bytes | None = None
    if sealer is not None:
        key, seal = sealer.seal_snapshot(await _seal_message(snap))
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO market_snapshots
                      (journal_seq, time_ms, format, engine, created_ms, seal_key, seal)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (journal_seq) DO UPDATE
                  SET time_ms = EXCLUDED.time_ms, format = EXCLUDED.format,
                      engine = EXCLUDED.engine, created_ms = EXCLUDED.created_ms,
                      seal_key = EXCLUDED.seal_key, seal = EXCLUDED.seal
                WHERE EXCLUDED.seal IS NOT NULL
                  AND (market_snapshots.time_ms, market_snapshots.format, market_snapshots.engine,
                       market_snapshots.seal_key, market_snapshots.seal)
                      IS DISTINCT FROM (EXCLUDED.time_ms, EXCLUDED.format, EXCLUDED.engine,
                                        EXCLUDED.seal_key, EXCLUDED.seal)""",
            snap.journal_seq,
            snap.time_ms,
            SNAPSHOT_FORMAT,
            snap.engine,
            now_ms,
            key,
            seal,
        )
        await conn.execute(
            """DELETE FROM market_snapshots WHERE journal_seq < (
                   SELECT min(journal_seq) FROM (
                       SELECT journal_seq FROM market_snapshots
                        ORDER BY journal_seq DESC LIMIT $1) AS kept)""",
            KEEP_SNAPSHOTS,
        )


async def load_snapshots(
    conn: asyncpg.Connection, sealer: SnapshotSealer | None = None
) -> list[MarketSnapshot]:
    """The stored snapshots of this format, newest first (none: replay from the start)."""
    return [snap async for snap in stored_snapshots(conn, sealer)]


async def stored_snapshots(
    conn: asyncpg.Connection, sealer: SnapshotSealer | None = None
) -> AsyncIterator[MarketSnapshot]:
    """The stored snapshots of this format, newest first, each read only when asked for
    (one is megabytes: recovery reads the second only if the first does not decode).
    With a `sealer`, only those whose seal holds (the others are logged and skipped)."""
    positions = await conn.fetch(
        "SELECT journal_seq FROM market_snapshots WHERE format = $1 ORDER BY journal_seq DESC",
        SNAPSHOT_FORMAT,
    )
    for position in positions:
        row = await conn.fetchrow(
            "SELECT journal_seq, time_ms, engine, seal_key, seal FROM market_snapshots"
            " WHERE journal_seq = $1",
            position["journal_seq"],
        )
        if row is None:
            continue
        snap = MarketSnapshot(
            journal_seq=row["journal_seq"], time_ms=row["time_ms"], engine=row["engine"]
        )
        if sealer is None or await _sealed(snap, row["seal_key"], row["seal"], sealer):
            yield snap


async def _sealed(
    snap: MarketSnapshot, key: str | None, seal: bytes | None, sealer: SnapshotSealer
) -> bool:
    """Whether `seal` is the signature of `snap` by a key this exchange holds (else the
    row was written outside the exchange, or before seals: logged, not loaded)."""
    if key is not None and seal is not None:
        if sealer.snapshot_sealed(key, await _seal_message(snap), bytes(seal)):
            return True
        why = f"its seal (by {key}) does not match its rows"
    else:
        why = "it is not sealed (written before snapshots of the books were sealed, or edited)"
    log.error(
        "market snapshot at journal seq %d is not loaded: %s; the books are rebuilt from"
        " an older snapshot or the journal",
        snap.journal_seq,
        why,
    )
    return False


async def journal_size(conn: asyncpg.Connection) -> int:
    """The seq the next journal entry gets (entries are numbered from 0 without gaps)."""
    size: int = await conn.fetchval("SELECT coalesce(max(seq) + 1, 0) FROM market_journal")
    return size
