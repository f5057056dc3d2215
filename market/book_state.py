"""Checks on a book snapshot before a book resumes from it.

The snapshot format itself is `schemas.market.BookSnapshot` (version
`SNAPSHOT_VERSION`): both sides in priority order, so it is the same whatever
queue structure holds the orders in memory.
"""

from __future__ import annotations

from typing import Final

from schemas.market import Instrument, RestingOrder, Side, TimeInForce

SNAPSHOT_VERSION: Final = 1


def snapshot_order_problem(
    instrument: Instrument,
    order: RestingOrder,
    side: Side,
    last_price: int | None,
    seen: bool,
) -> str | None:
    """What makes `order` impossible at its place in a snapshot of `instrument`'s
    book (after an order of `last_price` on `side`; `seen`: its id came earlier),
    or None."""
    if order.side is not side:
        return "on the wrong side"
    if seen:
        return "appears twice"
    if order.open <= 0 or order.filled < 0 or order.cancelled < 0:
        return "bad quantities"
    if order.filled + order.open + order.cancelled != order.quantity:
        return "quantity not conserved"
    if order.open % instrument.lot_size:
        return "open quantity off the lot"
    price = order.price
    if price % instrument.tick_size or not instrument.price_min <= price <= instrument.price_max:
        return "price off the tick or out of the band"
    if last_price is not None and (price > last_price if side is Side.BUY else price < last_price):
        return "out of priority order"
    if order.tif is not TimeInForce.GTC and order.tif is not TimeInForce.GTD:
        return "time in force cannot rest"
    if (order.tif is TimeInForce.GTD) is (order.expire_at is None):
        return "expire_at does not match the time in force"
    return None
