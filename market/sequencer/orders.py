"""Orders: the pre-trade check, then the engine (place, cancel, amend, mass cancel,
and the clock's GTD expiries). Each handler returns the order's row as this batch
has it; `Batch.order_view` answers from it once the whole batch is staged.

The pre-trade check asks the ledger batch's in-memory balances whether the hold an
order needs is available now; what the engine then says is turned into ledger
transactions by `settle.apply_events`. Refusals before the engine are rejected orders,
not journaled; the first that applies wins: unknown or settled instrument, closed book,
`max_notional` on anything but a market buy, the engine's own quantity and price checks
(`qty_off_lot`, `price_off_tick`, `price_out_of_band`, ...: `size_and_price_reason`),
too many open orders, then funds (and, for a market buy, the asks: `no_liquidity`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from market.book import OrderBook, default_tif
from market.book_state import size_and_price_reason, skips_own
from market.clearing import rules as settlement
from market.sequencer.batch import Batch, digest, replayed
from market.sequencer.errors import InstrumentSettled, OrderRefused, UnknownOrder
from market.sequencer.protection import BuyPlan, plan_market_buy
from market.sequencer.settle import apply_events
from market.sequencer.state import InstrumentState
from market.store import OrderRow
from schemas.market import (
    AdvanceTime,
    DepthLevel,
    Event,
    MassCancel,
    NewOrder,
    OrderCancelled,
    OrderRejected,
    OrderType,
    RejectReason,
    Side,
    TimeInForce,
)
from schemas.market import AmendOrder as EngineAmend
from schemas.market import CancelOrder as EngineCancel
from schemas.trading import AmendOrder, CancelledOrders, PlaceOrder

#: Reject reasons of the pre-trade check for market buys (`sequencer.protection`).
NO_LIQUIDITY = "no_liquidity"
MAX_NOTIONAL_NOT_ALLOWED = "max_notional_not_allowed"


def place(batch: Batch, account_id: str, req: PlaceOrder) -> OrderRow:
    """Place an order, or answer a retry (same client order id) with the first one."""
    key = (account_id, req.client_order_id)
    request_digest = digest(_tif_resolved(req))
    conflict = f"client order id {req.client_order_id} was used for another order"
    earlier = batch.prior.orders.get(key) or batch.placed.get(key)
    if earlier is not None and earlier.request_digest == _digest_before_resolving(req):
        request_digest = earlier.request_digest  # stored before the default was resolved
    if replayed(earlier, request_digest, conflict):
        assert earlier is not None
        return batch.market.live.get(earlier.order_id, earlier)
    market = batch.market
    order_id = market.next_order_id
    market.next_order_id += 1
    row = OrderRow(
        order_id=order_id, account_id=account_id, client_order_id=req.client_order_id,
        request_digest=request_digest, instrument=req.instrument, side=req.side,
        order_type=req.order_type, tif=req.tif or default_tif(req.order_type), price=req.price,
        quantity=req.quantity, open_quantity=0, filled_quantity=0, cancelled_quantity=0,
        status="rejected", reject_reason=None, hold_id=None, expire_at=req.expire_at_ms,
        created_ms=batch.time_ms, updated_ms=batch.time_ms,
    )  # fmt: skip
    batch.orders[order_id] = row
    batch.placed[key] = row
    refusal = _refusal(batch, account_id, req)
    if isinstance(refusal, str):
        row.reject_reason = refusal
        return row
    quantity, price, hold = req.quantity, req.price, None
    if refusal is not None:  # a market buy, priced on the book (sequencer.protection)
        if req.tif is TimeInForce.FOK and refusal.quantity < req.quantity:
            # All or nothing, and the book at or under its cap, or its `max_notional`,
            # buys less: it cannot fill (nor be let past the hold sized for the less).
            row.reject_reason = RejectReason.FOK_UNFILLABLE
            return row
        quantity = refusal.quantity
        price, hold = refusal.protection, refusal.hold
    command = NewOrder(
        instrument=req.instrument, order_id=order_id, owner=account_id, side=req.side,
        quantity=quantity, time=batch.time_ms, price=price, order_type=req.order_type,
        tif=req.tif, expire_at=req.expire_at_ms, post_only=req.post_only, stp=req.stp,
        client_order_id=req.client_order_id,
    )  # fmt: skip
    apply_events(batch, batch.run_engine(command), placed=row, hold=hold)
    if quantity < req.quantity and row.status in ("filled", "cancelled"):
        # What the book could not give a market buy is its IOC remainder, as before.
        row.cancelled_quantity += req.quantity - quantity
        row.status = "cancelled"
    if row.status == "open":
        batch.opened[account_id] = batch.opened.get(account_id, 0) + 1
    return row


def _tif_resolved(req: PlaceOrder) -> PlaceOrder:
    """`req` with its time in force named: no `tif` and the order type's default are one
    request, so a retry that spells the default out is the same order, not a conflict."""
    if req.tif is not None:
        return req
    return msgspec.structs.replace(req, tif=default_tif(req.order_type))


def _digest_before_resolving(req: PlaceOrder) -> bytes | None:
    """The digest an order of the default time in force was stored under before it was
    resolved (no `tif`: `digest` of the request as it came), so that a retry of one,
    naming the default or not, still matches it; None if `req` names another."""
    if req.tif is not None and req.tif is not default_tif(req.order_type):
        return None
    return digest(msgspec.structs.replace(req, tif=None))


TOO_MANY_OPEN_ORDERS = "too_many_open_orders"


def _may_rest(req: PlaceOrder) -> bool:
    return (req.tif or default_tif(req.order_type)) in (TimeInForce.GTC, TimeInForce.GTD)


def _refusal(batch: Batch, account_id: str, req: PlaceOrder) -> str | BuyPlan | None:
    """Why the order is rejected before the engine, if it is: the pre-trade check. A
    market buy that passes gets its plan (what it sends and holds)."""
    state = batch.market.instruments.get(req.instrument)
    if state is None:
        return "unknown_instrument"
    if state.settlement is not None:
        return InstrumentSettled.code
    if state.trading_closed:  # before funds: the clearer reason
        return RejectReason.INSTRUMENT_CLOSED
    market_buy = req.order_type is OrderType.MARKET and req.side is Side.BUY
    if req.max_notional is not None and not market_buy:
        return MAX_NOTIONAL_NOT_ALLOWED
    instrument = state.instrument
    price = req.price
    if price is None and req.order_type is OrderType.MARKET:
        price = instrument.price_max if market_buy else instrument.price_min
    # The engine's own checks of quantity and price, before the open orders and funds:
    # an off-lot, off-tick or out-of-band order gets that reason (as the engine would
    # give it), not `insufficient_funds` for a reservation it could never make.
    if (reason := size_and_price_reason(instrument, req.quantity, price)) is not None:
        return reason
    market = batch.market
    if _may_rest(req) and (
        market.open_count.get(account_id, 0) + batch.opened.get(account_id, 0)
        >= batch.max_open_orders
    ):
        return TOO_MANY_OPEN_ORDERS
    if market_buy:
        return _market_buy(batch, account_id, req, state)
    assert price is not None  # `size_and_price_reason` refuses a limit order without one
    need = settlement.reservation(req.side, req.quantity, price, state.terms)
    account = settlement.hold_account(req.side, account_id, state.terms)
    if need > batch.ledger.state.balance(account).available:
        return "insufficient_funds" if req.side is Side.BUY else "insufficient_capacity"
    return None


def _market_buy(
    batch: Batch, account_id: str, req: PlaceOrder, state: InstrumentState
) -> str | BuyPlan:
    """A market buy priced on the asks as they stand: its plan, or why it is refused."""
    book = batch.market.engine.book(req.instrument)
    own = _own_asks(book, account_id) if skips_own(req.stp) else {}
    plan = plan_market_buy(
        _asks(book), req.quantity, state.terms, cap=req.price, max_notional=req.max_notional,
        stp=req.stp, own=own,
    )  # fmt: skip
    if plan is None:
        return NO_LIQUIDITY
    account = settlement.hold_account(Side.BUY, account_id, state.terms)
    if plan.hold > batch.ledger.state.balance(account).available:
        return "insufficient_funds"
    return plan


def _asks(book: OrderBook) -> Iterator[DepthLevel]:
    """The book's asks, best first, read in growing slices (a walk rarely goes deep)."""
    shown, levels = 0, 16
    while True:
        asks = book.depth(levels).asks
        yield from asks[shown:]
        if len(asks) < levels:
            return
        shown, levels = len(asks), levels * 4


