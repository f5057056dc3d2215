"""The batch context: what one batch's handlers share while they stage it.

A `Batch` holds the batch's time, the market's memory, the ledger batch (its
in-memory balances answer the pre-trade checks), the journal of engine commands and
every row the batch writes (orders, fills, deliveries, settlements, withdrawals).
Handlers take it and return their result; they never touch the loop. `stage` puts
the rows into the batch's one SQL statement (`ledger.rows`), with the ledger's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import msgspec

from ledger.errors import IdempotencyConflict
from ledger.rows import BatchRows
from ledger.writer import LedgerBatch
from market.report_store import ReportRow, Triple, VoucherRow, stage_report_rows
from market.sequencer.calls import CallRows
from market.sequencer.errors import InstrumentSettled, OrderRefused, TransactionRefused
from market.sequencer.state import MarketState
from market.store import (
    DeliveryRow,
    JournalEntry,
    OrderRow,
    WithdrawalRow,
    encode_entry,
    stage_market_batch,
)
from schemas.errors import DomainError
from schemas.ledger import TransactionResult
from schemas.market import Command, Event
from schemas.trading import FillView, OrderView, SettlementView

Key = tuple[str, str]  # (account, the caller's id)

#: Whether the gateway has calls in flight on an instrument, or charges of calls ended
#: not committed yet (`Sequencer.delivering`; `lifecycle.due` waits for them).
Delivering = Callable[[str], bool]


def nothing_delivering(instrument: str) -> bool:
    """An exchange with no gateway: no call is ever in flight."""
    return False


#: The tokens of the entitlement of (buyer, provider, instrument) the gateway has promised
#: away: reserved by calls in flight, plus charged by calls ended whose charge has not
#: committed yet (`Reservations.reserved`, the desk's). A provider's report or a buyer's
#: voucher may use the free entitlement less these, so that the call's charge, when it
#: comes, is never refused for want of entitlement (its provider unpaid for tokens served).
#: A charge staged but not committed yet is both out of the ledger's memory and still
#: here, so a claim in that moment may be refused that passes a batch later: never the
#: reverse.
Reserved = Callable[[str, str, str], int]


def nothing_reserved(buyer: str, provider: str, instrument: str) -> int:
    """An exchange with no gateway (or before its desk is attached): nothing reserved."""
    return 0


def in_flight(reserved: int) -> str:
    """What an `entitlement_exceeded` message adds when the gateway holds some of it."""
    return f", {reserved} of them reserved by gateway calls in flight" if reserved else ""


@dataclass(slots=True)
class Prior:
    """What the database already holds for the idempotency keys of a batch."""

    orders: dict[Key, OrderRow] = field(default_factory=dict)
    deliveries: dict[Key, DeliveryRow] = field(default_factory=dict)
    withdrawals: dict[Key, WithdrawalRow] = field(default_factory=dict)
    #: Providers' reports by (provider, report id), and those named by a dispute id.
    reports: dict[Key, ReportRow] = field(default_factory=dict)
    #: The last accepted voucher of each (buyer, provider, instrument) of the batch.
    vouchers: dict[Triple, VoucherRow] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    market: MarketState
    ledger: LedgerBatch
    time_ms: int
    currency: str
    prior: Prior
    max_open_orders: int
    journal: list[tuple[int, int, bytes]] = field(default_factory=list)
    instruments: list[tuple[Any, ...]] = field(default_factory=list)
    orders: dict[int, OrderRow] = field(default_factory=dict)
    #: Orders placed in this batch, by (account, client order id).
    placed: dict[Key, OrderRow] = field(default_factory=dict)
    fills: list[tuple[Any, ...]] = field(default_factory=list)
    fill_views: dict[int, list[FillView]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    deliveries: dict[Key, DeliveryRow] = field(default_factory=dict)
    settlements: list[SettlementView] = field(default_factory=list)
    withdrawals: dict[Key, WithdrawalRow] = field(default_factory=dict)
    #: Dead-man switches armed, refreshed or disarmed (`sequencer.deadman`), by account.
    cancel_after: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    #: Reports made or stepped (settled, disputed, resolved) by this batch.
    reports: dict[Key, ReportRow] = field(default_factory=dict)
    #: Vouchers accepted by this batch, by (buyer, provider, instrument) (the last one).
    vouchers: dict[Triple, VoucherRow] = field(default_factory=dict)
    voucher_rows: list[VoucherRow] = field(default_factory=list)
    #: The gateway's streaming calls marked or closed by this batch (`sequencer.calls`).
    calls: CallRows = field(default_factory=CallRows)
    #: What the gateway has in flight, as of the batch's start, and how long past its
    #: settlement time an instrument waits for it (`lifecycle.due`).
    delivering: Delivering = nothing_delivering
    settle_wait_ms: int = 0
    #: What the gateway holds of each entitlement (read when a report or voucher asks).
    reserved: Reserved = nothing_reserved

    def report(self, key: Key) -> ReportRow | None:
        """A report as this batch leaves it so far (or as the database had it)."""
        return self.reports.get(key) or self.prior.reports.get(key)

    #: Orders placed in this batch that rest, by account (on top of `market.open_count`).
    opened: dict[str, int] = field(default_factory=dict)

    def record(self, entry: JournalEntry) -> None:
        """Journal an entry (engine command or listing) under the next sequence number."""
        market = self.market
        self.journal.append((market.next_journal_seq, entry.time, encode_entry(entry)))
        market.next_journal_seq += 1

    def run_engine(self, command: Command) -> list[Event]:
        """Journal `command`, feed it to the engine, keep its events for publishing."""
        self.record(command)
        events = self.market.engine.process(command)
        self.events.extend(events)
        return events

    def order_view(self, row: OrderRow) -> OrderView:
        """The order as the batch leaves it (later commands of the batch may fill it)."""
        done = self.orders.get(row.order_id, row)
        return done.view(self.fill_views.get(done.order_id, ()))

    async def stage(self, conn: asyncpg.Connection, rows: BatchRows) -> None:
        """Add the market's rows of this batch to the batch's statement."""
        stage_market_batch(
            rows,
            journal=self.journal,
            instruments=self.instruments,
            orders=list(self.orders.values()),
            fills=self.fills,
            deliveries=list(self.deliveries.values()),
            settlements=self.settlements,
            withdrawals=list(self.withdrawals.values()),
        )
        rows.insert(
            "market_cancel_after", ("account_id", "deadline_ms", "updated_ms"),
            list(self.cancel_after.values()),
            on_conflict="ON CONFLICT (account_id) DO UPDATE SET deadline_ms = "
            "EXCLUDED.deadline_ms, updated_ms = EXCLUDED.updated_ms",
        )  # fmt: skip
        stage_report_rows(rows, list(self.reports.values()), self.voucher_rows)
        self.calls.stage(rows)


_digest_encoder = msgspec.msgpack.Encoder(order="sorted")


#: Optional fields added to a request after orders were first stored: left out of the
#: digest while unset, so a retry of a request made before they existed still matches.
_LATER_FIELDS = ("max_notional",)


#: Fields renamed on the wire after requests were first stored (`schemas.wire_time`),
#: new name -> old: digested under the old name, without the deprecated alias field (None
#: once decoded), so a retry of a request stored before the rename still matches.
_RENAMED = {"expire_at_ms": "expire_at"}


def digest(request: msgspec.Struct) -> bytes:
    """What identifies a request's body, for idempotency by the caller's id."""
    renamed = any(hasattr(request, f) for f in _RENAMED)
    if renamed or any(getattr(request, f, 0) is None for f in _LATER_FIELDS):
        fields = msgspec.structs.asdict(request)
        for name in _LATER_FIELDS:
            if fields.get(name, 0) is None:
                del fields[name]
        for new, old in _RENAMED.items():
            if new in fields:
                fields.pop(old, None)
                fields[old] = fields.pop(new)
        return hashlib.sha256(_digest_encoder.encode(fields)).digest()
    return hashlib.sha256(_digest_encoder.encode(request)).digest()


class _Digested(Protocol):
    @property
    def request_digest(self) -> bytes: ...


def replayed(earlier: _Digested | None, request_digest: bytes, conflict: str) -> bool:
    """Whether the request is a retry of `earlier` (same id): True if the same body,
    `IdempotencyConflict(conflict)` if another; False if the id is new."""
    if earlier is None:
        return False
    if earlier.request_digest != request_digest:
        raise IdempotencyConflict(conflict)
    return True


#: Refusals recorded under a command's id (`LedgerBatch.refuse`), by code: a replay of
#: one raises the type the first refusal had.
_REFUSALS: dict[str, type[DomainError]] = {
    InstrumentSettled.code: InstrumentSettled,
    "instrument_not_open": OrderRefused,
    "qty_off_lot": OrderRefused,
    "capacity_limit": OrderRefused,
}


def checked(result: TransactionResult) -> int:
    """A transaction of a user's request: its refusal is the user's error (of the same
    type when it is a refusal replayed under its id). Its index."""
    if not result.committed:
        message, code = result.message or "refused", result.code or "refused"
        if code == IdempotencyConflict.code:
            raise IdempotencyConflict(message or "id already used with another body")
        raise _REFUSALS.get(code, TransactionRefused)(message, code=code)
    assert result.index is not None
    return result.index


def must(result: TransactionResult) -> None:
    """A settlement transaction the pre-trade checks made certain: refusal is a bug."""
    if not result.committed:
        raise RuntimeError(
            f"settlement transaction {result.id} refused: {result.code} {result.message}"
        )
