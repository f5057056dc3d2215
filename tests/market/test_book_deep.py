"""Deep price levels against the reference matcher: cancels, amends and
expiries at random queue positions in levels of hundreds of orders (where the
book leaves tombstones behind and compacts them), takers sweeping through
them, mass cancels, and snapshot/restore in the middle."""

from __future__ import annotations

import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import market.level
from market.book import OrderBook
from market.instruments import make_instrument
from market.level import LEVEL_COMPACT_MIN
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    Command,
    MassCancel,
    NewOrder,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)
from tests.market.reference import ReferenceBook

SYMBOL = "m/2026-12-01T00Z/1h"
LOT = 10
OWNERS = ["a", "b", "c", "d", "e"]
BIDS = [96, 97, 98]
ASKS = [102, 103, 104]


class _Pair:
    """The book and the reference, fed the same commands."""

    def __init__(self, book_cls: type[OrderBook] = OrderBook) -> None:
        inst = make_instrument(SYMBOL, lot_size=LOT, tick_size=1, price_min=90, price_max=110)
        self.book_cls = book_cls
        self.book = book_cls(inst)
        self.ref = ReferenceBook(inst)
        self.t = 1_000
        self.next_id = 1

    def apply(self, cmd: Command) -> None:
        got = self.book.process(cmd)
        want = self.ref.process(cmd)
        assert got == want, f"{cmd}\n got {got}\n want {want}"

    def new(self, side: Side, price: int, qty_lots: int, owner: str, gtd: int | None) -> None:
        self.t += 1
        self.apply(
            NewOrder(
                instrument=SYMBOL, order_id=self.next_id, owner=owner, side=side,
                quantity=qty_lots * LOT, time=self.t, price=price,
                tif=TimeInForce.GTD if gtd is not None else TimeInForce.GTC,
                expire_at=None if gtd is None else self.t + gtd,
                stp=StpMode.CANCEL_OLDEST, client_order_id=f"c{self.next_id}",
            )
        )  # fmt: skip
        self.next_id += 1

    def same_state(self) -> None:
        assert self.book.open_orders() == self.ref.open_orders()
        snap = self.book.to_snapshot()
        assert [o.order_id for o in snap.bids] == self.ref.queue_ids(Side.BUY)
        assert [o.order_id for o in snap.asks] == self.ref.queue_ids(Side.SELL)
        depth = self.book.depth(100)
        assert depth.bids == self.ref.depth(Side.BUY)
        assert depth.asks == self.ref.depth(Side.SELL)
        # each level's tombstone count is exact (sweeping starts from it), and
        # the front of a non-empty level is a live order
        book = self.book
        for levels in (book._bids, book._asks):
            for key, level in levels.items():
                assert book._dead[key] == sum(1 for o in level if not o.open), key
                assert not level or level[0].open


