"""The sequencer: the one writer of every state change of the exchange.

Every command that changes state (list an instrument, deposit, list capacity, place,
cancel, amend, mass cancel, delivery reports, window closes, withdrawals, and the
clock's GTD expiries and window ends) is an op (`ops`) queued here. The queue is
bounded (`queue_max`): when it is full, `submit` refuses at once with
`ExchangeBusy` (503 `exchange_busy`), and nothing of the request is queued. One task
drains the queue in batches; for each batch it

1. stages everything in memory (`dispatch`, one `match` over the ops, calls the
   stage's handler with the batch context, `batch.Batch`): the clock's expiries and
   window closes (`orders.expire_due`, `lifecycle.due`), then each op: pre-trade
   checks against the ledger's in-memory balances and the matching engine
   (`orders`), the ledger transactions the engine's events turn into (`settle`),
   deposits, listings, deliveries and withdrawals (`treasury`), listings and
   settlements of instruments (`lifecycle`);
2. writes the batch — journal of engine commands, orders, fills, ledger entries,
   Merkle leaves and checkpoint — as one SQL statement (`ledger.rows`), which commits
   it all or nothing;
3. only then answers every op of the batch and publishes the events.

After every rebuild of memory (start-up, a failed commit, a broken state) the market
data is resynced from the rebuilt books (`resync`: the hub's `load`, or the responder's
resync message to the gateways): a commit reported failed may have been durable after
all, its events never published. `resync_soon` does it on request (a broken hub book).

If anything fails before the commit, nothing of the batch is kept: the ledger reloads
itself, the market is rebuilt from the database (`recovery.recover`, as at start-up
after a crash), and every op of the batch is answered `ledger_unavailable` (503).

The engine is pure and deterministic: the journal holds every command it was fed with
the ids and times the sequencer assigned, so replaying it rebuilds exactly the same
books. Commands refused before the engine (unknown instrument, insufficient funds,
idempotent replays) are not journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar, cast

import asyncpg

from ledger.errors import LedgerUnavailable
from ledger.store import WriterSession, connect_writer, connection_alive, writer_session
from ledger.writer import CommitHook, Ledger
from market import metrics
from market.replay import RebuildSummary, Rebuilt
from market.request_context import REQUEST_ID
from market.sequencer import (
    deadman,
    delivery,
    lifecycle,
    orders,
    treasury,
    views,
)
from market.sequencer.batch import Batch, Delivering, Reserved, nothing_delivering, nothing_reserved
from market.sequencer.dispatch import Answer, prior_of, staged_op
from market.sequencer.errors import MAY_HAVE_COMMITTED, ExchangeBusy, SequencerStopped
from market.sequencer.ops import (
    AnyOp,
    Done,
    Failed,
    Op,
    Outcome,
    TickOp,
)
from market.sequencer.pipeline import (
    PIPELINE_DEPTH,
    Flight,
    Pipeline,
    log_batch,
    request_ids_of,
)
from market.sequencer.queries import DepthsQuery, Query
from market.sequencer.recovery import recover
from market.sequencer.state import MarketState
from market.snapshot_writer import SnapshotPolicy, SnapshotWriter, wall_clock_ms
from market.snapshots import MarketSnapshot, SettlingEngine
from schemas.errors import DomainError
from schemas.ledger import Balance
from schemas.market import Depth, Event
from schemas.trading import EntitlementView, FillView, InstrumentView, SettlementView

log = logging.getLogger(__name__)

T = TypeVar("T")

#: After a commit: the batch's engine events, and per order id the fill views of the
#: batch (with fees and client order ids) for the private fill messages.
Publish = Callable[[Sequence[Event], Mapping[int, Sequence[FillView]]], None]
#: After a rebuild: every book at full depth, to load the market data from again.
Resync = Callable[[list[Depth]], None]
Clock = Callable[[], int]

#: Ops the queue holds at most (a batch takes up to `max_batch` of them at a time).
QUEUE_MAX = 10_000
#: Open orders one account may have at most (`orders.place` refuses more with
#: `too_many_open_orders`): with the number of accounts, it bounds the books' memory.
MAX_OPEN_ORDERS = 5_000
#: How long the clock task sleeps between looks at what has come due (s).
TICK_S = 0.25
#: How long past its settlement time an instrument waits for the gateway's calls in
#: flight on it (`lifecycle.due`): 5 minutes, longer than a call streams for.
SETTLE_WAIT_MS = 300_000
#: The longest wait between tries to rebuild memory while the database is unreachable
#: (each op meanwhile is answered 503 at once; the first tries come after `TICK_S`).
REBUILD_BACKOFF_MAX_S = 5.0


class SequencerState(Enum):
    """Where the sequencer is in its life (`Sequencer.state`).

    STARTING -> RUNNING; a failed commit: RUNNING -> RECOVERING -> RUNNING, or BROKEN
    if the rebuild fails too (it is retried before the next batch, and the clock queues
    batches for that). `close`: -> STOPPING (finishes what is queued) -> STOPPED.
    """

    STARTING = "starting"
    RUNNING = "running"
    RECOVERING = "recovering"  # rebuilding the market from the database
    BROKEN = "broken"  # memory may hold a batch that never committed: rebuild first
    STOPPING = "stopping"  # refuses new ops, finishes the queued ones
    STOPPED = "stopped"


@dataclass(slots=True)
class _Ticket(Generic[T]):
    """A queued op and the future its outcome goes to."""

    op: Op[T]
    future: asyncio.Future[Outcome[T]]
    #: The request that queued it (`market.request_context`), for the batch's log lines.
    request_id: str | None = None


def _answer_all(tickets: Sequence[_Ticket[Any]], outcomes: Sequence[Outcome[Any]]) -> None:
    for ticket, outcome in zip(tickets, outcomes, strict=True):
        if not ticket.future.done():
            ticket.future.set_result(outcome)


def _fail_all(tickets: Sequence[_Ticket[Any]], error: DomainError) -> None:
    """Answer every op of a batch that did not commit with the same error."""
    _answer_all(tickets, [Failed(error)] * len(tickets))


class Sequencer:
    """Owns the books, the live orders and (through the ledger) the balances."""

    def __init__(
        self,
        dsn: str,
        ledger: Ledger,
        conn: asyncpg.Connection,
        *,
        currency: str,
        publish: Publish | None,
        clock: Clock,
        max_batch: int,
        queue_max: int,
        snapshots: SnapshotPolicy | None = None,
        max_open_orders: int = MAX_OPEN_ORDERS,
        pipeline_depth: int = PIPELINE_DEPTH,
        settle_wait_ms: int = SETTLE_WAIT_MS,
        resync: Resync | None = None,
    ) -> None:
        if queue_max < 1:
            raise ValueError("the sequencer's queue must hold at least one op")
        self._dsn = dsn
        #: When the books are snapshotted; the last snapshot taken stays in its memory.
        self._snapshots = SnapshotWriter(dsn, snapshots or SnapshotPolicy(), sealer=ledger.sealer)
        #: Where the last rebuild of the books started and how much of the journal it read.
        self.last_rebuild: RebuildSummary | None = None
        self.ledger = ledger
        self._conn = conn
        self.currency = currency
        self._publish = publish
        self._resync = resync
        self._resyncing: asyncio.Task[None] | None = None
        self._clock = clock
        self._max_batch = max_batch
        self.max_open_orders = max_open_orders
        #: Whether the gateway has calls in flight on an instrument (its desk sets this,
        #: `market.gateway.desk`), and how long past its settlement time an instrument
        #: waits for them (`lifecycle.due`).
        self.delivering: Delivering = nothing_delivering
        self.settle_wait_ms = settle_wait_ms
        #: What the gateway's desk holds of each entitlement for its calls (reports and
        #: vouchers may not use it: `batch.Reserved`); set with `delivering`.
        self.reserved: Reserved = nothing_reserved
        #: The market's memory; replaced whole by every rebuild.
        self.market = MarketState(engine=SettlingEngine())
        #: The ledger's epoch when `market` was last rebuilt: a batch is staged under it,
        #: so a failure since (an epoch moved on) refuses every batch until memory is
        #: rebuilt, however the batches after the failed one were scheduled.
        self._memory_epoch = -1
        self._last_time_ms = 0
        self._queue: asyncio.Queue[_Ticket[Any]] = asyncio.Queue(maxsize=queue_max)
        self._runner: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._state = SequencerState.STARTING
        # The batches in flight (`pipeline`). A batch is applied to memory before its
        # commit, so reads of memory (balances, book, entitlements) wait until none is in
        # flight: they never see state that is not committed, or that a failure takes back.
        self._pipeline = Pipeline(pipeline_depth)
        #: How many batches have committed: a reader that also reads the database can
        #: tell whether a commit came between its two reads (and read again).
        self.commits = 0
        #: How many batches were started (the `batch` number of the log lines).
        self._batches = 0
        #: While memory cannot be rebuilt (the database is down): the wait before the
        #: next try, doubled by each failure, and when it ends (`time.monotonic`).
        self._rebuild_backoff_s = 0.0
        self._rebuild_not_before = 0.0
        #: Given its database up (`abandon`, its server sessions then): never rebuilds again.
        self._abandoned = False
        self._sessions: list[WriterSession] = []

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        currency: str = "USD",
        publish: Publish | None = None,
        clock: Clock = wall_clock_ms,
        hooks: Sequence[CommitHook] = (),
        max_batch: int = 500,
        queue_max: int = QUEUE_MAX,
        snapshots: SnapshotPolicy | None = None,
        max_open_orders: int = MAX_OPEN_ORDERS,
        pipeline_depth: int = PIPELINE_DEPTH,
        settle_wait_ms: int = SETTLE_WAIT_MS,
        resync: Resync | None = None,
    ) -> Sequencer:
        """Become the exchange's writer: open the ledger, rebuild the books, start.

        `snapshots`: how often the books are snapshotted (`market.snapshot_writer`);
        recovery starts from the newest snapshot and replays only the journal after it.
        `pipeline_depth`: batches in flight at most (`market.sequencer.pipeline`).
        `resync`: called with every book at full depth after each rebuild (this one
        included), to load the market data from."""
        ledger = await Ledger.open(dsn, hooks=hooks)
        try:
            conn = await connect_writer(dsn)
        except BaseException:
            await ledger.close()
            raise
        sequencer = cls(
            dsn, ledger, conn, currency=currency, publish=publish, clock=clock,
            max_batch=max_batch, queue_max=queue_max, snapshots=snapshots,
            max_open_orders=max_open_orders,
            pipeline_depth=pipeline_depth, settle_wait_ms=settle_wait_ms, resync=resync,
        )  # fmt: skip
        try:
            await sequencer._rebuild()
        except BaseException:
            await conn.close()
            await ledger.close()
            raise
        sequencer._runner = asyncio.create_task(sequencer._run(), name="sequencer")
        sequencer._ticker = asyncio.create_task(sequencer._tick(), name="sequencer-clock")
        return sequencer

    async def close(self) -> None:
        """Finish what is queued, then stop and release the database."""
        broken = self._state is SequencerState.BROKEN or self._abandoned
        self._state = SequencerState.STOPPED if broken else SequencerState.STOPPING
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._resyncing is not None:
            self._resyncing.cancel()
        if self._runner is not None:
            await self._queue.join()
            await self._pipeline.finished()
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        # A last snapshot of the books, unless memory may hold a batch that never committed.
        trusted = not broken and self._state is SequencerState.STOPPING
        market = self.market
        self._state = SequencerState.STOPPED
        await self._snapshots.close(
            market.engine if trusted else None, market.next_journal_seq, self._last_time_ms
        )
        with contextlib.suppress(Exception):
            await self._conn.close()
        await self.ledger.close()

    def abandon(self) -> list[WriterSession]:
        """The supervisor found the database down: give it up for good rather than hang on
        it. The ops of the batches in flight are answered 503 at once, saying they may have
        committed; the connections are cut and nothing reconnects (a new sequencer opens on
        what is committed: `ops.exchange`). Returns the server sessions it had open then
        (`ledger.store.end_writer_sessions`); `close` is all that is left."""
        if not self._abandoned:
            self._abandoned, self._state = True, SequencerState.STOPPED
            for flight in self._pipeline.flights:
                _fail_all(flight.tickets, LedgerUnavailable(MAY_HAVE_COMMITTED))
            own = [] if self._conn.is_closed() else [writer_session(self._conn)]
            self._sessions = [*filter(None, own), *self.ledger.abandon()]
            self._snapshots.abandon()
            self._conn.terminate()
        return self._sessions

    async def wait_for_snapshot(self) -> None:
        """Until the books' snapshot being written in the background (if any) is written."""
        await self._snapshots.wait()

    @property
    def state(self) -> SequencerState:
        return self._state

    @property
    def queue_depth(self) -> int:
        """Ops queued and not yet taken into a batch."""
        return self._queue.qsize()

    @property
    def healthy(self) -> bool:
        """False while the sequencer or its ledger cannot reach the database to rebuild."""
        return self._state is SequencerState.RUNNING and self.ledger.healthy

    @property
    def engine(self) -> SettlingEngine:
        return self.market.engine

    async def _rebuild(self) -> None:
        """Rebuild books, live orders and counters from the database (start-up, failure).

        A lost connection (PostgreSQL restarted) is replaced first. If the rebuild fails,
        the sequencer is BROKEN: it refuses batches (503) and tries again before each next
        one. While stopping, it stays STOPPING (or STOPPED, if the rebuild fails).
        """
        if self._abandoned:
            raise LedgerUnavailable("the exchange gave its database up; it reopens shortly")
        if self._state is not SequencerState.STOPPING:
            self._state = SequencerState.RECOVERING
        epoch = self.ledger.epoch  # what memory will hold: every failure up to here undone
        try:
            if self._conn.is_closed() or not await connection_alive(self._conn):
                self._conn.terminate()
                self._conn = await connect_writer(self._dsn)
            # Start-up: from the newest stored snapshot; after a failed commit: from the
            # last one taken (memory). Either way, then the journal after it.
            memory = self._snapshots.memory
            recovered = await recover(
                self._conn,
                start=memory,
                stored=self._snapshots.policy.enabled,
                sealer=self.ledger.sealer,
            )
        except BaseException:
            stopping = self._state is SequencerState.STOPPING
            self._state = SequencerState.STOPPED if stopping else SequencerState.BROKEN
            raise
        self.market = recovered.market
        self._memory_epoch = epoch
        self._last_time_ms = max(self._last_time_ms, recovered.last_time_ms)
        self._books_rebuilt(recovered.books, memory)
        if self._state is SequencerState.RECOVERING:
            self._state = SequencerState.RUNNING
        self._resync_now()

    def _resync_now(self) -> None:
        """Load the market data from memory (nothing in flight: memory is committed)."""
        if self._resync is None:
            return
        try:
            self._resync(DepthsQuery().answer(self))
        except Exception:
            log.exception("resyncing market data failed")

    def resync_soon(self) -> None:
        """Resync the market data once nothing is in flight (a hub's book broke). While
        memory cannot be trusted, nothing: the rebuild that comes resyncs it."""
        if self._resync is None or (self._resyncing is not None and not self._resyncing.done()):
            return

        async def resync() -> None:
            with contextlib.suppress(DomainError):  # not healthy: the rebuild resyncs
                await self.committed()
                self._resync_now()

        self._resyncing = asyncio.create_task(resync(), name="sequencer-resync")

    def _books_rebuilt(self, books: Rebuilt, memory: MarketSnapshot | None) -> None:
        """Where the snapshots go on from after a rebuild of the books."""
        self._snapshots.reset(books.base, stored=books.base is not memory)
        self.last_rebuild = books.summary()
        base = (
            "the first row" if books.base is None else f"the snapshot at {books.base.journal_seq}"
        )
        log.info("books rebuilt from %s and %d journal entries after it", base, books.replayed)
        if books.replayed >= self._snapshots.policy.interval_entries:  # e.g. a first start
            self._snapshots.after_commit(self.market.engine, books.journal_seq, self._last_time_ms)

    # -- submitting -------------------------------------------------------------------

    def _enqueue(self, ops: Sequence[Op[T]]) -> list[asyncio.Future[Outcome[T]]]:
        """Queue all of `ops` or none: refused whole if the queue has no room for them."""
        if self._state in (SequencerState.STOPPING, SequencerState.STOPPED):
            raise SequencerStopped("the exchange is shutting down")
        queue = self._queue
        if queue.maxsize - queue.qsize() < len(ops):
            raise ExchangeBusy("the exchange is busy; try again shortly")
        loop = asyncio.get_running_loop()
        request_id = REQUEST_ID.get()
        futures: list[asyncio.Future[Outcome[T]]] = []
        for op in ops:
            future: asyncio.Future[Outcome[T]] = loop.create_future()
            queue.put_nowait(_Ticket(op, future, request_id))
            futures.append(future)
        return futures

    async def submit(self, op: Op[T]) -> T:
        """Queue `op`; return its outcome once its batch is durable (or raise its error).
        Refused at once: `SequencerStopped` while closing, `ExchangeBusy` if the queue
        is full."""
        (future,) = self._enqueue([op])
        outcome = await future
        return outcome.unwrap()

    async def submit_all(self, ops: Sequence[Op[T]]) -> list[Outcome[T]]:
        """Queue `ops` one after the other (they may still land in different batches);
        return each one's outcome once durable. For one request's batch of orders.

        All are queued or none: if the queue has no room for every one, this raises
        `ExchangeBusy` for the whole. While closing, each is `Failed(SequencerStopped)`."""
        try:
            futures = self._enqueue(ops)
        except SequencerStopped as stopped:
            return [Failed(stopped) for _ in ops]
        return list(await asyncio.gather(*futures))

    async def _tick(self) -> None:
        """Queue a tick when a resting GTD order or an instrument's window end (or its
        settlement time) has come due, so it happens on time on a quiet exchange; and
        while the state must be rebuilt (the database was lost), so it is retried."""
        while True:
            await asyncio.sleep(TICK_S)
            if not self._queue.empty():
                continue
            now = max(self._last_time_ms, self._clock())
            market = self.market
            if (
                market.gtd_due(now) or market.cancel_after_due(now) or not self.healthy
                or market.next_window_event_ms() <= now
            ):  # fmt: skip
                with contextlib.suppress(DomainError):
                    await self.submit(TickOp())

    # -- one batch ----------------------------------------------------------------------

    async def committed(self) -> None:
        """Wait until no batch is in flight; then, until the next await, memory holds only
        committed state. Read the sequencer's memory right after this, with no await.

        While the state could not be rebuilt after a failed commit (the database is
        unreachable), memory may still hold that batch: then this raises 503 rather than
        let anyone read it."""
        pipeline = self._pipeline
        pipeline.readers += 1
        try:
            await pipeline.idle.wait()
        finally:
            pipeline.readers -= 1
        if not self.healthy:
            raise LedgerUnavailable("the exchange is rebuilding its state; try again shortly")

    async def _run(self) -> None:
        queue, pipeline = self._queue, self._pipeline
        while True:
            tickets = [await queue.get()]
            await pipeline.room()  # the batch grows while the pipeline is full
            while len(tickets) < self._max_batch and not queue.empty():
                tickets.append(queue.get_nowait())
            ops = [cast(AnyOp, ticket.op) for ticket in tickets]
            if self._state is not SequencerState.RUNNING or pipeline.must_drain(ops):
                await pipeline.drain()
            if not pipeline.flights:
                # Readers woken when the last batch ended run first (FIFO), then this starts.
                await asyncio.sleep(0)
            flight = pipeline.begin(tickets)
            try:
                await self._stage_flight(flight)
            except Exception as exc:  # a bug: never let the writer die, and answer every op
                log.exception("sequencer batch failed")
                flight.error, flight.rebuild = exc, True
            pipeline.launch(flight, self._finish)

    async def _stage_flight(self, flight: Flight) -> None:
        """Stage one batch in memory and queue its commit (or note why it failed)."""
        tickets = flight.tickets
        if not await self._ready():
            flight.error = LedgerUnavailable("the exchange cannot reach its database; try again")
            return
        now = max(self._last_time_ms, self._clock())
        self._last_time_ms = now
        self._batches += 1
        number, request_ids = self._batches, request_ids_of(tickets)
        log_batch(log, "batch", number, request_ids, ops=len(tickets))
        started = time.perf_counter()
        try:
            batch, staged, flight.commit = await self._stage(tickets, now)
        except Exception as exc:
            metrics.BATCHES_FAILED.inc()
            log_batch(log, "batch_failed", number, request_ids, error=type(exc).__name__)
            flight.error, flight.rebuild = exc, True
            return
        flight.number, flight.request_ids, flight.started = number, request_ids, started
        # Memory runs ahead: the next batch is staged on this one's orders and books.
        flight.batch = batch
        self.market.committed(batch.orders.values())
        flight.outcomes = [s if isinstance(s, Failed) else Done(s()) for s in staged]
        self._pipeline.quiet = bool(batch.settlements)

    async def _finish(self, flight: Flight) -> None:
        """Once the batch's commit is done (those before it are finished): answer and
        publish it; or, if it failed, keep it for the rebuild once nothing is in flight."""
        pipeline = self._pipeline
        try:
            if flight.error is None and flight.commit is not None:
                try:
                    await flight.commit
                except Exception as exc:
                    flight.error, flight.rebuild = exc, True
            if flight.error is None:
                self._committed(flight)
            elif flight.rebuild or pipeline.broken:
                pipeline.failed.append(flight)
            else:
                _fail_all(flight.tickets, cast(DomainError, flight.error))
        except Exception as exc:  # a bug: answer every op all the same
            log.exception("sequencer batch failed")
            flight.error, flight.rebuild = exc, True
            pipeline.failed.append(flight)
        finally:
            pipeline.end(flight)
            if not pipeline.flights:
                await self._after_failures()
                pipeline.idle.set()
            for _ in flight.tickets:
                self._queue.task_done()

    async def _after_failures(self) -> None:
        """Nothing is in flight: if batches failed, rebuild and answer them all with 503."""
        pipeline = self._pipeline
        failed = pipeline.failed
        if not failed:
            return
        error = failed[0].error
        assert error is not None
        tickets = [ticket for flight in failed for ticket in flight.tickets]
        try:  # the pipeline stays broken (the next batch waits) until memory is rebuilt
            with contextlib.suppress(Exception):  # still broken: retried before the next batch
                await self.ledger.recover_if_broken()
            await self._rebuild_after_failure(error, tickets)
        finally:
            pipeline.failed = []

    def _committed(self, flight: Flight) -> None:
        """The batch is durable: answer, housekeeping, publish."""
        batch, outcomes = flight.batch, flight.outcomes
        assert batch is not None and outcomes is not None
        self.commits += 1
        _answer_all(flight.tickets, outcomes)
        commit_s = time.perf_counter() - flight.started  # staged to durable
        metrics.batch_committed(
            len(flight.tickets), commit_s,
            ((row.status, row.reject_reason) for row in batch.placed.values()), len(batch.fills),
        )  # fmt: skip
        last_seq = batch.journal[-1][0] if batch.journal else None
        log_batch(
            log, "commit", flight.number, flight.request_ids, commit_ms=round(commit_s * 1000, 3),
            ledger_size=self.ledger.size, journal_seq=last_seq,
        )  # fmt: skip
        if self._pipeline.last_in_flight(flight):
            self._after_commit(batch)
        elif batch.settlements:  # not reduced now: memory holds more; rebuilt next batch
            self._state = SequencerState.BROKEN
        if self._publish is not None and batch.events:
            try:
                self._publish(batch.events, batch.fill_views)
            except Exception:
                log.exception("publishing market data failed")

    def _after_commit(self, batch: Batch) -> None:
        """Housekeeping of a committed (and answered) batch: settled books reduced, a
        snapshot taken when due. A failure here must not answer a durable batch with an
        error: a half-reduced memory is rebuilt from the database before the next batch,
        and a snapshot not taken is only taken later."""
        market = self.market
        try:
            market.reduce_settled(v.instrument for v in batch.settlements)
        except Exception:
            log.exception("reducing settled books failed; rebuilding before the next batch")
            self._state = SequencerState.BROKEN
            return
        try:
            self._snapshots.after_commit(market.engine, market.next_journal_seq, self._last_time_ms)
        except Exception:
            log.exception("taking a snapshot of the books failed; the next one is taken later")

    async def _ready(self) -> bool:
        """Whether memory can be trusted for a batch: rebuilt first if it was BROKEN."""
        if self._state is SequencerState.STOPPED:  # broken while stopping: memory untrusted
            return False
        if self._state is SequencerState.BROKEN:
            if time.monotonic() < self._rebuild_not_before:
                return False  # it failed a moment ago: not again until the backoff ends
            try:
                await self._rebuild()
            except Exception as exc:
                self._rebuild_backoff_s = min(
                    REBUILD_BACKOFF_MAX_S, max(TICK_S, 2 * self._rebuild_backoff_s)
                )
                self._rebuild_not_before = time.monotonic() + self._rebuild_backoff_s
                log.warning("sequencer still cannot rebuild its state (again in %.2f s): %s",
                            self._rebuild_backoff_s, exc)  # fmt: skip
                return False
            self._rebuild_backoff_s = 0.0
        return True

    async def _stage(
        self, tickets: Sequence[_Ticket[Any]], now_ms: int
    ) -> tuple[Batch, list[Answer | Failed], asyncio.Future[None] | None]:
        """Stage the batch's ops in memory, on top of the batches in flight; queue their
        commit with the ledger's entries (the future it is done with)."""
        ops = [cast(AnyOp, ticket.op) for ticket in tickets]
        # A failure since memory was rebuilt voids this batch (ledger.staged refuses it):
        # memory may hold the failed batch, as a batch begun before its finisher ran does.
        epoch = self._memory_epoch
        ahead = self._pipeline.placed_ahead()  # before the database is read
        prior = await prior_of(self._conn, ops)
        for placed in ahead:  # not in the database yet, if their commit is not done
            for key, row in placed.items():
                prior.orders.setdefault(key, row)
        ids = [*treasury.external_ids(ops), *delivery.external_ids(ops)]
        async with self.ledger.staged(ids, epoch=epoch) as lb:
            batch = Batch(
                market=self.market, ledger=lb, time_ms=now_ms, currency=self.currency,
                prior=prior, max_open_orders=self.max_open_orders,
                delivering=self.delivering, settle_wait_ms=self.settle_wait_ms,
                reserved=self.reserved,
            )  # fmt: skip
            orders.expire_due(batch)
            deadman.due(batch)
            lifecycle.due(batch)
            staged = [staged_op(op, batch) for op in ops]
            lb.also_write(batch.stage)
        return batch, staged, lb.commit

    async def _rebuild_after_failure(self, exc: Exception, tickets: Sequence[_Ticket[Any]]) -> None:
        """A batch did not commit: take its effects back by rebuilding memory from the
        database, and answer each of its ops with 503 (a retry with the same ids is safe)."""
        log.warning("batch of %d commands not committed: %s", len(tickets), exc)
        try:
            if not self._abandoned:  # else: the supervisor opens a new sequencer
                await self._rebuild()
        except Exception:
            log.exception("sequencer could not rebuild its state; will retry")
        error = exc if isinstance(exc, LedgerUnavailable) else LedgerUnavailable(MAY_HAVE_COMMITTED)
        _fail_all(tickets, error)

    # -- reads ------------------------------------------------------------------------------

    async def ask(self, query: Query[T]) -> T:
        """The answer to `query` (`market.sequencer.queries`) from committed memory."""
        await self.committed()
        return query.answer(self)

    def instrument_view(self, symbol: str) -> InstrumentView:
        return views.instrument_view(self.market.instrument(symbol))

    def instruments(self) -> list[InstrumentView]:
        return views.instruments(self.market)

    def settlements(self) -> list[SettlementView]:
        return views.settlements(self.market)

    def balances_of(self, account_id: str) -> list[Balance]:
        """Every ledger account of this owner (and the escrows and entitlements it is party to)."""
        return views.balances_of(self.ledger.balances(), account_id)

    def entitlements_of(self, account_id: str) -> list[EntitlementView]:
        """Entitlement and escrow the account is party to (see `views.entitlements_of`)."""
        return views.entitlements_of(self.ledger.balances(), account_id)
