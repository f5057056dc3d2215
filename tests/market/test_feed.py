"""market.feed: DepthBook against the real engine, and the hub's channels."""

from __future__ import annotations

import asyncio
import itertools
import random
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.errors import UnknownInstrument
from market.feed import (
    CLOSE_SLOW_CONSUMER,
    DepthBook,
    FeedError,
    MarketData,
    Subscriber,
)
from market.feed_queue import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LIMIT
from schemas.market import (
    CancelOrder,
    Command,
    Depth,
    DepthLevel,
    Event,
    Fill,
    NewOrder,
    Side,
    TradingStateChanged,
)
from schemas.stream import Channel, OrderAcceptedView, book_checksum
from tests.market.feed_support import (
    LOT,
    OWNERS,
    SYM_A,
    SYM_B,
    ChecksumMismatch,
    ClientBook,
    command_lists,
    engine,
    full_depth,
)

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIGHT = settings(PROPERTY, max_examples=50)


def frames(sub: Subscriber) -> list[dict[str, Any]]:
    return [msgspec.json.decode(f) for f in sub.pending()]


def _split(commands: list[Command], cuts: list[int]) -> list[list[Command]]:
    """Cut the command list into consecutive batches."""
    points = sorted({c % (len(commands) + 1) for c in cuts} | {0, len(commands)})
    return [commands[a:b] for a, b in itertools.pairwise(points) if b > a]


# --------------------------------------------------------------------------- DepthBook


@PROPERTY
@given(commands=command_lists())
def test_depth_book_equals_engine_depth_after_every_command(commands: list[Command]) -> None:
    eng = engine()
    books = {sym: DepthBook(sym) for sym in (SYM_A, SYM_B)}
    for cmd in commands:
        for event in eng.process(cmd):
            if event.seq:
                books[event.instrument].apply(event)
        for sym, book in books.items():
            assert book.levels() == full_depth(eng, sym)


@LIGHT
@given(commands=command_lists(), cut=st.integers(0, 60))
def test_depth_book_loaded_mid_stream_follows_the_engine(commands: list[Command], cut: int) -> None:
    """After recovery the book starts from a Depth: resting orders it never saw
    accepted are still filled, cancelled, amended and expired correctly."""
    eng = engine()
    cut = min(cut, len(commands))
    for cmd in commands[:cut]:
        eng.process(cmd)
    books = {sym: DepthBook.from_depth(full_depth(eng, sym)) for sym in (SYM_A, SYM_B)}
    for cmd in commands[cut:]:
        for event in eng.process(cmd):
            if event.seq:
                books[event.instrument].apply(event)
        for sym, book in books.items():
            assert book.levels() == full_depth(eng, sym)


def test_depth_book_ignores_old_events_and_rejects_a_gap() -> None:
    eng = engine()
    events = eng.process(
        NewOrder(instrument=SYM_A, order_id=1, owner="a", side=Side.BUY, quantity=LOT,
                 price=150, time=1)
    ) + eng.process(
        NewOrder(instrument=SYM_A, order_id=2, owner="a", side=Side.BUY, quantity=LOT,
                 price=155, time=2)
    )  # fmt: skip
    book = DepthBook(SYM_A)
    book.apply(events[0])
    book.apply(events[0])  # already reflected: ignored
    assert book.seq == 1
    book2 = DepthBook(SYM_A)
    with pytest.raises(FeedError):
        book2.apply(events[1])  # seq 2 before seq 1
    with pytest.raises(FeedError):
        DepthBook(SYM_B).apply(events[0])


def test_take_changes_lists_only_changed_levels() -> None:
    eng = engine()
    book = DepthBook(SYM_A)
    batch = []
    for i, price in enumerate((150, 150, 145), start=1):
        batch += eng.process(
            NewOrder(instrument=SYM_A, order_id=i, owner="a", side=Side.BUY, quantity=LOT,
                     price=price, time=i)
        )  # fmt: skip
    for e in batch:
        book.apply(e)
    ch = book.take_changes()
    assert (ch.prev_seq, ch.seq) == (0, 3)
    assert [tuple(lv) for lv in map(msgspec.structs.astuple, ch.bids)] == [
        (150, 2 * LOT, 2),
        (145, LOT, 1),
    ]
    # a taker that fills the 150 level entirely: bids at 150 vanish, no ask appears
    for e in eng.process(
        NewOrder(instrument=SYM_A, order_id=9, owner="b", side=Side.SELL, quantity=2 * LOT,
                 price=150, time=9)
    ):  # fmt: skip
        book.apply(e)
    ch = book.take_changes()
    assert (ch.prev_seq, ch.seq) == (3, 6)
    assert [msgspec.structs.astuple(lv) for lv in ch.bids] == [(150, 0, 0)]
    assert ch.asks == []


