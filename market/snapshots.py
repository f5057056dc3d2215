"""Snapshots of the books, so that recovery replays only the journal's tail.

A `MarketSnapshot` is the matching engine's state (`MatchingEngine.snapshot()`) after
every `market_journal` entry below `journal_seq` and none above, with the sequencer's
time then. It is taken on the sequencer's loop between two batches (memory then holds
exactly what is committed), and written later, on a connection of its own, as one row of
`market_snapshots`: the state and its journal position go in together or not at all.
Recovery loads the newest row it can decode and replays the journal from its
`journal_seq`; with none, from the first row.

Settled instruments are never replayed: once an instrument has settled, its book is
reduced to what can still matter (`compact_settled`): its instrument, closed, and its
next seq. Nothing reaches a settled book any more but the engine-wide commands (a mass
cancel answers it with a reject, which takes a seq), so that is all it needs; the client
order ids it had seen are dropped (the sequencer refuses orders on a settled instrument
before the engine, and `market_orders` keeps each `client_order_id` for good). The
sequencer reduces a book as soon as its settlement commits, and recovery does the same
at its end, so a replay and the running exchange hold the same books, hash for hash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Final

import asyncpg
import msgspec

from market.engine import ENGINE_SNAPSHOT_VERSION, MatchingEngine
from market.errors import InvalidSnapshot
from market.store import JournalEntry, decode_entry
from schemas.market import BookSnapshot, EngineSnapshot

#: Version of what a row of `market_snapshots` means (the engine bytes carry their own).
SNAPSHOT_FORMAT: Final = 1

#: Snapshots kept: the newest, and one to fall back on if it does not decode.
KEEP_SNAPSHOTS: Final = 2

_engine_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The books after every journal entry below `journal_seq` (and none above)."""

    journal_seq: int
    time_ms: int
    engine: bytes

    def restore(self) -> MatchingEngine:
        """The engine as it was; `InvalidSnapshot` if the bytes do not decode."""
        return MatchingEngine.restore(self.engine)


def take(engine: MatchingEngine, journal_seq: int, time_ms: int) -> MarketSnapshot:
    """Copy the engine's state now (its books go on changing; the bytes do not)."""
    return MarketSnapshot(journal_seq=journal_seq, time_ms=time_ms, engine=engine.snapshot())


def _compact(book: BookSnapshot) -> BookSnapshot:
    return msgspec.structs.replace(book, bids=[], asks=[], client_order_ids=[])


def compact_settled(engine: MatchingEngine, settled: Collection[str]) -> MatchingEngine | None:
    """The engine with the books of `settled` instruments reduced (see the module doc), or
    None if they already are. A settled book holds no orders: one that does is a bug."""
    books = [book.to_snapshot() for book in engine.books()]
    changed = False
    for n, book in enumerate(books):
        if book.instrument.symbol not in settled:
            continue
        if book.bids or book.asks:
            raise InvalidSnapshot(f"settled instrument {book.instrument.symbol} has orders")
        if book.client_order_ids:
            books[n] = _compact(book)
            changed = True
    if not changed:
        return None
    data = _engine_encoder.encode(EngineSnapshot(version=ENGINE_SNAPSHOT_VERSION, books=books))
    return MatchingEngine.restore(data)


# -- PostgreSQL ------------------------------------------------------------------------


async def write_snapshot(conn: asyncpg.Connection, snap: MarketSnapshot, now_ms: int) -> None:
    """Store `snap` (one row: state and journal position together) and prune the older
    ones beyond `KEEP_SNAPSHOTS`, in one transaction. A snapshot at a position already
    stored is left as it is (the same position holds the same state)."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO market_snapshots (journal_seq, time_ms, format, engine, created_ms)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (journal_seq) DO NOTHING""",
            snap.journal_seq,
            snap.time_ms,
            SNAPSHOT_FORMAT,
            snap.engine,
            now_ms,
        )
        await conn.execute(
            """DELETE FROM market_snapshots WHERE journal_seq < (
                   SELECT min(journal_seq) FROM (
                       SELECT journal_seq FROM market_snapshots
                        ORDER BY journal_seq DESC LIMIT $1) AS kept)""",
            KEEP_SNAPSHOTS,
        )


async def load_snapshots(conn: asyncpg.Connection) -> list[MarketSnapshot]:
    """The stored snapshots of this format, newest first (none: replay from the start)."""
    rows = await conn.fetch(
        """SELECT journal_seq, time_ms, engine FROM market_snapshots
            WHERE format = $1 ORDER BY journal_seq DESC""",
        SNAPSHOT_FORMAT,
    )
    return [
        MarketSnapshot(journal_seq=r["journal_seq"], time_ms=r["time_ms"], engine=r["engine"])
        for r in rows
    ]


async def journal_from(
    conn: asyncpg.Connection, start: int
) -> AsyncIterator[tuple[int, JournalEntry]]:
    """The journal entries from seq `start` on, in order (run it inside a transaction)."""
    async for row in conn.cursor(
        "SELECT seq, body FROM market_journal WHERE seq >= $1 ORDER BY seq", start
    ):
        yield row["seq"], decode_entry(row["body"])
