"""The ledger's single writer, with group commit.

One `Ledger` per database owns the in-memory `LedgerState` and is the only
thing that writes ledger entries. It takes a session advisory lock on its own
connection, so a second writer (another process on the same database) is
refused instead of racing it.

Callers stage a batch (`batch()`, what the sequencer does: apply transactions to
memory as they come, with pre-trade checks against the in-memory state in between)
or hand it a list (`apply_batch`); each batch is written in one SQL statement
(`ledger.rows`: one round trip, atomic) and committed before its caller hears of
it. Nothing is acknowledged before it is durable.

Balances and holds are snapshotted every `snapshot_every` transactions (and
on close); start-up loads the snapshot and replays the journal after it. With a hook that
seals snapshots (`ledger.seal.SnapshotSealer`: the Merkle log), each is signed, and one
whose seal does not hold is not loaded: the ledger is rebuilt from the journal and a full
snapshot is sealed at once.

If writing a batch fails, the in-memory state may hold changes the database
never got, so the writer throws it away and reloads from the database (the
same path as start-up), then answers every caller of that batch with
`LedgerUnavailable`. Where the writer is in that life is one `WriterState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from enum import Enum
from typing import Protocol, runtime_checkable

import asyncpg

from ledger.canonical import request_digest, transaction_bytes
from ledger.errors import IdempotencyConflict, LedgerBusy, LedgerUnavailable, TransactionRejected
from ledger.rows import BatchRows, forget_table_layouts
from ledger.rules import LedgerState
from ledger.seal import SnapshotDigest, SnapshotSealer, SnapshotTampered
from ledger.store import (
    WRITER_LOCK_KEY,
    AccountIds,
    BatchWrite,
    Dirty,
    PriorOutcome,
    Rejection,
    Snapshot,
    WriterSession,
    connect_writer,
    connection_alive,
    load_sealed,
    prior_outcomes,
    stage_batch,
    take_snapshot,
    write_snapshot,
    writer_session,
)
from schemas.ledger import Account, Balance, Transaction, TransactionResult

log = logging.getLogger(__name__)

#: Write a snapshot of balances and holds after this many transactions; recovery
#: replays at most about this many from the journal.
SNAPSHOT_EVERY = 50_000

#: Rows a caller (the sequencer) adds to a batch, written in the same statement. It must
#: not use the connection: an earlier batch's commit may be running on it (`staged`).
ExtraWrite = Callable[[asyncpg.Connection, BatchRows], Awaitable[None]]


class CommitHook(Protocol):
    """Something that must be written with every batch, atomically with it.

    The Merkle log is one: the leaves of a batch, the tree nodes they complete
    and the signed checkpoint are written by the same statement as the entries,
    so a committed transaction is always in the log.
    """

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        """Stage in `rows` what goes with a batch whose committed transactions have these
        canonical bytes, in index order (possibly none). `rows` is written in one
        statement with the batch; `conn` is there to read, not to write."""

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Called after a failed commit: drop in-memory state, reload it from the database."""


@runtime_checkable
class CommitListener(Protocol):
    """A `CommitHook` that wants to hear which batches committed (in commit order)."""

    def committed(self, leaves: int) -> None:
        """The batch whose `write` got this many leaves is committed (it is durable)."""


class WriterState(Enum):
    """Where the writer is: OPEN; a failed commit: OPEN -> RECOVERING (reloading from
    the database) -> OPEN, or BROKEN if the reload fails (retried before the next
    batch; nothing is written until then); `close`: -> CLOSED."""

    OPEN = "open"
    RECOVERING = "recovering"
    BROKEN = "broken"  # memory may hold a batch that never committed
    CLOSED = "closed"