# --------------------------------------------------------------------------- hub: book channel


def _hub_with_engine() -> tuple[MarketData, Any]:
    eng = engine()
    hub = MarketData()
    hub.load([full_depth(eng, SYM_A), full_depth(eng, SYM_B)])
    return hub, eng


@LIGHT
@given(
    commands=command_lists(),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    join_after=st.integers(0, 8),
)
def test_snapshot_plus_deltas_reproduce_the_book(
    commands: list[Command], cuts: list[int], join_after: int
) -> None:
    """A client subscribing at any batch boundary, applying snapshot + deltas,
    holds the engine's book after every publish, with a contiguous chain."""
    hub, eng = _hub_with_engine()
    early = hub.connect()
    hub.subscribe_book(early, SYM_A)
    late = hub.connect()
    clients = {id(early): ClientBook(), id(late): ClientBook()}
    for i, batch in enumerate(_split(commands, cuts)):
        if i == join_after:
            hub.subscribe_book(late, SYM_A)
        events: list[Event] = []
        for cmd in batch:
            events += eng.process(cmd)
        hub.publish(events)
        for sub in (early, late):
            for msg in frames(sub):
                clients[id(sub)].on_message(msg)
        want = full_depth(eng, SYM_A)
        assert clients[id(early)].depth(SYM_A) == want
        assert hub.depth(SYM_A) == want
        if i >= join_after:
            assert clients[id(late)].depth(SYM_A) == want


def test_subscribe_book_acks_then_snapshots_and_resubscribe_resyncs() -> None:
    hub, eng = _hub_with_engine()
    hub.publish(
        eng.process(
            NewOrder(instrument=SYM_A, order_id=1, owner="a", side=Side.SELL, quantity=LOT,
                     price=160, time=1)
        )
    )  # fmt: skip
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    ack, snap = frames(sub)
    assert ack == {"type": "subscribed", "channel": "book", "instrument": SYM_A,
                   "account_id": None}  # fmt: skip
    assert snap == {"type": "snapshot", "channel": "book", "instrument": SYM_A, "seq": 1,
                    "bids": [], "asks": [[160, LOT, 1]],
                    "checksum": zlib.crc32(f"160{LOT}".encode())}  # fmt: skip
    hub.subscribe_book(sub, SYM_A)
    assert [m["type"] for m in frames(sub)] == ["subscribed", "snapshot"]
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=2, owner="b", side=Side.BUY, quantity=LOT,
                 price=100, time=2)
    ))  # fmt: skip
    (delta,) = frames(sub)  # one delta despite two subscriptions
    assert delta["prev_seq"] == 1 and delta["seq"] == 2
    assert delta["bids"] == [[100, LOT, 1]] and delta["asks"] == []


def test_unknown_instrument_and_unsubscribe() -> None:
    hub, eng = _hub_with_engine()
    sub = hub.connect()
    with pytest.raises(UnknownInstrument):
        hub.subscribe_book(sub, "nope/2026-12-01T00Z/1h")
    with pytest.raises(UnknownInstrument):
        hub.subscribe_trades(sub, "nope/2026-12-01T00Z/1h")
    hub.subscribe_book(sub, SYM_A)
    hub.unsubscribe(sub, hub_channel("book"), SYM_A)
    frames(sub)
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=1, owner="a", side=Side.BUY, quantity=LOT,
                 price=100, time=1)
    ))  # fmt: skip
    assert frames(sub) == []


def hub_channel(name: str) -> Any:
    from schemas.stream import Channel

    return Channel(name)


