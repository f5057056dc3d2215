"""Rebuild the books: the newest snapshot that decodes, then the journal after it.

`rebuild_books` is the books' part of the sequencer's recovery (start-up, and the
rebuild after a failed commit). It starts from the snapshot it is given (the one the
sequencer keeps in memory), else from the newest stored one (`market.snapshots`) that
decodes, is sealed by the exchange's key (when it has one) and is not ahead of the
journal, else from an empty engine and the journal's
first row (a database from before snapshots, or `enabled=False` in the policy); it then
replays every journal entry from the snapshot's position on and reduces the books of the
settled instruments (`SettlingEngine.reduce_settled`), as the running sequencer does when
they settle. So its work is bounded by what happened since the snapshot, not by all of history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import asyncpg

from ledger.seal import SnapshotSealer
from market.engine import MatchingEngine
from market.errors import InvalidSnapshot
from market.snapshots import (
    MarketSnapshot,
    SettlingEngine,
    journal_size,
    stored_snapshots,
)
from market.store import JournalEntry, ListInstrument, journal_from

log = logging.getLogger(__name__)


class JournalGap(RuntimeError):
    """The journal is not numbered 0, 1, 2, ... where the rebuild reads it."""


@dataclass(frozen=True, slots=True)
class RebuildSummary:
    """What the last rebuild started from and how much it replayed (for logs, benches)."""

    base_seq: int | None  # the snapshot's journal position (None: the first row)
    replayed: int
    journal_seq: int


@dataclass(slots=True)
class Rebuilt:
    """The books after every journal entry below `journal_seq`."""

    engine: SettlingEngine
    journal_seq: int  # the seq of the next entry
    time_ms: int  # the latest time in the snapshot and the entries replayed
    base: MarketSnapshot | None  # the snapshot it started from (None: the first row)
    replayed: int  # journal entries replayed after it

    def summary(self) -> RebuildSummary:
        base = None if self.base is None else self.base.journal_seq
        return RebuildSummary(base, self.replayed, self.journal_seq)


def apply_entry(engine: MatchingEngine, entry: JournalEntry) -> None:
    """Feed one journal entry to the engine, as the sequencer did."""
    if isinstance(entry, ListInstrument):
        engine.add_instrument(entry.instrument)
    else:
        engine.process(entry)


async def _candidates(
    conn: asyncpg.Connection,
    start: MarketSnapshot | None,
    stored: bool,
    sealer: SnapshotSealer | None,
) -> AsyncIterator[MarketSnapshot]:
    if start is not None:
        yield start  # taken from memory by this process: nothing to check
    elif stored:
        async for snap in stored_snapshots(conn, sealer):
            yield snap


async def _base(
    conn: asyncpg.Connection,
    start: MarketSnapshot | None,
    stored: bool,
    sealer: SnapshotSealer | None,
) -> tuple[SettlingEngine | None, MarketSnapshot | None]:
    end = await journal_size(conn)
    async for snap in _candidates(conn, start, stored, sealer):
        if snap.journal_seq > end:
            log.warning(
                "market snapshot at journal seq %d is ahead of the journal (%d): skipped",
                snap.journal_seq,
                end,
            )
            continue
        try:
            return snap.restore(), snap
        except InvalidSnapshot as exc:
            log.warning("market snapshot at journal seq %d skipped: %s", snap.journal_seq, exc)
    return None, None


async def rebuild_books(
    conn: asyncpg.Connection,
    settled: Collection[str],
    *,
    start: MarketSnapshot | None = None,
    stored: bool = True,
    sealer: SnapshotSealer | None = None,
) -> Rebuilt:
    """The books as committed (see the module doc). Run it inside one repeatable-read
    transaction, with `settled` read in the same one: the snapshot, the journal and the
    settlements must be one moment's. With a `sealer`, a stored snapshot is used only if
    its seal holds (`market.snapshots`)."""
    engine, base = await _base(conn, start, stored, sealer)
    if engine is None or base is None:
        engine, next_seq, time_ms = SettlingEngine(), 0, 0
    else:
        next_seq, time_ms = base.journal_seq, base.time_ms
    replayed = 0
    async for seq, entry in journal_from(conn, next_seq):
        if seq != next_seq:
            raise JournalGap(f"journal entry {seq} where {next_seq} belongs")
        apply_entry(engine, entry)
        next_seq = seq + 1
        time_ms = max(time_ms, entry.time)
        replayed += 1
    engine.reduce_settled(settled)
    return Rebuilt(engine, next_seq, time_ms, base, replayed)