def _pick(pair: _Pair, roll: int) -> int | None:
    """The order at a position spread over one side's whole queue."""
    side = Side.BUY if roll % 2 else Side.SELL
    queue = pair.ref.queue_ids(side)
    return queue[(roll // 2) % len(queue)] if queue else None


def _step(pair: _Pair, kind: int, roll: int) -> None:
    pair.t += 1
    t = pair.t
    oid = _pick(pair, roll)
    order = None if oid is None else pair.book.get_order(oid)
    if kind < 6 and order is not None:  # cancel anywhere in the queue
        pair.apply(
            CancelOrder(instrument=SYMBOL, order_id=order.order_id, owner=order.owner, time=t)
        )
    elif kind == 6 and order is not None:  # amend: smaller in place, or to another price
        if roll % 3 and order.open_quantity > LOT:
            amend = AmendOrder(
                instrument=SYMBOL, order_id=order.order_id, owner=order.owner, time=t,
                quantity=order.open_quantity - LOT,
            )  # fmt: skip
        else:
            prices = BIDS if order.side is Side.BUY else ASKS
            amend = AmendOrder(
                instrument=SYMBOL, order_id=order.order_id, owner=order.owner, time=t,
                price=prices[roll % len(prices)],
            )  # fmt: skip
        pair.apply(amend)
    elif kind == 7:  # a taker through the front of one side (tombstones there)
        side = Side.BUY if roll % 2 else Side.SELL
        pair.apply(
            NewOrder(
                instrument=SYMBOL, order_id=pair.next_id, owner=OWNERS[roll % len(OWNERS)],
                side=side, quantity=LOT * (1 + roll % 60), time=t,
                order_type=OrderType.MARKET, stp=StpMode(list(StpMode)[roll % len(StpMode)]),
            )
        )  # fmt: skip
        pair.next_id += 1
    elif kind == 8:
        pair.apply(MassCancel(instrument=SYMBOL, owner=OWNERS[roll % len(OWNERS)], time=t))
    elif kind == 9:
        pair.t += roll % 40
        pair.apply(AdvanceTime(time=pair.t))
    else:  # a new passive order at the back of a deep level
        side = Side.BUY if roll % 2 else Side.SELL
        prices = BIDS if side is Side.BUY else ASKS
        gtd = 5 + roll % 200 if roll % 4 == 0 else None
        pair.new(side, prices[roll % 3], 1 + roll % 5, OWNERS[roll % len(OWNERS)], gtd)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_level=st.integers(20, 160),
    steps=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 10**6)), max_size=250),
    restore_at=st.integers(0, 250),
)
def test_deep_levels_match_the_reference(
    per_level: int, steps: list[tuple[int, int]], restore_at: int
) -> None:
    deep_levels_match_the_reference(OrderBook, per_level, steps, restore_at)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_level=st.integers(20, 80),
    steps=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 10**6)), max_size=400),
)
def test_sweeps_a_few_entries_at_a_time_keep_priority(
    per_level: int, steps: list[tuple[int, int]]
) -> None:
    """With a sweep of 7 entries a cancel (so every level is swept in many steps
    from its cursor, wrapping round), the book still matches the reference."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(market.level, "SWEEP", 7)
        deep_levels_match_the_reference(OrderBook, per_level, steps, restore_at=10**6)


def deep_levels_match_the_reference(
    book_cls: type[OrderBook], per_level: int, steps: list[tuple[int, int]], restore_at: int
) -> None:
    """Levels of `per_level` orders, then `steps`, on a `book_cls` beside the reference."""
    pair = _Pair(book_cls)
    for i in range(per_level):
        for side, prices in ((Side.BUY, BIDS), (Side.SELL, ASKS)):
            for price in prices:
                gtd = 50 + i if i % 7 == 0 else None
                pair.new(side, price, 1 + i % 4, OWNERS[(i + price) % len(OWNERS)], gtd)
    pair.same_state()
    for n, (kind, roll) in enumerate(steps):
        if n == restore_at:
            before = pair.book.state_hash()
            pair.book = pair.book_cls.restore(pair.book.snapshot())
            assert pair.book.state_hash() == before
        _step(pair, kind, roll)
        if n % 25 == 0:
            pair.same_state()
    pair.same_state()


def test_cancels_deep_in_a_level_keep_its_memory_bounded() -> None:
    """Cancelling most of a long queue from its middle leaves tombstones, and the
    level is compacted so it never holds more than its live orders plus the
    minimum; the survivors keep their order."""
    pair = _Pair()
    for i in range(2_000):
        pair.new(Side.BUY, 98, 1, OWNERS[i % len(OWNERS)], None)
    level = pair.book._bids[-98]
    kept = []
    for oid in range(1, 2_001):
        if oid % 10 == 0 or oid == 1:
            kept.append(oid)
            continue
        pair.apply(
            CancelOrder(instrument=SYMBOL, order_id=oid, owner=OWNERS[(oid - 1) % 5], time=pair.t)
        )
        live = sum(1 for o in level if o.open)
        assert len(level) <= 2 * live + 2 * LEVEL_COMPACT_MIN + 2
    assert (
        [o.order_id for o in pair.book.to_snapshot().bids] == kept == pair.ref.queue_ids(Side.BUY)
    )
    assert pair.book.depth(1).bids[0].orders == len(kept)


def test_a_long_level_is_swept_from_a_cursor_that_wraps_round() -> None:
    """Cancels at random positions in one long queue, swept 7 entries a cancel:
    the cursor moves through the level and starts again, the tombstones stay
    fewer than the live orders plus the minimum, and the queue is the reference's."""
    rng = random.Random(11)
    pair = _Pair()
    for i in range(400):
        pair.new(Side.BUY, 98, 1, OWNERS[i % len(OWNERS)], None)
    level, cursors = pair.book._bids[-98], pair.book._sweep
    starts = set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(market.level, "SWEEP", 7)
        for _ in range(360):
            oid = rng.choice(pair.ref.queue_ids(Side.BUY)[1:])
            pair.t += 1
            pair.apply(CancelOrder(instrument=SYMBOL, order_id=oid,
                                   owner=OWNERS[(oid - 1) % 5], time=pair.t))  # fmt: skip
            starts.add(cursors.get(-98, 0))
            live = sum(1 for o in level if o.open)
            assert len(level) - live <= live + LEVEL_COMPACT_MIN + 1
            pair.same_state()
    assert len(starts) > 10 and 0 in starts  # it moved, and wrapped round
    assert [o.order_id for o in pair.book.to_snapshot().bids] == pair.ref.queue_ids(Side.BUY)


def test_amends_that_requeue_deep_in_a_level_keep_the_owner_index_bounded() -> None:
    """An amend that moves an order deep in a long queue leaves its old place as a
    tombstone and rests a new copy; the owner's index drops the old ones as it grows,
    and a mass cancel still cancels each live order once, like the reference."""
    pair = _Pair()
    for i in range(200):
        pair.new(Side.BUY, 98, 1, "a" if i % 2 else "b", None)
    owned = pair.book._owners["a"][1]
    for n in range(2_000):
        oid = 2 * (n % 100) + 2  # a's orders, all behind b's first one
        price = 97 if (n // 100) % 2 == 0 else 98
        pair.t += 1
        pair.apply(AmendOrder(instrument=SYMBOL, order_id=oid, owner="a", time=pair.t,
                              price=price))  # fmt: skip
        assert len(owned) <= 4 * 100 + 64  # never more than 4x the live ones (plus slack)
    pair.t += 1
    pair.apply(MassCancel(instrument=SYMBOL, owner="a", time=pair.t))
    assert [o.owner for o in pair.book.open_orders()] == ["b"] * 100
