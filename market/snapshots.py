"""Snapshots of the books, so that recovery replays only the journal's tail.

A `MarketSnapshot` is the matching engine's state (`MatchingEngine.snapshot()`) after
every `market_journal` entry below `journal_seq` and none above, with the sequencer's
time then. It is taken on the sequencer's loop between two batches (memory then holds
exactly what is committed), and written later, on a connection of its own, as one row of
`market_snapshots`: the state and its journal position go in together or not at all.
Recovery loads the newest row it can decode and replays the journal from its
`journal_seq`; with none, from the first row.

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

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Final

import asyncpg
import msgspec

from market.book import OrderBook
from market.engine import MatchingEngine
from market.errors import InvalidSnapshot
from schemas.market import BookSnapshot

#: Version of what a row of `market_snapshots` means (the engine bytes carry their own).
SNAPSHOT_FORMAT: Final = 1

#: Snapshots kept: the newest, and one to fall back on if it does not decode.
KEEP_SNAPSHOTS: Final = 2


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The books after every journal entry below `journal_seq` (and none above)."""

    journal_seq: int
    time_ms: int
    engine: bytes

    def restore(self) -> SettlingEngine:
        """The engine as it was; `InvalidSnapshot` if the bytes do not decode."""
        return SettlingEngine.restore_from(self.engine)


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
    return [snap async for snap in stored_snapshots(conn)]


async def stored_snapshots(conn: asyncpg.Connection) -> AsyncIterator[MarketSnapshot]:
    """The stored snapshots of this format, newest first, each read only when asked for
    (one is megabytes: recovery reads the second only if the first does not decode)."""
    positions = await conn.fetch(
        "SELECT journal_seq FROM market_snapshots WHERE format = $1 ORDER BY journal_seq DESC",
        SNAPSHOT_FORMAT,
    )
    for position in positions:
        row = await conn.fetchrow(
            "SELECT journal_seq, time_ms, engine FROM market_snapshots WHERE journal_seq = $1",
            position["journal_seq"],
        )
        if row is not None:
            yield MarketSnapshot(
                journal_seq=row["journal_seq"], time_ms=row["time_ms"], engine=row["engine"]
            )


async def journal_size(conn: asyncpg.Connection) -> int:
    """The seq the next journal entry gets (entries are numbered from 0 without gaps)."""
    size: int = await conn.fetchval("SELECT coalesce(max(seq) + 1, 0) FROM market_journal")
    return size
