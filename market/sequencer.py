"""The sequencer: the one writer of every state change of the exchange.

Every command that changes state (list an instrument, deposit, list capacity,
place, cancel, amend, mass cancel, delivery reports, window closes,
withdrawals, and the clock's GTD expiries and window ends) is queued
here. One task drains the queue in batches; for each batch it

1. stages everything in memory: pre-trade checks against the ledger's
   in-memory balances, the matching engine, and the ledger transactions the
   engine's events turn into (`ledger.settlement`: holds, delivery versus
   payment per fill, releases);
2. writes the batch — journal of engine commands, orders, fills, ledger
   entries, Merkle leaves and checkpoint — as one SQL statement (`ledger.rows`),
   which commits it all or nothing;
3. only then answers every command of the batch and publishes the events.

If anything fails before the commit, nothing of the batch is kept: the
ledger reloads itself and the sequencer rebuilds the books by replaying the
journal — the same path as start-up after a crash — and every command of the
batch is answered with `ledger_unavailable` (503).

The engine is pure and deterministic: the journal holds every command it was
fed with the ids and times the sequencer assigned, so replaying it rebuilds
exactly the same books. Commands refused before the engine (unknown
instrument, insufficient funds, idempotent replays) are not journaled.

The life of an instrument ends in two steps, both checked at the start of
every batch against the batch's time (and woken by the clock task):

- window end (window_start + duration): trading closes — the engine's
  `SetTradingState(CLOSED)`, journaled like any command, cancels every open
  order and `_settle` voids their holds. Deliveries are still accepted.
- window end + `delivery_grace_seconds`: settlement (`_settle_instrument`):
  for each (buyer, provider) the remaining entitlement is burned and the
  remaining escrow refunded to the buyer; unsold capacity is burned. The
  instrument is then `settled` (a row of `market_settlements`, which is what
  recovery reads): orders, listings and deliveries on it are refused with
  `instrument_settled`. An operator's close does both steps at once.

To find what to settle, settlement scans the ledger's in-memory balances for
the instrument's token and escrow accounts: one pass per settled instrument,
which is cheap beside the batch it runs in at this scale (an index by
instrument would be the next step).

Delivery reports (`DeliveryOp`) burn entitlement and release escrow pro rata
(`ledger.settlement.delivery`); withdrawals (`WithdrawOp`, `WithdrawalOutcomeOp`)
hold cash, then post it to the operator's bank or void the hold. Both are
idempotent by their caller's id, kept in `market_deliveries` and
`market_withdrawals`, written in the same statement as the ledger entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time as _time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from ledger.errors import IdempotencyConflict, LedgerUnavailable
from ledger.rows import BatchRows
from ledger.store import connect_writer, connection_alive
from ledger.writer import CommitHook, Ledger, LedgerBatch
from market.clearing import rules as settlement
from market.clearing.rules import Terms
from market.engine import MatchingEngine
from market.errors import DuplicateInstrument, InvalidInstrument, UnknownInstrument
from market.instruments import make_instrument
from market.store import (
    DeliveryRow,
    JournalEntry,
    ListInstrument,
    OrderRow,
    WithdrawalRow,
    encode_entry,
    find_deliveries,
    find_orders,
    find_withdrawals,
    journal,
    load_live_orders,
    load_settlements,
    load_terms,
    next_order_id,
    stage_market_batch,
)
from schemas.errors import DomainError, ErrorKind
from schemas.ledger import Balance
from schemas.market import (
    AdvanceTime,
    Command,
    Event,
    Fill,
    MassCancel,
    NewOrder,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    RejectReason,
    SetTradingState,
    Side,
    TimeInForce,
    TradingState,
)
from schemas.market import (
    AmendOrder as EngineAmend,
)
from schemas.market import (
    CancelOrder as EngineCancel,
)
from schemas.trading import (
    AmendOrder,
    CancelledOrders,
    CreateInstrument,
    DeliveryReport,
    DeliveryView,
    Deposit,
    EntitlementView,
    FillView,
    InstrumentView,
    LedgerReceipt,
    Listing,
    PlaceOrder,
    SettlementView,
    WithdrawalRequest,
    WithdrawalView,
)

log = logging.getLogger(__name__)

#: The most token capacity one provider may have listed on one instrument. Listings are
#: free, and every listed token is a debit of the instrument's issuance account: without
#: a cap one provider could push it to the end of the 64-bit range and block every other
#: listing. 10^15 tokens is far beyond any window's real capacity.
MAX_LISTED_CAPACITY = 10**15

Publish = Callable[[Sequence[Event]], None]
Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return _time.time_ns() // 1_000_000


# -- errors ---------------------------------------------------------------------------


class UnknownOrder(DomainError):
    code = "unknown_order"
    kind = ErrorKind.NOT_FOUND


class OrderRefused(DomainError):
    """The engine or a pre-trade check refused a cancel or an amend."""

    code = "order_refused"
    kind = ErrorKind.REJECTED


class TransactionRefused(DomainError):
    """A deposit or listing the ledger refused (its code says why)."""

    kind = ErrorKind.REJECTED


class SequencerStopped(DomainError):
    code = "sequencer_stopped"
    kind = ErrorKind.UNAVAILABLE


class InstrumentSettled(DomainError):
    """The instrument's window is closed and settled: nothing more happens on it."""

    code = "instrument_settled"
    kind = ErrorKind.REJECTED


class EntitlementExceeded(DomainError):
    """A delivery report above what the buyer still holds of this provider (refused whole)."""

    code = "entitlement_exceeded"
    kind = ErrorKind.REJECTED


class UnknownWithdrawal(DomainError):
    code = "unknown_withdrawal"
    kind = ErrorKind.NOT_FOUND


class WithdrawalSettled(DomainError):
    """The withdrawal was already marked the other way (paid after failed, or the reverse)."""

    code = "withdrawal_settled"
    kind = ErrorKind.CONFLICT


# -- operations (what the API queues) ---------------------------------------------------


@dataclass(slots=True)
class Op:
    future: asyncio.Future[Any] = field(init=False, repr=False)


@dataclass(slots=True)
class CreateInstrumentOp(Op):
    request: CreateInstrument


@dataclass(slots=True)
class DepositOp(Op):
    request: Deposit


@dataclass(slots=True)
class ListingOp(Op):
    account_id: str
    request: Listing


@dataclass(slots=True)
class PlaceOp(Op):
    account_id: str
    request: PlaceOrder


