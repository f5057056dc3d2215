"""Small builders for market tests."""

from __future__ import annotations

from typing import Any

from market.book import OrderBook
from market.instruments import make_instrument
from schemas.market import (
    AmendOrder,
    CancelOrder,
    Event,
    Fill,
    Instrument,
    NewOrder,
    OrderRejected,
    Side,
)

SYMBOL = "llama-3.1-70b/2026-12-01T00Z/1h"
LOT = 1_000
TICK = 5
PMIN = 100
PMAX = 1_000


def instrument(symbol: str = SYMBOL, **overrides: Any) -> Instrument:
    rules: dict[str, Any] = {
        "lot_size": LOT,
        "tick_size": TICK,
        "price_min": PMIN,
        "price_max": PMAX,
    }
    rules.update(overrides)
    return make_instrument(symbol, **rules)


class Driver:
    """Wraps a book with a clock and an id counter so tests read like a tape."""

    def __init__(self, book: OrderBook | None = None) -> None:
        self.book = book if book is not None else OrderBook(instrument())
        self.t = 1_000
        self.next_id = 1

    def new(
        self,
        side: Side | str,
        qty_lots: int | None = None,
        price: int | None = None,
        *,
        owner: str = "alice",
        quantity: int | None = None,
        order_id: int | None = None,
        time: int | None = None,
        **kw: Any,
    ) -> list[Event]:
        if order_id is None:
            order_id = self.next_id
            self.next_id += 1
        if time is not None:
            self.t = time
        if quantity is None:
            assert qty_lots is not None
            quantity = qty_lots * LOT
        cmd = NewOrder(
            instrument=self.book.symbol,
            order_id=order_id,
            owner=owner,
            side=Side(side),
            quantity=quantity,
            time=self.t,
            price=price,
            **kw,
        )
        return self.book.process(cmd)

    def buy(self, qty_lots: int, price: int | None = None, **kw: Any) -> list[Event]:
        return self.new(Side.BUY, qty_lots, price, **kw)

    def sell(self, qty_lots: int, price: int | None = None, **kw: Any) -> list[Event]:
        return self.new(Side.SELL, qty_lots, price, **kw)

    def cancel(self, order_id: int, owner: str = "alice", time: int | None = None) -> list[Event]:
        if time is not None:
            self.t = time
        return self.book.process(
            CancelOrder(instrument=self.book.symbol, order_id=order_id, owner=owner, time=self.t)
        )

    def amend(
        self,
        order_id: int,
        *,
        price: int | None = None,
        quantity: int | None = None,
        owner: str = "alice",
    ) -> list[Event]:
        return self.book.process(
            AmendOrder(
                instrument=self.book.symbol,
                order_id=order_id,
                owner=owner,
                time=self.t,
                price=price,
                quantity=quantity,
            )
        )

    def queue(self, side: Side) -> list[int]:
        snap = self.book.to_snapshot()
        return [o.order_id for o in (snap.bids if side is Side.BUY else snap.asks)]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def fills(events: list[Event]) -> list[tuple[int, int, int, int]]:
    """(maker id, taker id, price, quantity) of each fill."""
    return [
        (e.maker_order_id, e.taker_order_id, e.price, e.quantity)
        for e in events
        if isinstance(e, Fill)
    ]


def reject_reason(events: list[Event]) -> str:
    assert len(events) == 1 and isinstance(events[0], OrderRejected), events
    return events[0].reason