def _own_asks(book: OrderBook, account_id: str) -> dict[int, int]:
    """The buyer's open ask quantity by price (its own orders only: at most the open
    order limit)."""
    own: dict[int, int] = {}
    for o in book.open_orders(account_id):
        if o.side is Side.SELL:
            own[o.price] = own.get(o.price, 0) + o.open_quantity
    return own


def _owned(batch: Batch, account_id: str, order_id: int) -> OrderRow:
    """The caller's open order, as this batch has it so far."""
    row = batch.orders.get(order_id) or batch.market.live.get(order_id)
    if row is None or row.account_id != account_id or row.status != "open":
        raise UnknownOrder(f"no open order {order_id}")
    return row


def cancel(batch: Batch, account_id: str, order_id: int) -> OrderRow:
    row = _owned(batch, account_id, order_id)
    command = EngineCancel(
        instrument=row.instrument, order_id=order_id, owner=account_id, time=batch.time_ms
    )
    events = batch.run_engine(command)
    apply_events(batch, events)
    _raise_reject(events, order_id)
    return row


def amend(batch: Batch, account_id: str, order_id: int, req: AmendOrder) -> OrderRow:
    """Change price and/or open quantity, if the rebuilt hold is available."""
    row = _owned(batch, account_id, order_id)
    terms = batch.market.instrument(row.instrument).terms
    new_price = req.price if req.price is not None else row.price
    new_open = req.quantity if req.quantity is not None else row.open_quantity
    assert new_price is not None
    need = settlement.reservation(row.side, new_open, new_price, terms)
    state = batch.ledger.state
    hold = state.holds.get(row.hold_id or "")
    held = 0 if hold is None else hold.remaining
    account = settlement.hold_account(row.side, account_id, terms)
    if need > held + state.balance(account).available:
        raise OrderRefused(
            "not enough available to amend the order",
            code="insufficient_funds" if row.side is Side.BUY else "insufficient_capacity",
        )
    command = EngineAmend(
        instrument=row.instrument, order_id=order_id, owner=account_id, time=batch.time_ms,
        price=req.price, quantity=req.quantity,
    )  # fmt: skip
    events = batch.run_engine(command)
    apply_events(batch, events)
    _raise_reject(events, order_id)
    return row


def cancel_all(batch: Batch, account_id: str, instrument: str | None) -> CancelledOrders:
    if instrument is not None:
        batch.market.instrument(instrument)
    events = batch.run_engine(
        MassCancel(time=batch.time_ms, owner=account_id, instrument=instrument)
    )
    apply_events(batch, events)
    return CancelledOrders(cancelled=[e.order_id for e in events if isinstance(e, OrderCancelled)])


def expire_due(batch: Batch) -> None:
    """Expire the GTD orders whose time has come (the engine's clock)."""
    if batch.market.gtd_due(batch.time_ms):
        apply_events(batch, batch.run_engine(AdvanceTime(time=batch.time_ms)))


def _raise_reject(events: Iterable[Event], order_id: int) -> None:
    for event in events:
        if isinstance(event, OrderRejected) and event.order_id == order_id:
            if event.reason == "unknown_order":
                raise UnknownOrder(f"no open order {order_id}")
            raise OrderRefused(f"refused: {event.reason}", code=event.reason)
