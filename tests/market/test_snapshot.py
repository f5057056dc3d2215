"""Snapshots, restore and the state hash."""

from __future__ import annotations

import random

import msgspec
import pytest

from market.book import OrderBook
from market.engine import MatchingEngine
from market.errors import InvalidSnapshot
from schemas.market import (
    AmendOrder,
    BookSnapshot,
    CancelOrder,
    Command,
    NewOrder,
    OrderType,
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
)
from tests.market.helpers import LOT, SYMBOL, Driver, instrument


def _busy_book() -> Driver:
    d = Driver()
    d.sell(2, 510, owner="m1", client_order_id="a")
    d.sell(1, 510, owner="m2")
    d.sell(3, 520, owner="m1", tif=TimeInForce.GTD, expire_at=5_000)
    d.buy(1, 500, owner="b1")
    d.buy(2, 495, owner="b2", client_order_id="a")
    d.buy(1, 510, owner="t")  # partially fills order 1
    return d


def random_commands(n: int, seed: int) -> list[Command]:
    rng = random.Random(seed)
    cmds: list[Command] = []
    for i in range(n):
        t = 1_000 + i
        roll = rng.random()
        if roll < 0.7:
            kind = rng.random()
            cmds.append(
                NewOrder(
                    instrument=SYMBOL,
                    order_id=i + 1,
                    owner=rng.choice("abc"),
                    side=rng.choice(list(Side)),
                    quantity=LOT * rng.randint(1, 4),
                    time=t,
                    price=rng.randrange(480, 530, 5),
                    order_type=OrderType.MARKET if kind < 0.05 else OrderType.LIMIT,
                    tif=(
                        TimeInForce.GTD
                        if 0.05 <= kind < 0.2
                        else TimeInForce.IOC
                        if kind < 0.05
                        else TimeInForce.GTC
                    ),
                    expire_at=t + rng.randint(1, 50) if 0.05 <= kind < 0.2 else None,
                    stp=rng.choice(list(StpMode)),
                )
            )
        elif roll < 0.9:
            cmds.append(
                CancelOrder(instrument=SYMBOL, order_id=rng.randint(1, i + 1), owner="a", time=t)
            )
        else:
            cmds.append(
                AmendOrder(
                    instrument=SYMBOL,
                    order_id=rng.randint(1, i + 1),
                    owner=rng.choice("abc"),
                    time=t,
                    quantity=LOT * rng.randint(1, 4),
                )
            )
    return cmds


def test_restore_gives_an_identical_book() -> None:
    d = _busy_book()
    data = d.book.snapshot()
    restored = OrderBook.restore(data)
    assert restored.state_hash() == d.book.state_hash()
    assert restored.snapshot() == data
    assert restored.open_orders() == d.book.open_orders()
    assert restored.depth() == d.book.depth()
    assert restored.next_seq == d.book.next_seq
    # it behaves the same from here
    for book in (d.book, restored):
        assert Driver(book).new(Side.BUY, quantity=LOT, price=510, order_id=99, time=2_000)
    assert restored.state_hash() == d.book.state_hash()


def test_restore_keeps_used_client_ids_and_gtd_expiry() -> None:
    d = _busy_book()
    restored = Driver(OrderBook.restore(d.book.snapshot()))
    restored.t = 5_000
    events = restored.buy(1, 450, owner="m1", client_order_id="a")
    assert [type(e).__name__ for e in events] == ["OrderExpired", "OrderRejected"]


def test_replay_from_a_snapshot_gives_the_same_events_and_hash() -> None:
    cmds = random_commands(3_000, seed=1)
    book = OrderBook(instrument())
    for cmd in cmds[:1_000]:
        book.process(cmd)
    snap = book.snapshot()
    first = [book.process(cmd) for cmd in cmds[1_000:]]
    replica = OrderBook.restore(snap)
    second = [replica.process(cmd) for cmd in cmds[1_000:]]
    assert first == second
    assert replica.state_hash() == book.state_hash()
    # and the events encode to the same bytes
    enc = msgspec.msgpack.encode
    assert enc(first) == enc(second)


def test_same_queue_order_same_hash_from_different_paths() -> None:
    """Two books reaching the same state by different routes share a hash."""
    a, b = Driver(), Driver()
    a.sell(1, 510)  # order 1
    a.sell(1, 520)  # order 2
    b.sell(1, 520, order_id=2)
    b.sell(1, 510, order_id=1)
    assert a.book.state_hash() == b.book.state_hash()


def test_any_difference_changes_the_hash() -> None:
    base = _busy_book().book.state_hash()
    variants = []
    # queue order within a level
    x = Driver()
    x.sell(1, 510, order_id=1)
    x.sell(1, 510, order_id=2)
    y = Driver()
    y.sell(1, 510, order_id=2)
    y.sell(1, 510, order_id=1)
    assert x.book.state_hash() != y.book.state_hash()
    # a quantity, a price, the seq, the trading state, a used client order id
    d = _busy_book()
    d.amend(4, quantity=LOT, owner="b1")  # rejected (no change): only the seq moves
    variants.append(d.book.state_hash())
    d = _busy_book()
    d.buy(1, 450, owner="b1", client_order_id="new")
    d.cancel(7, owner="b1")  # the same orders again, one more used client id (and seq)
    variants.append(d.book.state_hash())
    d = _busy_book()
    d.book.process(SetTradingState(instrument=SYMBOL, state=TradingState.HALTED, time=d.t))
    variants.append(d.book.state_hash())
    d = _busy_book()
    d.amend(5, price=490, owner="b2")
    variants.append(d.book.state_hash())
    assert len({base, *variants}) == 1 + len(variants)


