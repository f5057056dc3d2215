"""The sequencer's memory of the market: one `InstrumentState` per instrument, the
matching engine, the open orders and the counters. Built by `recovery` from the
database (start-up, failed commit) and changed only by a batch's handlers, which a
failed commit takes back by rebuilding."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from market.book import OrderBook
from market.clearing.rules import NOTHING_DELIVERED, Delivered, DeliverySplit, Terms
from market.errors import UnknownInstrument
from market.report_store import ReportRow
from market.snapshots import SettlingEngine
from market.store import OrderRow
from schemas.market import Instrument, TradingState
from schemas.trading import SettlementView


@dataclass(slots=True)
class InstrumentState:
    """Everything the sequencer knows of one instrument: its book (in the engine), the
    terms settlement needs, its window and grace, and its settlement once settled."""

    book: OrderBook
    terms: Terms
    delivery_grace_s: int
    #: The window's end: trading closes (ms).
    window_end_ms: int
    #: The window's end plus the delivery grace: the instrument settles (ms), once no
    #: report is pending on it.
    settle_at_ms: int
    #: How long a provider's own report is pending (disputable) before it settles.
    dispute_period_s: int = 0
    settlement: SettlementView | None = None
    #: Providers' own reports still in their dispute period, by (provider, report id).
    pending: dict[tuple[str, str], ReportRow] = field(default_factory=dict)
    #: While the settlement waits for the gateway's calls on it (`lifecycle.due`): when
    #: to look again (ms; memory only: a rebuild looks again at once).
    settle_check_ms: int = 0
    #: What each (buyer, provider) has delivered so far on it, providers' reports from
    #: when they are made (`rules.Delivered`: the release and fee are rounded on these
    #: totals). Rebuilt by recovery from `market_deliveries` and the reports still
    #: pending or disputed (`store.load_delivered`); dropped at settlement.
    delivered: dict[tuple[str, str], Delivered] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        book: OrderBook,
        terms: Terms,
        delivery_grace_s: int,
        settlement: SettlementView | None = None,
        dispute_period_s: int | None = None,
    ) -> InstrumentState:
        """The one place an instrument's state is made (listing it, or recovery).
        `dispute_period_s` None: the delivery grace."""
        i = book.instrument
        end_ms = (i.window_start + i.duration) * 1000
        return cls(
            book=book,
            terms=terms,
            delivery_grace_s=delivery_grace_s,
            window_end_ms=end_ms,
            settle_at_ms=end_ms + delivery_grace_s * 1000,
            dispute_period_s=delivery_grace_s if dispute_period_s is None else dispute_period_s,
            settlement=settlement,
        )

    @property
    def symbol(self) -> str:
        return self.terms.symbol

    @property
    def instrument(self) -> Instrument:
        return self.book.instrument

    @property
    def trading_closed(self) -> bool:
        return self.book.trading_state is TradingState.CLOSED

    def delivered_by(self, buyer: str, provider: str) -> Delivered:
        return self.delivered.get((buyer, provider), NOTHING_DELIVERED)

    def deliver(self, buyer: str, provider: str, split: DeliverySplit) -> None:
        """A delivery's split is fixed (staged in the batch; taken back by the rebuild if
        the batch fails, like `pending`)."""
        if self.settlement is None:
            self.delivered[(buyer, provider)] = self.delivered_by(buyer, provider).plus(split)

    def undeliver(self, buyer: str, provider: str, split: DeliverySplit) -> None:
        """A report refunded by a dispute: as if it had never been made."""
        if self.settlement is None:
            self.delivered[(buyer, provider)] = self.delivered_by(buyer, provider).minus(split)

    @property
    def next_report_due_ms(self) -> int | float:
        """When the first pending report's dispute period ends; infinity if none."""
        return min((r.due_ms for r in self.pending.values()), default=float("inf"))

    @property
    def next_event_ms(self) -> int | float:
        """When this instrument's next step comes due: a pending report settling, its
        close, or else its settlement (which waits for every pending report)."""
        if not self.trading_closed:
            return min(self.window_end_ms, self.next_report_due_ms)
        if self.pending:
            return self.next_report_due_ms
        return max(self.settle_at_ms, self.settle_check_ms)


def terms_of(record: asyncpg.Record) -> Terms:
    """An instrument's terms from its `market_instruments` row."""
    return Terms(
        symbol=record["symbol"],
        lot_size=record["lot_size"],
        currency=record["currency"],
        maker_fee_bps=record["maker_fee_bps"],
        taker_fee_bps=record["taker_fee_bps"],
        provider_fee_bps=record["provider_fee_bps"],
        completion_weight=record["completion_weight"],
    )


@dataclass(slots=True)
class MarketState:
    engine: SettlingEngine
    instruments: dict[str, InstrumentState] = field(default_factory=dict)
    #: The instruments not yet settled (an index of `instruments`, for the clock).
    unsettled: dict[str, InstrumentState] = field(default_factory=dict)
    live: dict[int, OrderRow] = field(default_factory=dict)  # open orders
    gtd: dict[int, int] = field(default_factory=dict)  # open GTD order id -> expire_at
    #: Armed dead-man switches: account -> deadline (ms) (`sequencer.deadman`).
    cancel_after: dict[str, int] = field(default_factory=dict)
    open_count: dict[str, int] = field(default_factory=dict)  # account -> its open orders
    next_order_id: int = 1
    next_journal_seq: int = 0

    def add(self, state: InstrumentState) -> None:
        self.instruments[state.symbol] = state
        if state.settlement is None:
            self.unsettled[state.symbol] = state

    def instrument(self, symbol: str) -> InstrumentState:
        state = self.instruments.get(symbol)
        if state is None:
            raise UnknownInstrument(f"unknown instrument {symbol!r}")
        return state

    def settled(self, state: InstrumentState, view: SettlementView) -> None:
        state.settlement = view
        state.delivered.clear()  # nothing more is delivered (a disputed report's is fixed)
        self.unsettled.pop(state.symbol, None)

    def reduce_settled(self, symbols: Iterable[str]) -> None:
        """Once their settlement is committed: the books of these instruments keep only
        their instrument and seq (`SettlingEngine.reduce_settled`), as recovery leaves
        them."""
        symbols = list(symbols)
        if symbols and self.engine.reduce_settled(symbols):
            for symbol in symbols:
                self.instruments[symbol].book = self.engine.book(symbol)

    def next_window_event_ms(self) -> int | float:
        """When the next window closes or settles (ms); infinity if none is pending."""
        return min((s.next_event_ms for s in self.unsettled.values()), default=float("inf"))

    def gtd_due(self, now_ms: int) -> bool:
        return bool(self.gtd) and min(self.gtd.values()) <= now_ms

    def cancel_after_due(self, now_ms: int) -> bool:
        return bool(self.cancel_after) and min(self.cancel_after.values()) <= now_ms

    def committed(self, orders: Iterable[OrderRow]) -> None:
        """A batch's orders are durable: keep the open ones, forget the others."""
        counts = self.open_count
        for row in orders:
            account = row.account_id
            if row.status == "open":
                if row.order_id not in self.live:
                    counts[account] = counts.get(account, 0) + 1
                self.live[row.order_id] = row
                if row.expire_at is not None:
                    self.gtd[row.order_id] = row.expire_at
            else:
                if self.live.pop(row.order_id, None) is not None:
                    counts[account] -= 1
                    if not counts[account]:
                        del counts[account]
                self.gtd.pop(row.order_id, None)
