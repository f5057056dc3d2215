"""When the sequencer snapshots its books, and the background write of each snapshot.

`SnapshotWriter.after_commit` runs on the sequencer's loop right after a batch commits
(memory then holds exactly what is committed). Every `interval_entries` journal entries,
or after `interval_seconds` if the journal moved at all, it takes a snapshot
(`market.snapshots.take`: the engine's bytes with the journal position, a copy that
later batches do not change) and writes it on a connection of its own, so the sequencer
goes on with the next batch. Taking it is the one part on the loop: copying out the
books costs about 2 µs per resting order here (20,000 resting orders: ~45 ms), once per
interval; the write is off the loop. One write at a time; a snapshot due while one
is being written waits for the next commit. A failed write loses nothing (the journal
has it all): it is logged, and the next snapshot is written in its place.

The last snapshot taken stays in memory (`memory`): the rebuild after a failed commit
starts from it and replays only the journal after it. `close` writes a last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from ledger.seal import SnapshotSealer
from ledger.store import connect_writer
from market.engine import MatchingEngine
from market.snapshots import MarketSnapshot, take, write_snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """How often the books are snapshotted; `enabled=False`: never, and recovery replays
    the journal from its first row (what the exchange did before snapshots)."""

    interval_entries: int = 50_000
    interval_seconds: float = 300.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.interval_entries < 1 or not self.interval_seconds > 0:
            raise ValueError("snapshot intervals must be positive")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class SnapshotWriter:
    """Takes the books' snapshots on schedule and writes them in the background."""

    def __init__(
        self,
        dsn: str,
        policy: SnapshotPolicy,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sealer: SnapshotSealer | None = None,
    ) -> None:
        self._dsn = dsn
        #: Seals each snapshot written (`market.snapshots`; None: written unsealed).
        self._sealer = sealer
        self.policy = policy
        self._monotonic = monotonic
        self.memory: MarketSnapshot | None = None
        self._stored_seq = -1  # the newest position known to be in the database
        self._taken_at = monotonic()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    def reset(self, base: MarketSnapshot | None, *, stored: bool) -> None:
        """After a rebuild from `base` (None: the first row): the new point of departure.
        `stored`: whether `base` is in the database (it is, unless it came from memory
        and its write failed; then the next due snapshot writes a newer one)."""
        self.memory = base
        if base is not None and stored:
            self._stored_seq = max(self._stored_seq, base.journal_seq)

    def due(self, journal_seq: int) -> bool:
        if not self.policy.enabled:
            return False
        last = 0 if self.memory is None else self.memory.journal_seq
        every = self.policy.interval_entries
        if journal_seq // every > last // every:  # at about every multiple of the interval
            return True
        elapsed = self._monotonic() - self._taken_at
        return journal_seq > last and elapsed >= self.policy.interval_seconds

    def after_commit(self, engine: MatchingEngine, journal_seq: int, time_ms: int) -> None:
        """Called between batches: take a snapshot if one is due, write it in the
        background (unless a write is still running: then at a later commit)."""
        if not self.due(journal_seq) or (self._task is not None and not self._task.done()):
            return
        self.take_now(engine, journal_seq, time_ms)

    def take_now(self, engine: MatchingEngine, journal_seq: int, time_ms: int) -> None:
        """Take a snapshot now and start writing it."""
        snap = take(engine, journal_seq, time_ms)
        self.memory = snap
        self._taken_at = self._monotonic()
        self._task = asyncio.create_task(self._write(snap), name="market-snapshot")

    async def wait(self) -> None:
        """Until the snapshot being written (if any) is written or has failed."""
        task = self._task
        if task is not None:  # not raising its error, nor its cancellation (`abandon`)
            await asyncio.wait([task])

    async def _write(self, snap: MarketSnapshot) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect_writer(self._dsn)
            await write_snapshot(self._conn, snap, wall_clock_ms(), self._sealer)
            self._stored_seq = max(self._stored_seq, snap.journal_seq)
        except Exception:
            log.warning("market snapshot at journal seq %d not written", snap.journal_seq,
                        exc_info=True)  # fmt: skip
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None

    def abandon(self) -> None:
        """The database was given up (`Sequencer.abandon`): stop the write under way and
        cut the connection, so closing does not wait on a database that froze."""
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def close(self, engine: MatchingEngine | None, journal_seq: int, time_ms: int) -> None:
        """Write a last snapshot if the journal moved since the newest stored one (pass
        None when memory cannot be trusted, e.g. a rebuild is pending), then let go."""
        await self.wait()
        if self.policy.enabled and engine is not None and journal_seq > max(self._stored_seq, 0):
            self.take_now(engine, journal_seq, time_ms)
            await self.wait()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