def test_restoring_garbage_raises() -> None:
    with pytest.raises(InvalidSnapshot):
        OrderBook.restore(b"not msgpack")
    snap = msgspec.msgpack.decode(_busy_book().book.snapshot(), type=BookSnapshot)
    bad = msgspec.structs.replace(snap, version=99)
    with pytest.raises(InvalidSnapshot):
        OrderBook.restore(msgspec.msgpack.encode(bad))
    bad = msgspec.structs.replace(snap, bids=snap.asks)
    with pytest.raises(InvalidSnapshot):
        OrderBook.restore(msgspec.msgpack.encode(bad))
    with pytest.raises(InvalidSnapshot):
        MatchingEngine.restore(b"\x00")


def test_engine_snapshot_round_trip() -> None:
    other = "mistral-large/2026-12-01T01Z/1h"
    engine = MatchingEngine([instrument(), instrument(other)])
    for cmd in random_commands(500, seed=2):
        engine.process(cmd)
    engine.process(
        NewOrder(
            instrument=other,
            order_id=10_000,
            owner="z",
            side=Side.SELL,
            quantity=LOT,
            time=9_999,
            price=700,
        )
    )
    data = engine.snapshot()
    restored = MatchingEngine.restore(data)
    assert restored.state_hash() == engine.state_hash()
    assert restored.snapshot() == data
    assert [b.symbol for b in restored.books()] == sorted([SYMBOL, other])


def test_empty_levels_are_compacted_and_behaviour_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a tiny compaction threshold the book still matches the reference."""
    from market import book as book_module
    from tests.market.reference import ReferenceBook

    monkeypatch.setattr(book_module, "_COMPACT_MIN", 4)
    inst = instrument()
    book, ref = OrderBook(inst), ReferenceBook(inst)
    book._compact_at = 4
    for cmd in random_commands(3_000, seed=3):
        assert book.process(cmd) == ref.process(cmd)
    assert book.open_orders() == ref.open_orders()
    live = sum(1 for level in book._bids.values() if level)
    assert len(book._bid_heap) == len(book._bids) <= max(4, 2 * live) + 1


def test_many_distinct_prices_do_not_grow_the_book_without_bound() -> None:
    d = Driver(OrderBook(instrument(tick_size=1, price_min=1, price_max=1_000_000)))
    d.buy(1, 999_999, owner="top")  # stays at the top; deeper levels come and go
    for i in range(20_000):
        d.buy(1, 1 + i, owner="b", order_id=10 + i)
        d.cancel(10 + i, owner="b")
    assert len(d.book._bid_heap) <= 2_048
    assert d.book.best_bid() == 999_999 and len(d.book) == 1


def _tampered(**changes: object) -> bytes:
    snap = msgspec.msgpack.decode(_busy_book().book.snapshot(), type=BookSnapshot)
    return msgspec.msgpack.encode(msgspec.structs.replace(snap, **changes))


def _with_first_ask(**changes: object) -> bytes:
    snap = msgspec.msgpack.decode(_busy_book().book.snapshot(), type=BookSnapshot)
    first = msgspec.structs.replace(snap.asks[0], **changes)
    return msgspec.msgpack.encode(msgspec.structs.replace(snap, asks=[first, *snap.asks[1:]]))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_tampered(next_seq=0), id="seq"),
        pytest.param(_with_first_ask(open=0), id="open zero"),
        pytest.param(_with_first_ask(filled=0), id="not conserved"),
        pytest.param(_with_first_ask(price=512), id="off tick"),
        pytest.param(_with_first_ask(price=495), id="crossed"),
        pytest.param(_with_first_ask(price=600), id="priority order"),
        pytest.param(_with_first_ask(tif=TimeInForce.IOC), id="ioc resting"),
        pytest.param(_with_first_ask(expire_at=9), id="expire without gtd"),
        pytest.param(_with_first_ask(order_id=4), id="duplicate id"),
    ],
)
def test_restore_refuses_states_the_book_cannot_reach(data: bytes) -> None:
    with pytest.raises(InvalidSnapshot):
        OrderBook.restore(data)


def test_restore_refuses_an_invalid_instrument() -> None:
    snap = msgspec.msgpack.decode(_busy_book().book.snapshot(), type=BookSnapshot)
    inst = msgspec.structs.replace(snap.instrument, tick_size=0)
    with pytest.raises(InvalidSnapshot):
        OrderBook.restore(msgspec.msgpack.encode(msgspec.structs.replace(snap, instrument=inst)))


def test_commands_and_events_round_trip_on_the_wire() -> None:
    """Tagged unions: a consumer decodes `list[Event]` / `Command` without knowing
    the types in advance, from JSON or msgpack."""
    from schemas.market import Event

    cmds = random_commands(400, seed=4)
    book = OrderBook(instrument())
    events = [e for cmd in cmds for e in book.process(cmd)]
    assert len({type(e) for e in events}) >= 5
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(events), type=list[Event]) == events
        assert codec.decode(codec.encode(cmds), type=list[Command]) == cmds