def test_an_instrument_listed_after_start_gets_a_book_from_its_first_event() -> None:
    hub = MarketData()
    hub.load([])
    eng = engine()
    hub.publish(eng.process(
        NewOrder(instrument=SYM_B, order_id=1, owner="a", side=Side.BUY, quantity=LOT,
                 price=100, time=1)
    ))  # fmt: skip
    assert hub.depth(SYM_B) == full_depth(eng, SYM_B)


def test_a_gap_makes_the_book_unavailable_until_reloaded() -> None:
    hub, eng = _hub_with_engine()
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    frames(sub)
    eng.process(
        NewOrder(
            instrument=SYM_A, order_id=1, owner="a", side=Side.BUY, quantity=LOT, price=100, time=1
        )
    )  # fmt: skip  (never published: a gap)
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=2, owner="a", side=Side.BUY, quantity=LOT,
                 price=105, time=2)
    ))  # fmt: skip
    (err,) = frames(sub)
    assert err["type"] == "error" and err["code"] == "book_unavailable"
    with pytest.raises(Exception, match="unavailable") as info:
        hub.subscribe_book(sub, SYM_A)
    assert getattr(info.value, "code", None) == "book_unavailable"
    hub.load([full_depth(eng, SYM_A)])
    hub.subscribe_book(sub, SYM_A)
    snap = frames(sub)[1]
    assert snap["seq"] == 2 and len(snap["bids"]) == 2


def test_reload_sends_current_subscribers_a_fresh_snapshot() -> None:
    hub, eng = _hub_with_engine()
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    frames(sub)
    hub.load([full_depth(eng, SYM_A)])
    (snap,) = frames(sub)
    assert snap["type"] == "snapshot"


def test_a_reload_that_moves_a_book_tells_trades_and_orders_subscribers() -> None:
    """Events the hub never fanned out (the depth is ahead of its book): its trades
    subscribers and every orders subscriber get `stream_interrupted` and stay
    subscribed; a reload that moves nothing sends no such notice."""
    hub, eng = _hub_with_engine()
    sub, other = hub.connect(), hub.connect()
    hub.subscribe_trades(sub, SYM_A)
    hub.subscribe_orders(sub, "a")
    hub.subscribe_trades(other, SYM_B)
    frames(sub), frames(other)
    hub.load([full_depth(eng, SYM_A), full_depth(eng, SYM_B)])
    assert frames(sub) == [] and frames(other) == []
    eng.process(
        NewOrder(
            instrument=SYM_A, order_id=1, owner="b", side=Side.SELL, quantity=LOT, price=100, time=1
        )
    )  # fmt: skip  (never published)
    hub.load([full_depth(eng, SYM_A), full_depth(eng, SYM_B)])
    got = frames(sub)
    assert [(f["type"], f["code"], f["channel"]) for f in got] == [
        ("error", "stream_interrupted", "trades"), ("error", "stream_interrupted", "orders"),
    ]  # fmt: skip
    assert got[0]["instrument"] == SYM_A and "instrument" not in got[1]
    assert frames(other) == []  # SYM_B did not move
    hub.load([Depth(instrument="new/2026-12-01T02Z/1h", seq=0, bids=[], asks=[])])
    assert frames(sub) == []  # a book new to the hub, with no event yet: nothing missed
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=2, owner="a", side=Side.BUY, quantity=LOT,
                 price=100, time=2)
    ))  # fmt: skip
    assert [f["type"] for f in frames(sub)] == ["order", "trade", "fill"]  # still subscribed


def test_a_book_that_breaks_asks_its_feeder_to_reload_it() -> None:
    hub, eng = _hub_with_engine()
    asked: list[int] = []
    hub.reloader = lambda: asked.append(1)
    eng.process(
        NewOrder(
            instrument=SYM_A, order_id=1, owner="a", side=Side.BUY, quantity=LOT, price=100, time=1
        )
    )  # fmt: skip  (never published: a gap)
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=2, owner="a", side=Side.BUY, quantity=LOT,
                 price=105, time=2)
    ))  # fmt: skip
    assert asked == [1]
    hub.load([full_depth(eng, SYM_A)])  # what the feeder does
    assert hub.depth(SYM_A) == full_depth(eng, SYM_A)


# --------------------------------------------------------------------------- slow subscribers


