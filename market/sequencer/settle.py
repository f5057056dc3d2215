"""Engine events -> ledger transactions and order rows (the stage after matching).

`apply_events` takes what the engine said of a command — accepted, rejected, filled,
cancelled, expired, amended — and stages, through `market.clearing.rules`, the hold an
accepted order takes, delivery versus payment per fill, the releases of what a done
order no longer needs and the re-hold of an amended one; and updates the batch's
order rows to match. Every transaction here was made certain by the pre-trade check:
a refusal is a bug (`must`).
"""

from __future__ import annotations

from collections.abc import Sequence

from market.clearing import rules as settlement
from market.sequencer.batch import Batch, must
from market.store import OrderRow
from schemas.market import (
    Event,
    Fill,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    Side,
)
from schemas.trading import FillView


def apply_events(
    batch: Batch, events: Sequence[Event], placed: OrderRow | None = None,
    hold: int | None = None,
) -> None:  # fmt: skip
    """Turn the engine's events into ledger transactions and order updates. `placed` is
    the row of the order a `NewOrder` command placed, if that is what ran; `hold`, the
    cash it holds if not its reservation (a market buy's, `sequencer.protection`)."""
    #: Buys a fill or a partial cancel left open, and the seq of the last such event.
    touched: dict[int, tuple[str, int]] = {}
    for event in events:
        if isinstance(event, OrderAccepted):
            assert placed is not None and placed.order_id == event.order_id
            _accepted(batch, event, placed, hold)
        elif isinstance(event, OrderRejected):
            if placed is not None and event.order_id == placed.order_id:
                placed.status = "rejected"
                placed.reject_reason = event.reason
        elif isinstance(event, Fill):
            _filled(batch, event)
            buy = event.taker_order_id if event.aggressor_side is Side.BUY else event.maker_order_id
            touched[buy] = (event.instrument, event.seq)
        elif isinstance(event, OrderCancelled):
            _cancelled(batch, event)
            touched[event.order_id] = (event.instrument, event.seq)
        elif isinstance(event, OrderExpired):
            row = touch(batch, event.order_id)
            row.cancelled_quantity += event.expired_quantity
            row.open_quantity = 0
            row.status = "expired"
            row.updated_ms = event.time
            _release(batch, row, None, f"release:{event.instrument}:{event.seq}")
        elif isinstance(event, OrderAmended):
            _amended(batch, event)
    for order_id, (instrument, seq) in touched.items():
        _trim(batch, batch.orders[order_id], instrument, seq)


def _trim(batch: Batch, row: OrderRow, instrument: str, seq: int) -> None:
    """Cut an open buy's hold back to what its open quantity can still spend.

    A buy holds `buy_reservation` of its open quantity at its limit, but a fill takes
    only its cost at the fill price and the fee at the rate it paid, and a partial
    cancel releases the reservation of the cancelled part floored on its own. What
    that leaves over (the price improvement, the larger fee rate's excess over the
    maker's, the rounding) would otherwise stay held until the order is done. Run once
    per command, after all its events, so an order done by the command (an IOC, a
    market buy) posts nothing more; the id is the last event's, so a replay of the
    batch makes the same transaction.
    """
    if row.side is not Side.BUY or row.open_quantity == 0 or row.hold_id is None:
        return
    hold = batch.ledger.state.holds.get(row.hold_id)
    if hold is None:
        return
    assert row.price is not None
    terms = batch.market.instruments[instrument].terms
    excess = hold.remaining - settlement.buy_reservation(row.open_quantity, row.price, terms)
    if excess > 0:
        tx_id = f"release:{instrument}:{seq}:{row.order_id}:excess"
        must(
            batch.ledger.apply(
                settlement.release(tx_id, row.hold_id, excess, row.updated_ms, "excess")
            )
        )


def _accepted(batch: Batch, event: OrderAccepted, placed: OrderRow, hold: int | None) -> None:
    terms = batch.market.instruments[event.instrument].terms
    must(
        batch.ledger.apply(
            settlement.order_hold(
                event.order_id, event.owner, event.side, event.quantity, event.price, terms,
                event.time, hold,
            )
        )
    )  # fmt: skip
    placed.status = "open"
    placed.price = event.price
    placed.tif = event.tif
    placed.open_quantity = event.quantity
    placed.hold_id = settlement.order_hold_id(event.order_id)


def _cancelled(batch: Batch, event: OrderCancelled) -> None:
    row = touch(batch, event.order_id)
    row.cancelled_quantity += event.cancelled_quantity
    row.open_quantity = event.open_quantity
    row.updated_ms = event.time
    tx_id = f"release:{event.instrument}:{event.seq}"
    if event.open_quantity == 0:
        row.status = "cancelled"
        _release(batch, row, None, tx_id)
    else:
        terms = batch.market.instruments[event.instrument].terms
        assert row.price is not None
        amount = settlement.reservation(row.side, event.cancelled_quantity, row.price, terms)
        _release(batch, row, amount, tx_id)


def _amended(batch: Batch, event: OrderAmended) -> None:
    row = touch(batch, event.order_id)
    terms = batch.market.instruments[event.instrument].terms
    assert row.hold_id is not None
    generation = settlement.hold_generation(row.hold_id) + 1
    new_hold = settlement.order_hold_id(event.order_id, generation)
    account = settlement.hold_account(row.side, row.account_id, terms)
    amount = settlement.reservation(row.side, event.new_open_quantity, event.new_price, terms)
    must(
        batch.ledger.apply(
            settlement.rehold(
                f"amend:{event.instrument}:{event.seq}", row.hold_id, new_hold, account, amount,
                event.time,
            )
        )
    )  # fmt: skip
    row.hold_id = new_hold
    row.price = event.new_price
    row.quantity += event.new_open_quantity - event.old_open_quantity
    row.open_quantity = event.new_open_quantity
    row.updated_ms = event.time


def _filled(batch: Batch, event: Fill) -> None:
    maker = touch(batch, event.maker_order_id)
    taker = touch(batch, event.taker_order_id)
    buy, sell = (taker, maker) if event.aggressor_side is Side.BUY else (maker, taker)
    terms = batch.market.instruments[event.instrument].terms
    assert buy.hold_id is not None and sell.hold_id is not None
    tx, buyer_fee = settlement.fill(
        event,
        buy_hold=buy.hold_id,
        sell_hold=sell.hold_id,
        buyer=buy.account_id,
        provider=sell.account_id,
        terms=terms,
    )
    must(batch.ledger.apply(tx))
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
                instrument=event.instrument, seq=event.seq, time_ms=event.time,
                order_id=row.order_id, side=row.side, role=role, price=event.price,
                quantity=event.quantity, fee=buyer_fee if row.side is Side.BUY else 0,
                client_order_id=row.client_order_id,
            )
        )  # fmt: skip
        if open_quantity == 0:
            row.status = "filled"
            _release(batch, row, None, f"release:{event.instrument}:{event.seq}:{row.order_id}")


def touch(batch: Batch, order_id: int) -> OrderRow:
    """The order as this batch has it so far: a copy of the open order on first touch."""
    row = batch.orders.get(order_id)
    if row is not None:
        return row
    live = batch.market.live.get(order_id)
    if live is None:
        raise RuntimeError(f"engine event for order {order_id} the sequencer does not know")
    row = OrderRow(**{f: getattr(live, f) for f in OrderRow.__slots__})
    batch.orders[order_id] = row
    return row


def _release(batch: Batch, row: OrderRow, amount: int | None, tx_id: str) -> None:
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
    must(
        batch.ledger.apply(settlement.release(tx_id, row.hold_id, amount, row.updated_ms, "order"))
    )