class Ledger:
    """The one writer of the ledger: applies, persists and answers, in batches."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        state: LedgerState,
        ids: AccountIds,
        dirty: Dirty,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        hooks: Sequence[CommitHook] = (),
        sealed: SnapshotDigest | None = None,
    ) -> None:
        self._conn = conn
        self._snapshot_conn: asyncpg.Connection | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._full_snapshot = False
        self._dsn: str | None = None  # set by `open`; lets the writer reconnect
        self._state = WriterState.OPEN
        self._dirty = dirty
        self._snapshot_every = snapshot_every
        self._hooks = tuple(hooks)
        self._listeners = tuple(hook for hook in hooks if isinstance(hook, CommitListener))
        self._sealer = _sealer_of(hooks)
        #: What the snapshot tables hold as last sealed or checked (None: nothing sealed
        #: yet, so the next snapshot with a sealer is full and replaces them).
        self._sealed = sealed
        self._memory = state
        self._ids = ids
        self._lock = asyncio.Lock()
        #: The commit of the last batch staged (commits run one at a time, in order).
        self._tail: asyncio.Future[None] | None = None
        self._staging = False
        self._epoch = 0
        #: Given up for good (`abandon`): never reconnects, writes or reloads again.
        self._abandoned = False
        self._sessions: list[WriterSession] = []  # its server sessions, when it was abandoned

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        snapshot_every: int = SNAPSHOT_EVERY,
        hooks: Sequence[CommitHook] = (),
    ) -> Ledger:
        """Connect, become the single writer, and load the state from the database.

        Each hook's `reload` runs once here too, so it starts from the database.
        """
        conn = await connect_writer(dsn)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", WRITER_LOCK_KEY):
                raise LedgerBusy("another process is already the ledger's writer")
            loaded = await load_sealed(conn, _sealer_of(hooks))
            for hook in hooks:
                await hook.reload(conn)
        except BaseException:
            await conn.close()
            raise
        ledger = cls(
            conn,
            loaded.state,
            loaded.ids,
            loaded.dirty,
            snapshot_every=snapshot_every,
            hooks=hooks,
            sealed=loaded.sealed,
        )
        ledger._dsn = dsn
        if ledger._unsealed:  # rebuilt from the journal: seal it now, the next start is quick
            try:
                await ledger.snapshot()
            except Exception:  # the journal has it all; the next snapshot is full
                log.warning("no sealed snapshot at start-up", exc_info=True)
        return ledger

    async def close(self) -> None:
        """Wait for the batch under way, write a snapshot, release the writer lock."""
        await self.settled()
        async with self._lock:
            try:
                await self._snapshot()
            except Exception:  # the journal has it all; the snapshot only shortens recovery
                log.warning("no snapshot on close: the database is unreachable", exc_info=True)
            finally:
                self._state = WriterState.CLOSED
                with contextlib.suppress(Exception):
                    await self._conn.close()
                if self._snapshot_conn is not None:
                    with contextlib.suppress(Exception):
                        await self._snapshot_conn.close()

    def abandon(self) -> list[WriterSession]:
        """Give the database up for good (the supervisor found it down): cut the writer's
        connections, so a commit waiting on a database that froze fails now, and never
        reconnect, reload or write again; only `close` is left. Returns the server
        sessions it had open then: the first holds the writer lock until it ends
        (`ledger.store.end_writer_sessions`)."""
        if not self._abandoned:
            self._abandoned, self._state = True, WriterState.CLOSED
            conns = [c for c in (self._conn, self._snapshot_conn) if c and not c.is_closed()]
            self._sessions = [s for s in map(writer_session, conns) if s is not None]
            if self._snapshot_task is not None:
                self._snapshot_task.cancel()
            for conn in conns:
                conn.terminate()
        return self._sessions

    async def snapshot(self) -> None:
        """Write the balances and holds changed since the last snapshot, now (recovery
        then replays less). Also waits for a snapshot being written in the background."""
        async with self._lock:
            await self._snapshot()

    @property
    def sealer(self) -> SnapshotSealer | None:
        """What seals the balance snapshots (the Merkle log among the hooks), for other
        snapshots of the exchange to be sealed the same way (the books')."""
        return self._sealer

    @property
    def _unsealed(self) -> bool:
        """Whether snapshots are sealed but the tables hold nothing sealed by this writer."""
        return self._sealer is not None and self._sealed is None

    async def _snapshot(self) -> None:
        await self.settled()
        await self._settle_snapshot_task()
        if self._state is not WriterState.OPEN:  # memory may hold a failed batch: write nothing
            return
        full = self._full_snapshot or self._unsealed
        if (not self._dirty.transactions and not full) or self._conn.is_closed():
            return
        snap = take_snapshot(self._memory, self._ids, self._dirty, full=full)
        async with self._conn.transaction():
            self._sealed = await write_snapshot(self._conn, snap, self._sealer, self._sealed)
        self._dirty = Dirty()
        self._full_snapshot = False

    async def wait_for_snapshot(self) -> None:
        """Wait until a snapshot being written in the background is done (or failed)."""
        await self._settle_snapshot_task()

    async def _settle_snapshot_task(self) -> None:
        # The task stays registered until it is done: while it runs, `_start_snapshot`
        # starts no other. Snapshots are written one at a time, in the order taken, so an
        # older one never lands over a newer one.
        task = self._snapshot_task
        if task is not None:  # not raising its error, nor its cancellation (`abandon`)
            await asyncio.wait([task])
            if self._snapshot_task is task:
                self._snapshot_task = None

    def _start_snapshot(self) -> None:
        """Copy what changed out of memory and write it on a connection of its own, so
        the writer goes on with the next batch (a snapshot of 50,000 transactions' worth
        of accounts and holds would otherwise stall it for a good fraction of a second)."""
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return  # one at a time; this batch's changes go into the next one
        full = self._full_snapshot or self._unsealed
        snap = take_snapshot(self._memory, self._ids, self._dirty, full=full)
        self._dirty = Dirty()
        self._full_snapshot = False
        self._snapshot_task = asyncio.create_task(self._write_snapshot(snap))

    async def _write_snapshot(self, snap: Snapshot) -> None:
        try:
            if self._snapshot_conn is None or self._snapshot_conn.is_closed():
                if self._dsn is None:
                    raise LedgerUnavailable("no database address for the snapshot connection")
                self._snapshot_conn = await connect_writer(self._dsn)
            async with self._snapshot_conn.transaction():
                sealed = await write_snapshot(self._snapshot_conn, snap, self._sealer, self._sealed)
            self._sealed = sealed
        except Exception as exc:
            # Nothing is lost (the journal has it); the next snapshot writes everything.
            if isinstance(exc, SnapshotTampered):
                log.error("%s", exc.message)
            else:
                log.warning("background snapshot failed; the next one is full", exc_info=True)
            self._full_snapshot = True
            if self._snapshot_conn is not None:
                self._snapshot_conn.terminate()
                self._snapshot_conn = None

    # -- reads of the committed in-memory state -----------------------------------

    def balance(self, account: Account) -> Balance:
        return self._memory.balance(account)

    def balances(self) -> list[Balance]:
        return self._memory.all_balances()

    @property
    def size(self) -> int:
        """How many transactions are committed (the next leaf index)."""
        return self._memory.next_index

    def asset_totals(self) -> dict[str, int]:
        return self._memory.asset_totals()

    # -- writes -------------------------------------------------------------------

    async def apply_batch(
        self, txs: Sequence[Transaction], extra: ExtraWrite | None = None
    ) -> list[TransactionResult]:
        """Apply, persist and commit `txs` together (one statement).

        Each transaction is committed or rejected on its own; a replayed id
        gets its first outcome back; `extra` stages rows written in the same
        statement. Returns one result per transaction, in order. Raises
        `LedgerUnavailable` (having changed nothing) if the commit fails.
        """
        async with self.batch(tx.id for tx in txs) as batch:
            results = [batch.apply(tx) for tx in txs]
            if extra is not None:
                batch.also_write(extra)
        return results

    @contextlib.asynccontextmanager
    async def batch(self, ids: Iterable[str] = ()) -> AsyncIterator[LedgerBatch]:
        """Stage transactions in memory, then write and commit them together on exit.

        `ids` are the transaction ids that callers chose (deposit ids, ...),
        looked up first so that a replay gets its first outcome. Ids the caller
        derives itself and knows to be new (from its own sequence numbers)
        need not be listed; should one exist after all, the commit
        fails on the unique index and nothing of the batch is applied.

        Inside the block, `batch.apply(tx)` applies at once to the in-memory
        state (so a later check in the same batch sees it) and `batch.state`
        answers pre-trade questions. If the block raises, or the commit fails,
        the in-memory state is reloaded from the database: nothing of the batch
        remains anywhere. A failed commit raises `LedgerUnavailable`.
        """
        async with self.staged(ids) as batch:
            yield batch
        try:
            await batch.committed()
        except BaseException as exc:
            try:  # reload now, so the writer is healthy again when this raises
                await self.recover_if_broken()
            except Exception as reload_error:  # still broken: reloads before the next batch
                raise LedgerUnavailable(
                    f"the batch could not be committed ({exc}) and the state not reloaded"
                ) from reload_error
            raise

    @contextlib.asynccontextmanager
    async def staged(
        self, ids: Iterable[str] = (), *, epoch: int | None = None
    ) -> AsyncIterator[LedgerBatch]:
        """Stage a batch like `batch`, but do not wait for its commit: on exit its
        statement is queued behind the batches still committing (one statement at a time,
        in the order staged) and `batch.committed()` waits for it.

        The batch is staged on top of the batches before it that are not committed yet
        (memory runs ahead of the database). If one of them fails, every batch staged
        after it fails too (`LedgerUnavailable`, without writing) and the writer is
        BROKEN until `recover_if_broken` (or the next batch) reloads it. `epoch`: the
        caller's `epoch` when it began staging; if a batch failed since, this refuses.
        """
        wanted = list(set(ids))
        async with self._lock:
            if wanted or self._state is not WriterState.OPEN:
                await self.settled()  # prior outcomes and reloads use the writer's connection
            if self._state is WriterState.CLOSED:
                raise LedgerUnavailable("the ledger is closed")
            if epoch is not None and epoch != self._epoch:
                raise LedgerUnavailable("an earlier batch was not committed")
            if self._state is WriterState.BROKEN:
                try:
                    await self._recover()
                except Exception as exc:
                    raise LedgerUnavailable(f"the ledger database is unreachable: {exc}") from exc
            try:
                prior = await prior_outcomes(self._conn, wanted) if wanted else {}
            except Exception as exc:
                self._state = WriterState.BROKEN  # reconnect and reload before the next batch
                raise LedgerUnavailable(f"the ledger database is unreachable: {exc}") from exc
            batch = LedgerBatch(self._memory, prior)
            self._staging = True
            try:
                try:
                    yield batch
                    rows = await self._seal(batch)
                except BaseException:
                    # The batches staged before this one are sound: let them commit
                    # first, then void what was staged after the last commit, also when
                    # the ledger's memory did not move (`batch.changed`): the caller's
                    # may have (an engine run, a journal number taken), and a batch the
                    # caller stages next on top of it must be refused. `_staging` stays
                    # True until memory is reloaded: a commit meanwhile takes no snapshot
                    # of memory that holds this batch.
                    await self.settled()
                    self._epoch += 1
                    if batch.changed:
                        await self._recover()
                    raise
                finally:
                    self._staging = False
                if rows is not None:
                    batch.commit = asyncio.ensure_future(
                        self._execute(rows, batch, self._tail, self._epoch)
                    )
                    self._tail = batch.commit
            finally:
                # An extra write usually closes over the caller's batch, which holds this
                # one: a reference cycle that would leave the whole batch (entries and the
                # caller's rows) to the cycle collector, whose pauses then grow to tens of ms.
                batch.extra.clear()

    @property
    def epoch(self) -> int:
        """How many times staged state was thrown away (a failed batch): a batch staged
        under an older epoch stood on state that never committed."""
        return self._epoch

    @property
    def in_flight(self) -> bool:
        """Whether a staged batch is not committed yet (memory is ahead of the database)."""
        return self._staging or (self._tail is not None and not self._tail.done())

    async def settled(self) -> None:
        """Wait until every staged batch has committed or failed."""
        while self._tail is not None and not self._tail.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._tail)

    async def recover_if_broken(self) -> None:
        """After a failed batch: once nothing is in flight, reload memory from the database."""
        await self.settled()
        async with self._lock:
            if self._state is WriterState.BROKEN:
                await self._recover()

    async def _seal(self, batch: LedgerBatch) -> BatchRows | None:
        """The batch's one statement (hooks' and callers' rows with the ledger's), or None
        if it writes nothing."""
        write = batch.write
        if not write.committed and not write.rejections and not write.retired and not batch.extra:
            return None
        rows = BatchRows()
        batch.retired_ids = stage_batch(rows, write, self._ids)
        if self._hooks:
            leaves = [body for _, _, body in write.committed]
            for hook in self._hooks:
                await hook.write(self._conn, rows, leaves)
        for extra in batch.extra:
            await extra(self._conn, rows)
        return rows

    async def _execute(
        self,
        rows: BatchRows,
        batch: LedgerBatch,
        before: asyncio.Future[None] | None,
        epoch: int,
    ) -> None:
        """Write a sealed batch once the one staged before it is written."""
        if before is not None and not before.done():
            await asyncio.wait([before])  # its outcome is its own caller's
        if epoch != self._epoch or self._state is not WriterState.OPEN:
            raise LedgerUnavailable("an earlier batch was not committed; nothing was written")
        try:
            # One statement, so one round trip and its own transaction: all or nothing.
            await rows.execute(self._conn)
        except BaseException as exc:
            self._epoch += 1
            if not self._abandoned:
                self._state = WriterState.BROKEN  # reloaded once nothing is in flight
            if isinstance(exc, asyncpg.PostgresError | OSError | ConnectionError):
                raise LedgerUnavailable(f"the batch could not be committed: {exc}") from exc
            raise
        for listener in self._listeners:
            listener.committed(len(batch.write.committed))
        dirty = self._dirty
        for committed, _, _ in batch.write.committed:
            dirty.add(committed)
        # After the batch's own (and every earlier batch's) accounts were marked: in commit
        # order, so an account retired here is not marked again by a batch before it.
        for account, _ in batch.write.retired:
            dirty.accounts.discard(account)
        dirty.retired += batch.retired_ids
        # A snapshot copies memory: only when memory holds nothing beyond this commit.
        if dirty.transactions >= self._snapshot_every and not self.in_flight_after(batch):
            self._start_snapshot()

    def in_flight_after(self, batch: LedgerBatch) -> bool:
        """Whether a batch was staged (or is being staged) after `batch`."""
        return self._staging or self._tail is not batch.commit

    async def _recover(self) -> None:
        """Forget the in-memory state and reload it from the database.

        If the connection is gone (PostgreSQL restarted), open a new one and take the
        writer lock again first. If that fails too, the writer stays broken and tries
        again before the next batch; nothing is written until it has reloaded.
        """
        if self._abandoned:
            raise LedgerUnavailable("the ledger gave its database up; the exchange reopens")
        log.warning("ledger reloading its state from the database")
        self._state = WriterState.RECOVERING
        try:
            if self._conn.is_closed() or not await connection_alive(self._conn):
                await self._reconnect()
            else:  # a migration may have changed a table: read the catalog again
                await self._conn.reload_schema_state()
            forget_table_layouts()
            # A background snapshot still being written would land after this read: the
            # seal kept would be older than the tables', and the next snapshot's check
            # would cry tampering. (It writes on a connection of its own.)
            await self._settle_snapshot_task()
            loaded = await load_sealed(self._conn, self._sealer)
            # The hooks first: the Merkle log refuses journal rows it did not sign, and
            # memory (which the read routes serve) must not hold them meanwhile.
            for hook in self._hooks:
                await hook.reload(self._conn)
            self._memory, self._ids, self._dirty = loaded.state, loaded.ids, loaded.dirty
            self._sealed = loaded.sealed
        except BaseException:
            self._state = WriterState.BROKEN
            log.exception("ledger could not reload its state; will retry before the next batch")
            raise
        self._state = WriterState.OPEN

    async def _reconnect(self) -> None:
        if self._dsn is None:
            raise LedgerUnavailable("the ledger's connection is gone and it cannot reconnect")
        self._conn.terminate()
        conn = await connect_writer(self._dsn)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", WRITER_LOCK_KEY):
            await conn.close()
            raise LedgerBusy("another process became the ledger's writer")
        self._conn = conn

    @property
    def state(self) -> WriterState:
        return self._state

    @property
    def healthy(self) -> bool:
        """False while the writer could not reload its state after a failure."""
        return self._state is WriterState.OPEN