def test_a_slow_subscriber_is_dropped_without_blocking_publish() -> None:
    hub = MarketData(queue_limit=5)
    eng = engine()
    hub.load([full_depth(eng, SYM_A)])
    slow, fast = hub.connect(), hub.connect()
    for sub in (slow, fast):
        hub.subscribe_book(sub, SYM_A)
        hub.subscribe_trades(sub, SYM_A)
    client = ClientBook()
    for i in range(1, 40):
        hub.publish(eng.process(
            NewOrder(instrument=SYM_A, order_id=i, owner=OWNERS[i % 3],
                     side=(Side.BUY, Side.SELL)[i % 2], quantity=LOT, price=150, time=i)
        ))  # fmt: skip
        for msg in frames(fast):
            client.on_message(msg)
    assert slow.dropped and slow.close_code == CLOSE_SLOW_CONSUMER
    assert "slow" in slow.close_reason
    assert slow.subs == set() and slow.pending() == []
    assert not fast.dropped
    assert client.depth(SYM_A) == full_depth(eng, SYM_A)


def deep_depth(instrument: str = SYM_A, levels: int = 1_000, seq: int = 10) -> Depth:
    """A book of `levels` levels a side (its snapshot frame is ~32 KiB for 1,000)."""
    return Depth(instrument=instrument, seq=seq,
                 bids=[DepthLevel(10_000 - 5 * i, 10_000, 3) for i in range(levels)],
                 asks=[DepthLevel(20_000 + 5 * i, 10_000, 3) for i in range(levels)])  # fmt: skip


def test_a_resubscribe_while_its_snapshot_is_still_queued_is_refused() -> None:
    """A client that sends `subscribe book` again and again and reads nothing gets one
    snapshot and small `snapshot_pending` error frames, not a full-depth copy each
    time. Once it has taken its frames, a subscribe is a resync again."""
    hub = MarketData()
    hub.load([deep_depth()])
    sub = hub.connect()
    for _ in range(2_000):
        hub.subscribe_book(sub, SYM_A)
    assert not sub.dropped
    assert sub.queued_bytes < 1 * 2**20, sub.queued_bytes  # one snapshot, not 2,000
    got = frames(sub)
    assert [m["type"] for m in got[:2]] == ["subscribed", "snapshot"]
    assert len(got[1]["bids"]) == 1_000
    assert len(got) == 2_001
    assert all(m == {"type": "error", "code": "snapshot_pending", "channel": "book",
                     "instrument": SYM_A, "message": got[2]["message"]}
               for m in got[2:])  # fmt: skip
    assert SYM_A in got[2]["message"]
    hub.subscribe_book(sub, SYM_A)  # the snapshot was taken: a fresh one
    assert [m["type"] for m in frames(sub)] == ["subscribed", "snapshot"]


def test_a_subscribe_after_an_unsubscribe_is_served_though_the_snapshot_is_queued() -> None:
    hub = MarketData()
    eng = engine()
    hub.load([full_depth(eng, SYM_A)])
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    hub.unsubscribe(sub, Channel.BOOK, SYM_A)
    hub.subscribe_book(sub, SYM_A)
    assert [m["type"] for m in frames(sub)] == [
        "subscribed", "snapshot", "unsubscribed", "subscribed", "snapshot"
    ]  # fmt: skip
    hub.publish(eng.process(NewOrder(instrument=SYM_A, order_id=1, owner="a", side=Side.BUY,
                                     quantity=LOT, price=100, time=1)))  # fmt: skip
    assert [m["type"] for m in frames(sub)] == ["delta"]  # subscribed