@dataclass(slots=True)
class CancelOp(Op):
    account_id: str
    order_id: int


@dataclass(slots=True)
class AmendOp(Op):
    account_id: str
    order_id: int
    request: AmendOrder


@dataclass(slots=True)
class CancelAllOp(Op):
    account_id: str
    instrument: str | None


@dataclass(slots=True)
class DeliveryOp(Op):
    """A provider reports tokens served to a buyer."""

    provider_account: str
    request: DeliveryReport


@dataclass(slots=True)
class CloseInstrumentOp(Op):
    """Close an instrument's window now and settle it (operator)."""

    symbol: str


@dataclass(slots=True)
class WithdrawOp(Op):
    """An account asks to withdraw available cash."""

    account_id: str
    request: WithdrawalRequest


@dataclass(slots=True)
class WithdrawalOutcomeOp(Op):
    """The operator marks a withdrawal paid (posted to bank) or failed (hold voided)."""

    account_id: str
    withdrawal_id: str
    paid: bool


@dataclass(slots=True)
class TickOp(Op):
    """Nothing but the passing of time: lets GTD orders expire on a quiet book."""


# -- the batch's scratch state ------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    ledger: LedgerBatch
    time: int
    journal: list[tuple[int, int, bytes]] = field(default_factory=list)
    instruments: list[tuple[Any, ...]] = field(default_factory=list)
    orders: dict[int, OrderRow] = field(default_factory=dict)
    fills: list[tuple[Any, ...]] = field(default_factory=list)
    fill_views: dict[int, list[FillView]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    deliveries: dict[tuple[str, str], DeliveryRow] = field(default_factory=dict)
    settlements: list[SettlementView] = field(default_factory=list)
    withdrawals: dict[tuple[str, str], WithdrawalRow] = field(default_factory=dict)


@dataclass(slots=True)
class _Prior:
    """What the database already holds for the idempotency keys of a batch."""

    orders: dict[tuple[str, str], OrderRow]
    deliveries: dict[tuple[str, str], DeliveryRow]
    withdrawals: dict[tuple[str, str], WithdrawalRow]


_digest_encoder = msgspec.msgpack.Encoder(order="sorted")


def _digest(request: msgspec.Struct) -> bytes:
    return hashlib.sha256(_digest_encoder.encode(request)).digest()


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
    ) -> None:
        self._dsn = dsn
        self.ledger = ledger
        self._conn = conn
        self.currency = currency
        self._publish = publish
        self._clock = clock
        self._max_batch = max_batch
        self.engine = MatchingEngine()
        self.terms: dict[str, Terms] = {}
        self._instrument_meta: dict[str, tuple[int, int, int, str]] = {}
        self._grace: dict[str, int] = {}  # symbol -> delivery grace, seconds
        # Unsettled instruments: symbol -> (window end, settlement time), in ms.
        self._windows: dict[str, tuple[int, int]] = {}
        self._settled: dict[str, SettlementView] = {}
        self._live: dict[int, OrderRow] = {}  # open orders
        self._gtd: dict[int, int] = {}  # open GTD order id -> expire_at
        self._next_order_id = 1
        self._next_journal_seq = 0
        self._last_time = 0
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self._needs_recovery = False
        # Set while no batch is in flight. A batch is applied to memory before its commit,
        # so reads of memory (balances, book, entitlements) wait for this: they never see
        # state that is not committed, or that a failed commit takes back.
        self._idle = asyncio.Event()
        self._idle.set()
        #: How many batches have committed: a reader that also reads the database can
        #: tell whether a commit came between its two reads (and read again).
        self.commits = 0

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
    ) -> Sequencer:
        """Become the exchange's writer: open the ledger, rebuild the books, start."""
        ledger = await Ledger.open(dsn, hooks=hooks)
        try:
            conn = await connect_writer(dsn)
        except BaseException:
            await ledger.close()
            raise
        sequencer = cls(
            dsn, ledger, conn, currency=currency, publish=publish, clock=clock, max_batch=max_batch
        )
        try:
            await sequencer._recover()
        except BaseException:
            await conn.close()
            await ledger.close()
            raise
        sequencer._runner = asyncio.create_task(sequencer._run(), name="sequencer")
        sequencer._ticker = asyncio.create_task(sequencer._tick(), name="sequencer-clock")
        return sequencer

    async def close(self) -> None:
        """Finish what is queued, then stop and release the database."""
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._runner is not None:
            await self._queue.join()
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        with contextlib.suppress(Exception):
            await self._conn.close()
        await self.ledger.close()

    @property
    def healthy(self) -> bool:
        """False while the sequencer or its ledger cannot reach the database to rebuild."""
        return not self._stopped and not self._needs_recovery and self.ledger.healthy

    async def _recover(self) -> None:
        """Rebuild books, live orders and counters from the database (start-up, failure).

        A lost connection (PostgreSQL restarted) is replaced first. If the rebuild fails,
        the sequencer refuses batches (503) and tries again before each next one.
        """
        self._needs_recovery = True
        if self._conn.is_closed() or not await connection_alive(self._conn):
            self._conn.terminate()
            self._conn = await connect_writer(self._dsn)
        conn = self._conn
        engine = MatchingEngine()
        terms: dict[str, Terms] = {}
        meta: dict[str, tuple[int, int, int, str]] = {}
        grace: dict[str, int] = {}
        for r in await load_terms(conn):
            grace[r["symbol"]] = r["delivery_grace_seconds"]
            terms[r["symbol"]] = Terms(
                symbol=r["symbol"],
                lot_size=r["lot_size"],
                currency=r["currency"],
                maker_fee_bps=r["maker_fee_bps"],
                taker_fee_bps=r["taker_fee_bps"],
                provider_fee_bps=r["provider_fee_bps"],
            )
            meta[r["symbol"]] = (
                r["maker_fee_bps"],
                r["taker_fee_bps"],
                r["provider_fee_bps"],
                r["currency"],
            )
        next_seq = 0
        last_time = 0
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            async for seq, entry in journal(conn):
                if isinstance(entry, ListInstrument):
                    engine.add_instrument(entry.instrument)
                else:
                    engine.process(entry)
                next_seq = seq + 1
                last_time = max(last_time, entry.time)
            live = await load_live_orders(conn)
            order_id = await next_order_id(conn)
            settled = {s.instrument: s for s in await load_settlements(conn)}
        self.engine = engine
        self.terms = terms
        self._instrument_meta = meta
        self._grace = grace
        self._settled = settled
        self._windows = {
            book.symbol: self._window(book.symbol, grace.get(book.symbol, 0))
            for book in engine.books()
            if book.symbol not in settled
        }
        self._live = {o.order_id: o for o in live}
        self._gtd = {o.order_id: o.expire_at for o in live if o.expire_at is not None}
        self._next_order_id = order_id
        self._next_journal_seq = next_seq
        self._last_time = max(self._last_time, last_time)
        self._needs_recovery = False

    # -- submitting -------------------------------------------------------------------

    async def submit(self, op: Op) -> Any:
        """Queue `op`; return its outcome once its batch is durable (or raise its error)."""
        if self._stopped:
            raise SequencerStopped("the exchange is shutting down")
        op.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(op)  # unbounded: never waits
        return await op.future

    async def submit_all(self, ops: Sequence[Op]) -> list[Any]:
        """Queue `ops` one after the other (they may still land in different batches);
        return each one's outcome, or the exception it raised, once durable. For one
        request's batch of orders: futures, not a task per order."""
        if self._stopped:
            return [SequencerStopped("the exchange is shutting down") for _ in ops]
        loop = asyncio.get_running_loop()
        for op in ops:
            op.future = loop.create_future()
            self._queue.put_nowait(op)
        return list(await asyncio.gather(*(op.future for op in ops), return_exceptions=True))

    async def _tick(self) -> None:
        """Queue a tick when a resting GTD order or an instrument's window end (or its
        settlement time) has come due, so it happens on time on a quiet exchange; and
        while the state must be rebuilt (the database was lost), so it is retried."""
        while True:
            await asyncio.sleep(0.25)
            if not self._queue.empty():
                continue
            now = max(self._last_time, self._clock())
            due = self._gtd and min(self._gtd.values()) <= now
            if due or not self.healthy or self._next_window_event() <= now:
                with contextlib.suppress(SequencerStopped, DomainError):
                    await self.submit(TickOp())

    def _window(self, symbol: str, grace_seconds: int) -> tuple[int, int]:
        """(window end, settlement time) of an instrument, in ms."""
        i = self.engine.book(symbol).instrument
        end = (i.window_start + i.duration) * 1000
        return end, end + grace_seconds * 1000

    def _next_window_event(self) -> int | float:
        """When the next window closes or settles (ms); infinity if none is pending."""
        due: int | float = float("inf")
        for symbol, (end, settle_at) in self._windows.items():
            closed = self.engine.book(symbol).trading_state is TradingState.CLOSED
            due = min(due, settle_at if closed else end)
        return due

    async def _run(self) -> None:
        queue = self._queue
        while True:
            ops = [await queue.get()]
            while len(ops) < self._max_batch and not queue.empty():
                ops.append(queue.get_nowait())
            try:
                await self._process(ops)
            except Exception:  # a bug: never let the writer die, and answer every op
                log.exception("sequencer batch failed")
                error = LedgerUnavailable("the exchange could not process this; try again")
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(error)
            finally:
                for _ in ops:
                    queue.task_done()

    # -- one batch ----------------------------------------------------------------------

    async def committed(self) -> None:
        """Wait until no batch is in flight; then, until the next await, memory holds only
        committed state. Read the sequencer's memory right after this, with no await.

        While the state could not be rebuilt after a failed commit (the database is
        unreachable), memory may still hold that batch: then this raises 503 rather than
        let anyone read it."""
        await self._idle.wait()
        if not self.healthy:
            raise LedgerUnavailable("the exchange is rebuilding its state; try again shortly")

    async def _process(self, ops: list[Op]) -> None:
        # Readers woken when the last batch ended run first (FIFO), then this batch starts.
        await asyncio.sleep(0)
        self._idle.clear()
        try:
            await self._process_batch(ops)
        finally:
            self._idle.set()

    async def _process_batch(self, ops: list[Op]) -> None:
        if self._needs_recovery:
            try:
                await self._recover()
            except Exception as exc:
                log.warning("sequencer still cannot rebuild its state: %s", exc)
                error = LedgerUnavailable("the exchange cannot reach its database; try again")
                for op in ops:
                    if not op.future.done():
                        op.future.set_exception(error)
                return
        now = max(self._last_time, self._clock())
        self._last_time = now
        outcomes: list[Any] = []
        external = self._external_ids(ops)
        try:
            prior = _Prior(
                orders=await find_orders(
                    self._conn,
                    [
                        (op.account_id, op.request.client_order_id)
                        for op in ops
                        if isinstance(op, PlaceOp)
                    ],
                ),
                deliveries=await find_deliveries(
                    self._conn,
                    [
                        (op.provider_account, op.request.report_id)
                        for op in ops
                        if isinstance(op, DeliveryOp)
                    ],
                ),
                withdrawals=await find_withdrawals(self._conn, self._withdrawal_keys(ops)),
            )
            async with self.ledger.batch(external) as lb:
                batch = _Batch(ledger=lb, time=now)
                self._expire_due(batch)
                self._close_due(batch)
                seen: dict[tuple[str, str], tuple[bytes, int]] = {}
                for op in ops:
                    outcomes.append(self._apply(op, batch, prior, seen))
                rows = batch
                lb.also_write(lambda conn, staged: self._write(conn, staged, rows))
        except Exception as exc:
            log.warning("batch of %d commands not committed: %s", len(ops), exc)
            try:
                await self._recover()
            except Exception:
                log.exception("sequencer could not rebuild its state; will retry")
            error = (
                exc
                if isinstance(exc, LedgerUnavailable)
                else LedgerUnavailable(
                    "the batch could not be committed; retrying with the same ids is safe "
                    "(had it committed after all, a retry returns its first outcome)"
                )
            )
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        # Durable: apply the batch's effects on the sequencer's memory, answer, publish.
        self.commits += 1
        for row in batch.orders.values():
            if row.status == "open":
                self._live[row.order_id] = row
                if row.expire_at is not None:
                    self._gtd[row.order_id] = row.expire_at
            else:
                self._live.pop(row.order_id, None)
                self._gtd.pop(row.order_id, None)
        for op, outcome in zip(ops, outcomes, strict=True):
            if op.future.done():
                continue
            if isinstance(outcome, BaseException):
                op.future.set_exception(outcome)
            elif isinstance(outcome, _OrderOutcome):
                done = batch.orders.get(outcome.order_id) or outcome.row
                assert done is not None
                op.future.set_result(done.view(batch.fill_views.get(done.order_id, ())))
            else:
                op.future.set_result(outcome)
        if self._publish is not None and batch.events:
            try:
                self._publish(batch.events)
            except Exception:
                log.exception("publishing market data failed")

    @staticmethod
    def _withdrawal_keys(ops: Sequence[Op]) -> list[tuple[str, str]]:
        keys = [
            (op.account_id, op.request.withdrawal_id) for op in ops if isinstance(op, WithdrawOp)
        ]
        keys += [
            (op.account_id, op.withdrawal_id) for op in ops if isinstance(op, WithdrawalOutcomeOp)
        ]
        return keys

    @staticmethod
    def _external_ids(ops: Sequence[Op]) -> list[str]:
        """Ledger ids of this batch's deposits, listings, deliveries and withdrawals, looked
        up by the ledger first: a retry gets its first outcome, and an id the ledger once
        refused keeps its outcome instead of failing the batch on the unique index."""
        ids: list[str] = []
        for op in ops:
            if isinstance(op, DepositOp):
                ids.append(settlement.deposit_tx_id(op.request.deposit_id))
            elif isinstance(op, ListingOp):
                key = settlement.listing_key(op.account_id, op.request.listing_id)
                ids.append(settlement.listing_tx_id(key))
            elif isinstance(op, DeliveryOp):
                ids.append(settlement.delivery_id(op.provider_account, op.request.report_id))
            elif isinstance(op, WithdrawOp):
                ids.append(settlement.withdrawal_hold_id(op.account_id, op.request.withdrawal_id))
            elif isinstance(op, WithdrawalOutcomeOp):
                ids.append(
                    settlement.withdrawal_outcome_id(op.account_id, op.withdrawal_id, paid=op.paid)
                )
        return ids

    @staticmethod
    async def _write(conn: asyncpg.Connection, rows: BatchRows, batch: _Batch) -> None:
        stage_market_batch(
            rows,
            journal=batch.journal,
            instruments=batch.instruments,
            orders=list(batch.orders.values()),
            fills=batch.fills,
            deliveries=list(batch.deliveries.values()),
            settlements=batch.settlements,
            withdrawals=list(batch.withdrawals.values()),
        )

    def _journal(self, batch: _Batch, entry: JournalEntry) -> None:
        batch.journal.append((self._next_journal_seq, entry.time, encode_entry(entry)))
        self._next_journal_seq += 1

    def _run_engine(self, batch: _Batch, command: Command) -> list[Event]:
        self._journal(batch, command)
        events = self.engine.process(command)
        batch.events.extend(events)
        return events

    def _apply(
        self,
        op: Op,
        batch: _Batch,
        prior: _Prior,
        seen: dict[tuple[str, str], tuple[bytes, int]],
    ) -> Any:
        try:
            if isinstance(op, PlaceOp):
                return self._place(op, batch, prior.orders, seen)
            if isinstance(op, CancelOp):
                return self._cancel(op, batch)
            if isinstance(op, AmendOp):
                return self._amend(op, batch)
            if isinstance(op, CancelAllOp):
                return self._cancel_all(op, batch)
            if isinstance(op, DepositOp):
                return self._deposit(op, batch)
            if isinstance(op, ListingOp):
                return self._listing(op, batch)
            if isinstance(op, CreateInstrumentOp):
                return self._create_instrument(op, batch)
            if isinstance(op, DeliveryOp):
                return self._deliver(op, batch, prior.deliveries)
            if isinstance(op, CloseInstrumentOp):
                self._terms(op.symbol)
                return self._settle_instrument(batch, op.symbol, "operator")
            if isinstance(op, WithdrawOp):
                return self._withdraw(op, batch, prior.withdrawals)
            if isinstance(op, WithdrawalOutcomeOp):
                return self._withdrawal_outcome(op, batch, prior.withdrawals)
            if isinstance(op, TickOp):
                return None
        except DomainError as exc:
            return exc
        raise TypeError(f"unknown operation {type(op).__name__}")

    # -- instruments, deposits, listings -------------------------------------------------

    def _create_instrument(self, op: CreateInstrumentOp, batch: _Batch) -> InstrumentView:
        req = op.request
        instrument = make_instrument(
            req.symbol,
            lot_size=req.lot_size,
            tick_size=req.tick_size,
            price_min=req.price_min,
            price_max=req.price_max,
        )
        if instrument.symbol in self.engine:
            raise DuplicateInstrument(f"instrument {req.symbol!r} already exists")
        entry = ListInstrument(
            instrument=instrument,
            maker_fee_bps=req.maker_fee_bps,
            taker_fee_bps=req.taker_fee_bps,
            provider_fee_bps=req.provider_fee_bps,
            currency=self.currency,
            time=batch.time,
        )
        self._journal(batch, entry)
        self.engine.add_instrument(instrument)
        self.terms[instrument.symbol] = Terms(
            symbol=instrument.symbol,
            lot_size=instrument.lot_size,
            currency=self.currency,
            maker_fee_bps=req.maker_fee_bps,
            taker_fee_bps=req.taker_fee_bps,
            provider_fee_bps=req.provider_fee_bps,
        )
        self._instrument_meta[instrument.symbol] = (
            req.maker_fee_bps,
            req.taker_fee_bps,
            req.provider_fee_bps,
            self.currency,
        )
        self._grace[instrument.symbol] = req.delivery_grace_seconds
        self._windows[instrument.symbol] = self._window(
            instrument.symbol, req.delivery_grace_seconds
        )
        batch.instruments.append(
            (
                instrument.symbol, instrument.model, instrument.window_start,
                instrument.duration, instrument.lot_size, instrument.tick_size,
                instrument.price_min, instrument.price_max, req.maker_fee_bps,
                req.taker_fee_bps, req.provider_fee_bps, self.currency, batch.time,
                req.delivery_grace_seconds,
            )
        )  # fmt: skip
        return self.instrument_view(instrument.symbol)

    def _deposit(self, op: DepositOp, batch: _Batch) -> LedgerReceipt:
        req = op.request
        tx = settlement.deposit(
            req.deposit_id, req.account_id, req.amount, self.currency, batch.time
        )
        return self._ledger_receipt(batch, tx)

    def _listing(self, op: ListingOp, batch: _Batch) -> LedgerReceipt:
        req = op.request
        terms = self._terms(req.instrument)
        self._refuse_if_settled(req.instrument)
        book = self.engine.book(req.instrument)
        if book.trading_state is not TradingState.OPEN:
            raise OrderRefused(
                f"instrument {req.instrument} is {book.trading_state}", code="instrument_not_open"
            )
        if req.quantity % terms.lot_size:
            raise OrderRefused(
                f"quantity must be a multiple of the lot, {terms.lot_size}", code="qty_off_lot"
            )
        tx = settlement.listing(
            settlement.listing_key(op.account_id, req.listing_id), op.account_id,
            req.instrument, req.quantity, batch.time,
        )  # fmt: skip
        if not batch.ledger.seen(tx.id):  # a retry gets its first receipt, cap or not
            listed = batch.ledger.state.balance(settlement.capacity(op.account_id, req.instrument))
            if listed.total + req.quantity > MAX_LISTED_CAPACITY:
                raise OrderRefused(
                    f"a provider may list at most {MAX_LISTED_CAPACITY:,} tokens of an instrument",
                    code="capacity_limit",
                )
        return self._ledger_receipt(batch, tx)

    def _ledger_receipt(self, batch: _Batch, tx: Any) -> LedgerReceipt:
        result = batch.ledger.apply(tx)
        if not result.committed:
            if result.code == "idempotency_conflict":
                raise IdempotencyConflict(result.message or "id already used with another body")
            raise TransactionRefused(result.message or "refused", code=result.code or "refused")
        assert result.index is not None
        return LedgerReceipt(transaction_id=tx.id, ledger_index=result.index)

    def _refuse_if_settled(self, symbol: str) -> None:
        if symbol in self._settled:
            raise InstrumentSettled(f"instrument {symbol} is settled")

    def _terms(self, symbol: str) -> Terms:
        terms = self.terms.get(symbol)
        if terms is None:
            raise UnknownInstrument(f"unknown instrument {symbol!r}")
        return terms

    # -- orders -----------------------------------------------------------------------

    def _place(
        self,
        op: PlaceOp,
        batch: _Batch,
        prior: dict[tuple[str, str], OrderRow],
        seen: dict[tuple[str, str], tuple[bytes, int]],
    ) -> _OrderOutcome:
        req = op.request
        key = (op.account_id, req.client_order_id)
        digest = _digest(req)
        earlier = prior.get(key)
        if earlier is None and key in seen:
            first_digest, order_id = seen[key]
            if first_digest != digest:
                raise IdempotencyConflict(
                    f"client order id {req.client_order_id} was used for another order"
                )
            return _OrderOutcome(order_id, None)
        if earlier is not None:
            if earlier.request_digest != digest:
                raise IdempotencyConflict(
                    f"client order id {req.client_order_id} was used for another order"
                )
            return _OrderOutcome(earlier.order_id, self._live.get(earlier.order_id, earlier))
        order_id = self._next_order_id
        self._next_order_id += 1
        seen[key] = (digest, order_id)
        tif = req.tif or (
            TimeInForce.IOC if req.order_type is OrderType.MARKET else TimeInForce.GTC
        )
        row = OrderRow(
            order_id=order_id, account_id=op.account_id, client_order_id=req.client_order_id,
            request_digest=digest, instrument=req.instrument, side=req.side,
            order_type=req.order_type, tif=tif, price=req.price, quantity=req.quantity,
            open_quantity=0, filled_quantity=0, cancelled_quantity=0, status="rejected",
            reject_reason=None, hold_id=None, expire_at=req.expire_at, created_ms=batch.time,
            updated_ms=batch.time,
        )  # fmt: skip
        batch.orders[order_id] = row
        terms = self.terms.get(req.instrument)
        if terms is None:
            row.reject_reason = "unknown_instrument"
            return _OrderOutcome(order_id, row)
        if req.instrument in self._settled:
            row.reject_reason = InstrumentSettled.code
            return _OrderOutcome(order_id, row)
        book = self.engine.book(req.instrument)
        if book.trading_state is TradingState.CLOSED:  # before funds: the clearer reason
            row.reject_reason = RejectReason.INSTRUMENT_CLOSED
            return _OrderOutcome(order_id, row)
        # Pre-trade check: the hold this order needs must be available now.
        instrument = book.instrument
        if req.price is not None:
            price = req.price
        elif req.order_type is OrderType.MARKET:
            price = instrument.price_max if req.side is Side.BUY else instrument.price_min
        else:
            price = None
        if price is not None and req.quantity > 0:
            need = settlement.reservation(req.side, req.quantity, price, terms)
            account = settlement.hold_account(req.side, op.account_id, terms)
            if need > batch.ledger.state.balance(account).available:
                row.reject_reason = (
                    "insufficient_funds" if req.side is Side.BUY else "insufficient_capacity"
                )
                return _OrderOutcome(order_id, row)
        command = NewOrder(
            instrument=req.instrument, order_id=order_id, owner=op.account_id, side=req.side,
            quantity=req.quantity, time=batch.time, price=req.price, order_type=req.order_type,
            tif=tif, expire_at=req.expire_at, post_only=req.post_only, stp=req.stp,
            client_order_id=req.client_order_id,
        )  # fmt: skip
        events = self._run_engine(batch, command)
        self._settle(batch, events, placed=row)
        return _OrderOutcome(order_id, row)

    def _owned(self, account_id: str, order_id: int) -> OrderRow:
        row = self._live.get(order_id)
        if row is None or row.account_id != account_id:
            raise UnknownOrder(f"no open order {order_id}")
        return row

    def _current(self, batch: _Batch, row: OrderRow) -> OrderRow:
        """The order as this batch has it so far (a copy, on first touch)."""
        current = batch.orders.get(row.order_id)
        if current is None:
            current = OrderRow(**{f: getattr(row, f) for f in OrderRow.__slots__})
            batch.orders[row.order_id] = current
        return current

    def _cancel(self, op: CancelOp, batch: _Batch) -> _OrderOutcome:
        row = batch.orders.get(op.order_id) or self._owned(op.account_id, op.order_id)
        if row.account_id != op.account_id or row.status != "open":
            raise UnknownOrder(f"no open order {op.order_id}")
        events = self._run_engine(
            batch,
            EngineCancel(
                instrument=row.instrument, order_id=op.order_id, owner=op.account_id,
                time=batch.time,
            ),
        )  # fmt: skip
        self._settle(batch, events)
        self._raise_reject(events, op.order_id)
        return _OrderOutcome(op.order_id, None)

    def _amend(self, op: AmendOp, batch: _Batch) -> _OrderOutcome:
        row = batch.orders.get(op.order_id) or self._owned(op.account_id, op.order_id)
        if row.account_id != op.account_id or row.status != "open":
            raise UnknownOrder(f"no open order {op.order_id}")
        req = op.request
        terms = self._terms(row.instrument)
        new_price = req.price if req.price is not None else row.price
        new_open = req.quantity if req.quantity is not None else row.open_quantity
        assert new_price is not None
        need = settlement.reservation(row.side, new_open, new_price, terms)
        hold = batch.ledger.state.holds.get(row.hold_id or "")
        held = 0 if hold is None else hold.remaining
        account = settlement.hold_account(row.side, op.account_id, terms)
        if need > held + batch.ledger.state.balance(account).available:
            raise OrderRefused(
                "not enough available to amend the order",
                code="insufficient_funds" if row.side is Side.BUY else "insufficient_capacity",
            )
        events = self._run_engine(
            batch,
            EngineAmend(
                instrument=row.instrument, order_id=op.order_id, owner=op.account_id,
                time=batch.time, price=req.price, quantity=req.quantity,
            ),
        )  # fmt: skip
        self._settle(batch, events)
        self._raise_reject(events, op.order_id)
        return _OrderOutcome(op.order_id, None)

    def _cancel_all(self, op: CancelAllOp, batch: _Batch) -> Any:
        if op.instrument is not None:
            self._terms(op.instrument)
        events = self._run_engine(
            batch, MassCancel(time=batch.time, owner=op.account_id, instrument=op.instrument)
        )
        self._settle(batch, events)
        return CancelledOrders(
            cancelled=[e.order_id for e in events if isinstance(e, OrderCancelled)]
        )

    @staticmethod
    def _raise_reject(events: Iterable[Event], order_id: int) -> None:
        for event in events:
            if isinstance(event, OrderRejected) and event.order_id == order_id:
                if event.reason == "unknown_order":
                    raise UnknownOrder(f"no open order {order_id}")
                raise OrderRefused(f"refused: {event.reason}", code=event.reason)

    def _expire_due(self, batch: _Batch) -> None:
        if self._gtd and min(self._gtd.values()) <= batch.time:
            events = self._run_engine(batch, AdvanceTime(time=batch.time))
            self._settle(batch, events)

    # -- delivery and settlement -------------------------------------------------------------

    def _deliver(
        self, op: DeliveryOp, batch: _Batch, prior: dict[tuple[str, str], DeliveryRow]
    ) -> DeliveryView:
        """Burn delivered tokens of the buyer's entitlement and pay the provider pro rata."""
        req = op.request
        provider = op.provider_account
        key = (provider, req.report_id)
        digest = _digest(req)
        earlier = batch.deliveries.get(key) or prior.get(key)
        if earlier is not None:
            if earlier.request_digest != digest:
                raise IdempotencyConflict(
                    f"report id {req.report_id} was used for another delivery"
                )
            return earlier.view()
        terms = self._terms(req.instrument)
        self._refuse_if_settled(req.instrument)
        state = batch.ledger.state
        held = state.balance(settlement.entitlement(req.buyer, provider, req.instrument)).available
        if req.tokens > held:
            raise EntitlementExceeded(
                f"{req.buyer} holds {held} tokens of {provider} on {req.instrument}, "
                f"not {req.tokens}"
            )
        escrowed = state.balance(settlement.escrow(req.buyer, provider, terms)).available
        tx, split = settlement.delivery(
            req.report_id, req.buyer, provider, terms, req.tokens, held, escrowed, batch.time
        )
        self._checked(batch.ledger.apply(tx))
        row = DeliveryRow(
            provider=provider, report_id=req.report_id, request_digest=digest,
            instrument=req.instrument, buyer=req.buyer, tokens=split.tokens,
            released=split.released, fee=split.fee, transaction_id=tx.id, time_ms=batch.time,
        )  # fmt: skip
        batch.deliveries[key] = row
        return row.view()

    def _close_due(self, batch: _Batch) -> None:
        """Close trading on instruments whose window has ended; settle those past grace."""
        if self._next_window_event() > batch.time:
            return
        for symbol, (end, settle_at) in sorted(self._windows.items()):
            if settle_at <= batch.time:
                self._settle_instrument(batch, symbol, "window")
            elif end <= batch.time:
                self._close_trading(batch, symbol)

    def _close_trading(self, batch: _Batch, symbol: str) -> None:
        """The engine closes the book (final): open orders are cancelled, holds voided."""
        if self.engine.book(symbol).trading_state is TradingState.CLOSED:
            return
        events = self._run_engine(
            batch, SetTradingState(instrument=symbol, state=TradingState.CLOSED, time=batch.time)
        )
        self._settle(batch, events)

    def _settle_instrument(self, batch: _Batch, symbol: str, reason: str) -> SettlementView:
        """Close trading if still open, then burn and refund what is left; idempotent."""
        done = self._settled.get(symbol)
        if done is not None:
            return done
        self._close_trading(batch, symbol)
        terms = self.terms[symbol]
        token, escrow_kind = terms.token_asset, f"escrow:{symbol}"
        pairs: dict[str, list[int]] = {}  # "b@p" -> [entitlement, escrow]
        capacities: list[tuple[str, int]] = []
        for account, (available, held) in batch.ledger.state.balances.items():
            total = available + held
            if not total:
                continue
            if account.asset == token and account.kind == "entitlement":
                pairs.setdefault(account.owner, [0, 0])[0] = total
            elif account.kind == escrow_kind and account.asset == terms.currency:
                pairs.setdefault(account.owner, [0, 0])[1] = total
            elif account.asset == token and account.kind == "capacity":
                if held:  # every order was cancelled and released just above
                    raise RuntimeError(f"{account} still holds {held} after the close")
                capacities.append((account.owner, available))
        lb = batch.ledger
        n = 0
        burned = refunded = capacity_burned = 0
        for owner in sorted(pairs):
            buyer, provider = settlement.parse_pair(owner)
            tokens, cash = pairs[owner]
            self._must(
                lb.apply(
                    settlement.close_entitlement(
                        f"close:{symbol}:{n}", buyer, provider, terms, tokens, cash, batch.time
                    )
                )
            )
            n += 1
            burned += tokens
            refunded += cash
        for provider, amount in sorted(capacities):
            self._must(
                lb.apply(
                    settlement.close_capacity(
                        f"close:{symbol}:{n}", provider, symbol, amount, batch.time
                    )
                )
            )
            n += 1
            capacity_burned += amount
        view = SettlementView(
            instrument=symbol, reason=reason, time=batch.time, entitlement_burned=burned,
            refunded=refunded, capacity_burned=capacity_burned,
        )  # fmt: skip
        batch.settlements.append(view)
        # Undone by `_recover` if the batch does not commit.
        self._settled[symbol] = view
        self._windows.pop(symbol, None)
        return view

    # -- withdrawals ------------------------------------------------------------------------

    def _withdraw(
        self, op: WithdrawOp, batch: _Batch, prior: dict[tuple[str, str], WithdrawalRow]
    ) -> WithdrawalView:
        req = op.request
        key = (op.account_id, req.withdrawal_id)
        digest = _digest(req)
        earlier = batch.withdrawals.get(key) or prior.get(key)
        if earlier is not None:
            if earlier.request_digest != digest:
                raise IdempotencyConflict(
                    f"withdrawal id {req.withdrawal_id} was used for another withdrawal"
                )
            return earlier.view()
        account = settlement.cash(op.account_id, self.currency)
        available = batch.ledger.state.balance(account).available
        if req.amount > available:
            raise TransactionRefused(
                f"{available} available, cannot withdraw {req.amount}", code="insufficient_funds"
            )
        tx = settlement.withdrawal_request(
            op.account_id, req.withdrawal_id, req.amount, self.currency, batch.time
        )
        self._checked(batch.ledger.apply(tx))
        row = WithdrawalRow(
            account_id=op.account_id, withdrawal_id=req.withdrawal_id, request_digest=digest,
            amount=req.amount, currency=self.currency, hold_id=tx.id, status="pending",
            created_ms=batch.time, updated_ms=batch.time,
        )  # fmt: skip
        batch.withdrawals[key] = row
        return row.view()

    def _withdrawal_outcome(
        self, op: WithdrawalOutcomeOp, batch: _Batch, prior: dict[tuple[str, str], WithdrawalRow]
    ) -> WithdrawalView:
        key = (op.account_id, op.withdrawal_id)
        row = batch.withdrawals.get(key) or prior.get(key)
        if row is None:
            raise UnknownWithdrawal(f"no withdrawal {op.withdrawal_id} of {op.account_id}")
        target = "paid" if op.paid else "failed"
        if row.status == target:
            return row.view()
        if row.status != "pending":
            raise WithdrawalSettled(
                f"withdrawal {op.withdrawal_id} of {op.account_id} is already {row.status}"
            )
        if op.paid:
            tx = settlement.withdrawal_paid(
                op.account_id, op.withdrawal_id, row.amount, row.currency, batch.time
            )
        else:
            tx = settlement.withdrawal_failed(op.account_id, op.withdrawal_id, batch.time)
        self._checked(batch.ledger.apply(tx))
        done = dataclasses.replace(row, status=target, updated_ms=batch.time)
        batch.withdrawals[key] = done
        return done.view()

    @staticmethod
    def _checked(result: Any) -> None:
        """A transaction of a user's request: its refusal is the user's error."""
        if not result.committed:
            if result.code == "idempotency_conflict":
                raise IdempotencyConflict(result.message or "id already used with another body")
            raise TransactionRefused(result.message or "refused", code=result.code or "refused")

    # -- events -> ledger and orders ------------------------------------------------------

    def _settle(
        self, batch: _Batch, events: Sequence[Event], placed: OrderRow | None = None
    ) -> None:
        """Turn the engine's events into ledger transactions and order updates."""
        lb = batch.ledger
        for event in events:
            if isinstance(event, OrderAccepted):
                assert placed is not None and placed.order_id == event.order_id
                terms = self.terms[event.instrument]
                self._must(
                    lb.apply(
                        settlement.order_hold(
                            event.order_id, event.owner, event.side, event.quantity,
                            event.price, terms, event.time,
                        )
                    )
                )  # fmt: skip
                placed.status = "open"
                placed.price = event.price
                placed.open_quantity = event.quantity
                placed.hold_id = settlement.order_hold_id(event.order_id)
            elif isinstance(event, OrderRejected):
                if placed is not None and event.order_id == placed.order_id:
                    placed.status = "rejected"
                    placed.reject_reason = event.reason
            elif isinstance(event, Fill):
                self._on_fill(batch, event)
            elif isinstance(event, OrderCancelled):
                row = self._touch(batch, event.order_id)
                row.cancelled_quantity += event.cancelled_quantity
                row.open_quantity = event.open_quantity
                row.updated_ms = event.time
                if event.open_quantity == 0:
                    row.status = "cancelled"
                    self._release(batch, row, None, f"release:{event.instrument}:{event.seq}")
                else:
                    terms = self.terms[event.instrument]
                    assert row.price is not None
                    amount = settlement.reservation(
                        row.side, event.cancelled_quantity, row.price, terms
                    )
                    self._release(batch, row, amount, f"release:{event.instrument}:{event.seq}")
            elif isinstance(event, OrderExpired):
                row = self._touch(batch, event.order_id)
                row.cancelled_quantity += event.expired_quantity
                row.open_quantity = 0
                row.status = "expired"
                row.updated_ms = event.time
                self._release(batch, row, None, f"release:{event.instrument}:{event.seq}")
            elif isinstance(event, OrderAmended):
                row = self._touch(batch, event.order_id)
                terms = self.terms[event.instrument]
                assert row.hold_id is not None
                generation = settlement.hold_generation(row.hold_id) + 1
                new_hold = settlement.order_hold_id(event.order_id, generation)
                account = settlement.hold_account(row.side, row.account_id, terms)
                amount = settlement.reservation(
                    row.side, event.new_open_quantity, event.new_price, terms
                )
                assert row.hold_id is not None
                self._must(
                    lb.apply(
                        settlement.rehold(
                            f"amend:{event.instrument}:{event.seq}", row.hold_id, new_hold,
                            account, amount, event.time,
                        )
                    )
                )  # fmt: skip
                row.hold_id = new_hold
                row.price = event.new_price
                row.quantity += event.new_open_quantity - event.old_open_quantity
                row.open_quantity = event.new_open_quantity
                row.updated_ms = event.time

    def _on_fill(self, batch: _Batch, event: Fill) -> None:
        maker = self._touch(batch, event.maker_order_id)
        taker = self._touch(batch, event.taker_order_id)
        buy, sell = (taker, maker) if event.aggressor_side is Side.BUY else (maker, taker)
        terms = self.terms[event.instrument]
        assert buy.hold_id is not None and sell.hold_id is not None
        tx, buyer_fee = settlement.fill(
            event,
            buy_hold=buy.hold_id,
            sell_hold=sell.hold_id,
            buyer=buy.account_id,
            provider=sell.account_id,
            terms=terms,
        )
        self._must(batch.ledger.apply(tx))
        batch.fills.append(
            (
                event.instrument, event.seq, event.time, event.maker_order_id,
                event.taker_order_id, event.maker_owner, event.taker_owner,
                event.aggressor_side.value, event.price, event.quantity, buyer_fee,
            )
        )  # fmt: skip
        for row, open_quantity, role in (
            (maker, event.maker_open, "maker"),
            (taker, event.taker_open, "taker"),
        ):
            row.filled_quantity += event.quantity
            row.open_quantity = open_quantity
            row.updated_ms = event.time
            batch.fill_views.setdefault(row.order_id, []).append(
                FillView(
                    instrument=event.instrument, seq=event.seq, time=event.time,
                    order_id=row.order_id, side=row.side, role=role, price=event.price,
                    quantity=event.quantity, fee=buyer_fee if row.side is Side.BUY else 0,
                )
            )  # fmt: skip
            if open_quantity == 0:
                row.status = "filled"
                self._release(
                    batch, row, None, f"release:{event.instrument}:{event.seq}:{row.order_id}"
                )

    def _touch(self, batch: _Batch, order_id: int) -> OrderRow:
        row = batch.orders.get(order_id)
        if row is not None:
            return row
        live = self._live.get(order_id)
        if live is None:
            raise RuntimeError(f"engine event for order {order_id} the sequencer does not know")
        return self._current(batch, live)

    def _release(self, batch: _Batch, row: OrderRow, amount: int | None, tx_id: str) -> None:
        """Void `amount` (None: all that is left) of the order's hold, if anything is left."""
        if row.hold_id is None:
            return
        hold = batch.ledger.state.holds.get(row.hold_id)
        if hold is None:
            return
        if amount is not None:
            amount = min(amount, hold.remaining)
            if amount <= 0:
                return
        self._must(
            batch.ledger.apply(
                settlement.release(tx_id, row.hold_id, amount, row.updated_ms, "order")
            )
        )

    @staticmethod
    def _must(result: Any) -> None:
        """A settlement transaction the pre-trade checks made certain: refusal is a bug."""
        if not result.committed:
            raise RuntimeError(
                f"settlement transaction {result.id} refused: {result.code} {result.message}"
            )

    # -- reads ------------------------------------------------------------------------------

    def instrument_view(self, symbol: str) -> InstrumentView:
        book = self.engine.book(symbol)
        i = book.instrument
        maker, taker, provider, currency = self._instrument_meta[symbol]
        return InstrumentView(
            symbol=i.symbol, model=i.model, window_start=i.window_start, duration=i.duration,
            lot_size=i.lot_size, tick_size=i.tick_size, price_min=i.price_min,
            price_max=i.price_max, maker_fee_bps=maker, taker_fee_bps=taker,
            provider_fee_bps=provider, currency=currency,
            state="settled" if symbol in self._settled else book.trading_state.value,
            delivery_grace_seconds=self._grace.get(symbol, 0),
        )  # fmt: skip

    def instruments(self) -> list[InstrumentView]:
        return [self.instrument_view(book.symbol) for book in self.engine.books()]

    def balances_of(self, account_id: str) -> list[Balance]:
        """Every ledger account of this owner (and the escrows and entitlements it is party to)."""
        out: list[Balance] = []
        prefix, suffix = f"{account_id}@", f"@{account_id}"
        for balance in self.ledger.balances():
            owner = balance.account.owner
            if owner == account_id or owner.startswith(prefix) or owner.endswith(suffix):
                out.append(balance)
        out.sort(key=lambda b: (b.account.asset, b.account.kind, b.account.owner))
        return out

    def settlement_of(self, symbol: str) -> SettlementView | None:
        return self._settled.get(symbol)

    def settlements(self) -> list[SettlementView]:
        return [self._settled[symbol] for symbol in sorted(self._settled)]

    def entitlements_of(self, account_id: str) -> list[EntitlementView]:
        """Entitlement and escrow of every (instrument, buyer, provider) the account is
        party to, from the in-memory balances (delivered and released are left at 0: the
        API adds them from `market_deliveries`)."""
        found: dict[tuple[str, str], list[int]] = {}  # (symbol, "b@p") -> [tokens, escrow]
        prefix, suffix = f"{account_id}@", f"@{account_id}"
        for balance in self.ledger.balances():
            a = balance.account
            if not (a.owner.startswith(prefix) or a.owner.endswith(suffix)):
                continue
            if a.kind == "entitlement" and a.asset.startswith("tok:"):
                found.setdefault((a.asset[4:], a.owner), [0, 0])[0] = balance.total
            elif a.kind.startswith("escrow:"):
                found.setdefault((a.kind[7:], a.owner), [0, 0])[1] = balance.total
        out: list[EntitlementView] = []
        for (symbol, owner), (tokens, escrowed) in sorted(found.items()):
            buyer, provider = settlement.parse_pair(owner)
            out.append(
                EntitlementView(
                    instrument=symbol, buyer=buyer, provider=provider, entitlement=tokens,
                    escrow=escrowed, delivered=0, released=0,
                )
            )  # fmt: skip
        return out


@dataclass(slots=True)
class _OrderOutcome:
    order_id: int
    row: OrderRow | None


# Errors the engine layer raises that are user errors, for the API.
__all__ = [
    "AmendOp",
    "CancelAllOp",
    "CancelOp",
    "CloseInstrumentOp",
    "CreateInstrumentOp",
    "DeliveryOp",
    "DepositOp",
    "EntitlementExceeded",
    "IdempotencyConflict",
    "InstrumentSettled",
    "InvalidInstrument",
    "ListingOp",
    "OrderRefused",
    "PlaceOp",
    "Sequencer",
    "TickOp",
    "TransactionRefused",
    "UnknownOrder",
    "UnknownWithdrawal",
    "WithdrawOp",
    "WithdrawalOutcomeOp",
    "WithdrawalSettled",
]
