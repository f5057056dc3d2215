"""The resting order as the book's storage holds it (pure build).

In the pure modules a resting order *is* `schemas.market.RestingOrder` (a
msgspec Struct: the cheapest object to build from Python), so the snapshot
lists the book's own objects and `to_wire` is the identity. The optional
compiled build (`ops.build_engine`) compiles the book modules with
`market.book_order_native` in place of this module: there the order is a
native class (typed attributes at fixed offsets), converted at snapshot time.
Both modules define the same four names with the same meaning.
"""

from __future__ import annotations

from typing import Final

import msgspec

from schemas.market import RestingOrder

__all__ = ["COMPILED", "Resting", "from_wire", "to_wire"]

COMPILED: Final = False  # True in `market.book_order_native`: the build the book runs in

Resting = RestingOrder  # fields, positional order and meaning: `schemas.market.RestingOrder`


def to_wire(orders: list[Resting]) -> list[RestingOrder]:
    """The snapshot's form of `orders` (here: themselves)."""
    return orders


def from_wire(order: RestingOrder) -> Resting:
    """A book's own copy of a snapshot's order (the snapshot stays untouched)."""
    return msgspec.structs.replace(order)