def test_a_subscriber_is_dropped_past_its_queue_bound_in_bytes() -> None:
    """Subscribe and unsubscribe again and again, reading nothing: each snapshot is
    served (the refusal is for a re-subscribe only), so the byte bound drops it long
    before the frame bound would, holding at most the bound and one frame."""
    hub = MarketData()
    hub.load([deep_depth()])
    probe = hub.connect()
    hub.subscribe_book(probe, SYM_A)
    snapshot_bytes = len(probe.pending()[1])
    assert snapshot_bytes > 30_000
    sub = hub.connect()
    rounds = held = 0
    while not sub.dropped and rounds < 1_000:
        hub.subscribe_book(sub, SYM_A)
        hub.unsubscribe(sub, Channel.BOOK, SYM_A)
        rounds += 1
        held = max(held, sub.queued_bytes)
    assert sub.dropped and sub.close_code == CLOSE_SLOW_CONSUMER
    # held at the end of a round: within a round's frames of the bound, never past it by more
    assert abs(held - DEFAULT_QUEUE_BYTES) < snapshot_bytes + 1_000
    assert rounds <= DEFAULT_QUEUE_BYTES // snapshot_bytes + 2
    assert 3 * rounds < DEFAULT_QUEUE_LIMIT // 2  # 3 frames a round: far from that bound
    assert sub.pending() == [] and sub.queued_bytes == 0 and sub.subs == set()


def test_the_byte_bound_drops_a_slow_subscriber_of_deltas_and_spares_a_fast_one() -> None:
    hub = MarketData(queue_bytes=4_000)  # the frame bound (4,096) is far off
    eng = engine()
    hub.load([full_depth(eng, SYM_A)])
    slow, fast = hub.connect(), hub.connect()
    for sub in (slow, fast):
        hub.subscribe_book(sub, SYM_A)
    client = ClientBook()
    pushed = 0
    for i in range(1, 60):
        hub.publish(eng.process(
            NewOrder(instrument=SYM_A, order_id=i, owner=OWNERS[i % 3],
                     side=(Side.BUY, Side.SELL)[i % 2], quantity=LOT, price=100 + i, time=i)
        ))  # fmt: skip
        if not slow.dropped:
            pushed = slow.queued_bytes
        for msg in frames(fast):
            client.on_message(msg)
    assert slow.dropped and slow.close_code == CLOSE_SLOW_CONSUMER
    assert 4_000 <= pushed < 4_000 + 1_000  # dropped at the first frame past the bound
    assert not fast.dropped
    assert client.depth(SYM_A) == full_depth(eng, SYM_A)


def test_a_frame_larger_than_the_byte_bound_still_reaches_a_subscriber_that_keeps_up() -> None:
    hub = MarketData(queue_bytes=1_000)
    hub.load([deep_depth(levels=100)])
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    assert not sub.dropped and sub.queued_bytes > 1_000
    assert [m["type"] for m in frames(sub)] == ["subscribed", "snapshot"]


def test_one_encoded_snapshot_per_book_and_seq_is_shared() -> None:
    hub = MarketData()
    eng = engine()
    hub.load([full_depth(eng, SYM_A)])
    a, b = hub.connect(), hub.connect()
    hub.subscribe_book(a, SYM_A)
    hub.subscribe_book(b, SYM_A)
    snap_a, snap_b = a.pending()[1], b.pending()[1]
    assert snap_a is snap_b  # one string held, however many subscribers queue it
    hub.publish(eng.process(NewOrder(instrument=SYM_A, order_id=1, owner="a", side=Side.BUY,
                                     quantity=LOT, price=100, time=1)))  # fmt: skip
    c = hub.connect()
    hub.subscribe_book(c, SYM_A)
    snap_c = msgspec.json.decode(c.pending()[1])
    assert snap_c["seq"] == 1 and snap_c["bids"] == [[100, LOT, 1]]  # not the old one
    hub.load([deep_depth(levels=2, seq=1)])  # a reload at the same seq, other levels
    d = hub.connect()
    hub.subscribe_book(d, SYM_A)
    assert len(msgspec.json.decode(d.pending()[1])["bids"]) == 2


async def test_next_frames_wakes_on_push_and_on_close() -> None:
    sub = Subscriber(limit=2)
    waiter = asyncio.create_task(sub.next_frames())
    await asyncio.sleep(0)
    sub.push("1")
    sub.push("2")
    assert await asyncio.wait_for(waiter, 1) == ["1", "2"]
    waiter = asyncio.create_task(sub.next_frames())
    await asyncio.sleep(0)
    for frame in ("3", "4", "5"):
        sub.push(frame)
    assert await asyncio.wait_for(waiter, 1) == []  # dropped: nothing more to send
    assert sub.close_code == CLOSE_SLOW_CONSUMER


# --------------------------------------------------------------------------- trades