class LedgerBatch:
    """Transactions of one batch, applied to the in-memory state as they come.

    Made by `Ledger.batch`; written and committed when its block ends.
    """

    __slots__ = (
        "_prior", "_seen", "changed", "commit", "extra", "results", "retired_ids", "state",
        "write",
    )  # fmt: skip

    def __init__(self, state: LedgerState, prior: dict[str, PriorOutcome]) -> None:
        self.state = state
        self._prior = prior
        self._seen: dict[str, tuple[bytes, TransactionResult]] = {}
        self.write = BatchWrite()
        self.extra: list[ExtraWrite] = []
        self.changed = False
        #: Its commit, once staged (None if it writes nothing).
        self.commit: asyncio.Future[None] | None = None
        #: The ids of the accounts it retired (`ledger.store.stage_batch`), once sealed.
        self.retired_ids: list[int] = []

    async def committed(self) -> None:
        """Wait for this batch's commit (raises `LedgerUnavailable` if it failed)."""
        if self.commit is not None:
            await asyncio.shield(self.commit)

    def apply(self, tx: Transaction) -> TransactionResult:
        """Commit `tx` to memory (or reject it); the outcome is final once the batch commits."""
        digest = request_digest(tx)
        earlier = self._prior.get(tx.id)
        if earlier is not None:
            return _replayed(tx.id, digest, earlier)
        first = self._seen.get(tx.id)
        if first is not None:
            return first[1] if first[0] == digest else _conflict(tx.id)
        self.changed = True
        try:
            committed = self.state.apply(tx)
        except TransactionRejected as rejected:
            self.write.rejections.append(
                Rejection(tx.id, digest, rejected.code, rejected.message, tx.time)
            )
            result = TransactionResult(
                id=tx.id, committed=False, code=rejected.code, message=rejected.message
            )
        else:
            self.write.committed.append((committed, digest, transaction_bytes(committed)))
            result = TransactionResult(id=tx.id, committed=True, index=committed.index)
        self._seen[tx.id] = (digest, result)
        return result

    def refuse(self, tx: Transaction, code: str, message: str) -> TransactionResult:
        """Refuse `tx` on the caller's own check, as if the rules had: the refusal is
        written with the batch (`ledger_rejections`), so the id stays refused — a retry of
        the same body gets this outcome back, another body under it is a conflict. An id
        used before gets its first outcome instead."""
        digest = request_digest(tx)
        earlier = self._prior.get(tx.id)
        if earlier is not None:
            return _replayed(tx.id, digest, earlier)
        first = self._seen.get(tx.id)
        if first is not None:
            return first[1] if first[0] == digest else _conflict(tx.id)
        self.changed = True
        self.write.rejections.append(Rejection(tx.id, digest, code, message, tx.time))
        result = TransactionResult(id=tx.id, committed=False, code=code, message=message)
        self._seen[tx.id] = (digest, result)
        return result

    def retire(self, accounts: Iterable[Account]) -> list[Account]:
        """Retire the accounts of `accounts` that are open, all at zero (else
        `AccountNotEmpty`, nothing changed): written with the batch
        (`ledger_retired_accounts`), they are not loaded by a restart, and nothing can be
        posted to or held on them again (`AccountRetired`; after a restart, the
        database's unique account names refuse a batch that tries). Returns them."""
        retired = self.state.retire(accounts)
        if retired:
            self.changed = True
            index = self.state.next_index
            self.write.retired += [(account, index) for account in retired]
        return retired

    def seen(self, tx_id: str) -> bool:
        """Whether `tx_id` was used before (committed or refused), here or in the database.

        Only ids passed to `Ledger.batch(ids)` are known from the database."""
        return tx_id in self._prior or tx_id in self._seen

    def also_write(self, extra: ExtraWrite) -> None:
        """Have `extra(conn, rows)` stage rows written with the batch (same statement)."""
        self.changed = True
        self.extra.append(extra)


def _sealer_of(hooks: Sequence[CommitHook]) -> SnapshotSealer | None:
    """The hook that seals snapshots, if one does."""
    return next((hook for hook in hooks if isinstance(hook, SnapshotSealer)), None)


def _replayed(tx_id: str, digest: bytes, earlier: PriorOutcome) -> TransactionResult:
    if earlier.digest != digest:
        return _conflict(tx_id)
    if earlier.index is not None:
        return TransactionResult(id=tx_id, committed=True, index=earlier.index)
    return TransactionResult(id=tx_id, committed=False, code=earlier.code, message=earlier.message)


def _conflict(tx_id: str) -> TransactionResult:
    error = IdempotencyConflict(f"transaction id {tx_id} was already used with a different body")
    return TransactionResult(id=tx_id, committed=False, code=error.code, message=error.message)
