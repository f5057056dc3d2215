"""The resting order of the compiled book build (`ops.build_engine`).

Compiled by mypyc in place of `market.book_order` (see there): a native class
whose attributes are typed slots at fixed offsets, so compiled code reads and
writes them directly, where a msgspec Struct's attributes cost compiled code a
generic attribute look-up each (the reason the book compiled as it is ran at
~0.95x the interpreter). Never imported by the pure modules; the build checks
that it defines what `market.book_order` defines.
"""

from __future__ import annotations

from typing import Final, final

from mypy_extensions import mypyc_attr

from schemas.market import RestingOrder, Side, StpMode, TimeInForce

__all__ = ["COMPILED", "Resting", "from_wire", "to_wire"]

COMPILED: Final = True


@final
@mypyc_attr(acyclic=True)  # refers to no container: never tracked by the GC, as the Struct
class Resting:
    """Fields, positional order and meaning: `schemas.market.RestingOrder`."""

    def __init__(
        self,
        order_id: int,
        owner: str,
        client_order_id: str | None,
        side: Side,
        price: int,
        quantity: int,
        open: int,
        filled: int,
        cancelled: int,
        tif: TimeInForce,
        expire_at: int | None,
        stp: StpMode,
    ) -> None:
        self.order_id = order_id
        self.owner = owner
        self.client_order_id = client_order_id
        self.side = side
        self.price = price
        self.quantity = quantity
        self.open = open
        self.filled = filled
        self.cancelled = cancelled
        self.tif = tif
        self.expire_at = expire_at
        self.stp = stp


def to_wire(orders: list[Resting]) -> list[RestingOrder]:
    """The snapshot's form of `orders`: `RestingOrder` structs."""
    return [_wire(o) for o in orders]


def _wire(o: Resting) -> RestingOrder:
    return RestingOrder(
        o.order_id, o.owner, o.client_order_id, o.side, o.price, o.quantity, o.open, o.filled,
        o.cancelled, o.tif, o.expire_at, o.stp,
    )  # fmt: skip


def from_wire(order: RestingOrder) -> Resting:
    """A book's own order from a snapshot's."""
    o = order
    return Resting(
        o.order_id, o.owner, o.client_order_id, o.side, o.price, o.quantity, o.open, o.filled,
        o.cancelled, o.tif, o.expire_at, o.stp,
    )  # fmt: skip