def _cross(eng: Any, t: int, maker: str = "alice", taker: str = "bob") -> list[Event]:
    return eng.process(  # type: ignore[no-any-return]
        NewOrder(instrument=SYM_A, order_id=2 * t, owner=maker, side=Side.SELL, quantity=2 * LOT,
                 price=150, time=t)
    ) + eng.process(
        NewOrder(instrument=SYM_A, order_id=2 * t + 1, owner=taker, side=Side.BUY, quantity=LOT,
                 price=155, time=t)
    )  # fmt: skip


def test_trades_channel_and_recent_trades() -> None:
    hub = MarketData(trades_kept=3)
    eng = engine()
    hub.load([full_depth(eng, SYM_A), full_depth(eng, SYM_B)])
    sub = hub.connect()
    hub.subscribe_trades(sub, SYM_A)
    assert frames(sub) == [{"type": "subscribed", "channel": "trades", "instrument": SYM_A,
                            "account_id": None}]  # fmt: skip
    events = _cross(eng, 1)
    fill = next(e for e in events if isinstance(e, Fill))
    hub.publish(events)
    assert frames(sub) == [{
        "type": "trade", "channel": "trades", "instrument": SYM_A, "seq": fill.seq,
        "time_ms": 1, "price": 150, "quantity": LOT, "aggressor_side": "buy",
    }]  # fmt: skip
    for t in range(2, 6):
        hub.publish(_cross(eng, t))
    recent = hub.recent_trades(SYM_A, 10)
    assert [tr.time_ms for tr in recent] == [5, 4, 3]  # newest first, bounded
    assert [tr.time_ms for tr in hub.recent_trades(SYM_A, 2)] == [5, 4]
    assert hub.recent_trades(SYM_B, 10) == []
    with pytest.raises(UnknownInstrument):
        hub.recent_trades("nope/2026-12-01T00Z/1h", 1)


# --------------------------------------------------------------------------- private channel


@LIGHT
@given(commands=command_lists(max_size=40))
def test_private_channel_shows_an_account_only_its_own_events(commands: list[Command]) -> None:
    hub, eng = _hub_with_engine()
    subs = {owner: hub.connect() for owner in OWNERS}
    for owner, sub in subs.items():
        hub.subscribe_orders(sub, owner)
        frames(sub)
    all_events: list[Event] = []
    for cmd in commands:
        events = eng.process(cmd)
        all_events += events
        hub.publish(events)
    for owner, sub in subs.items():
        got = frames(sub)
        others = [o for o in OWNERS if o != owner]
        for msg in got:
            text = msgspec.json.encode(msg).decode()
            assert not any(f'"{o}"' in text for o in others), msg
            if msg["type"] == "order":
                assert msg["event"]["owner"] == owner
        # exactly the events that concern this owner, in order
        want: list[tuple[str, int | None]] = []
        for e in all_events:
            if isinstance(e, Fill):
                if e.maker_owner == owner:
                    want.append(("fill", e.maker_order_id))
                if e.taker_owner == owner:
                    want.append(("fill", e.taker_order_id))
            elif not isinstance(e, TradingStateChanged) and e.owner == owner:
                want.append(("order", e.order_id))
        got_ids = [
            (m["type"], m["order_id"] if m["type"] == "fill" else m["event"]["order_id"])
            for m in got
        ]
        assert got_ids == want


def test_fill_tells_each_side_its_own_role_only() -> None:
    hub, eng = _hub_with_engine()
    alice, bob = hub.connect(), hub.connect()
    hub.subscribe_orders(alice, "alice")
    hub.subscribe_orders(bob, "bob")
    frames(alice), frames(bob)
    hub.publish(_cross(eng, 1))
    a = [m for m in frames(alice) if m["type"] == "fill"]
    b = [m for m in frames(bob) if m["type"] == "fill"]
    assert a == [{
        "type": "fill", "channel": "orders", "instrument": SYM_A, "seq": 3, "time_ms": 1,
        "order_id": 2, "side": "sell", "liquidity": "maker", "price": 150, "quantity": LOT,
        "open_quantity": LOT, "fee": 0, "client_order_id": "",
    }]  # fmt: skip
    assert b[0]["order_id"] == 3 and b[0]["side"] == "buy" and b[0]["liquidity"] == "taker"
    assert b[0]["open_quantity"] == 0


def test_private_rejects_and_accepts_carry_the_engine_event() -> None:
    hub, eng = _hub_with_engine()
    sub = hub.connect()
    hub.subscribe_orders(sub, "alice")
    frames(sub)
    hub.publish(eng.process(
        NewOrder(instrument=SYM_A, order_id=1, owner="alice", side=Side.BUY, quantity=LOT,
                 price=150, time=1, client_order_id="c1")
    ) + eng.process(
        NewOrder(instrument="nope/2026-12-01T00Z/1h", order_id=2, owner="alice",
                 side=Side.BUY, quantity=LOT, price=150, time=1)
    ))  # fmt: skip
    accepted, rejected = frames(sub)
    assert accepted["type"] == "order"
    event = msgspec.convert(accepted["event"], OrderAcceptedView)
    assert event.client_order_id == "c1" and event.owner == "alice"
    assert (event.time_ms, event.expire_at_ms) == (1, None)  # the wire's names
    assert rejected["event"]["type"] == "rejected"
    assert rejected["event"]["reason"] == "unknown_instrument"


def test_depth_of_unknown_instrument() -> None:
    hub = MarketData()
    with pytest.raises(UnknownInstrument):
        hub.depth(SYM_A)
    assert hub.instruments() == []
    hub.load([Depth(instrument=SYM_A, seq=0, bids=[], asks=[])])
    assert hub.instruments() == [SYM_A]


# --------------------------------------------------------------------------- book checksum


def test_the_book_checksum_is_krakens_rule_over_integers() -> None:
    """The 10 best asks from the lowest, then the 10 best bids from the highest, each as
    price then quantity in digits, CRC32 of the whole as ASCII."""
    asks = [(100 + i, 7) for i in range(12)]
    bids = [(99 - i, 3) for i in range(12)]
    text = "".join(f"{p}{q}" for p, q in asks[:10]) + "".join(f"{p}{q}" for p, q in bids[:10])
    assert book_checksum(bids, asks) == zlib.crc32(text.encode("ascii"))
    assert book_checksum([], []) == zlib.crc32(b"") == 0
    assert book_checksum(bids, asks) != book_checksum(bids, asks[1:])


def test_a_client_rebuilds_the_book_from_a_snapshot_and_1000_deltas_by_checksum() -> None:
    """Random orders, cancels and crosses on a deep book, one batch each: the client's
    book, rebuilt from the snapshot and every delta, matches every message's checksum;
    and a book that drifts (one level off) is caught at the next message."""
    hub, eng = _hub_with_engine()
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    client = ClientBook()
    rng = random.Random(7)
    resting: list[tuple[int, str]] = []
    for n in range(1, 1_001):
        if resting and rng.random() < 0.25:
            order_id, owner = resting.pop(rng.randrange(len(resting)))
            cmd: Command = CancelOrder(
                instrument=SYM_A, order_id=order_id, owner=owner, time=n
            )  # a cancel of an order filled meanwhile is a reject: no level changes
        else:
            side = rng.choice((Side.BUY, Side.SELL))
            owner = OWNERS[n % 3]
            price = 150 + 5 * rng.randint(-8, 8)
            cmd = NewOrder(instrument=SYM_A, order_id=n, owner=owner, side=side,
                           quantity=LOT * rng.randint(1, 4), price=price, time=n)  # fmt: skip
            resting.append((n, owner))
        hub.publish(eng.process(cmd))
        for msg in frames(sub):
            client.on_message(msg)
    assert client.checked >= 1_000  # the snapshot and a delta per batch, each checked
    assert client.depth(SYM_A) == full_depth(eng, SYM_A)
    best = max(client.bids)
    quantity, orders = client.bids[best]
    client.bids[best] = (quantity + LOT, orders)  # drift
    hub.publish(
        eng.process(
            NewOrder(
                instrument=SYM_A,
                order_id=5_000,
                owner=OWNERS[1],
                side=Side.SELL,
                quantity=LOT,
                price=195,
                time=2_000,
            )
        )
    )
    with pytest.raises(ChecksumMismatch):
        for msg in frames(sub):
            client.on_message(msg)
