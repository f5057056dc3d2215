"""market.feed_relay: a gateway's hub fed from `tokex.md` (no NATS: a fake bus and a
fake exchange answering `DepthsQuery` from an engine)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from market.feed import MarketData, Subscriber
from market.feed_relay import FeedRelay
from market.sequencer.wire import MarketDataBatch, encode
from schemas.market import Event, NewOrder, Side
from tests.market.feed_support import LOT, SYM_A, SYM_B, engine, full_depth


class _Sub:
    async def unsubscribe(self) -> None:
        return None


class FakeNats:
    def __init__(self) -> None:
        self.cb: Any = None

    async def subscribe(self, subject: str, cb: Any) -> _Sub:
        self.cb = cb
        return _Sub()

    async def deliver(self, events: list[Event], number: int = 0, resync: bool = False) -> None:
        batch = (
            MarketDataBatch(events, {}, number=number, resync=resync)
            if number or resync
            else MarketDataBatch(events, {})
        )
        await self.cb(type("Msg", (), {"data": encode(batch)})())


class FakeExchange:
    """Answers DepthsQuery from the engine; `gate` holds the answer; counts the asks.
    `early`: the depths are read when asked, so a held answer predates what commits
    while it waits (as the sequencer's answer does, on its way back over NATS)."""

    def __init__(self, eng: Any) -> None:
        self.eng = eng
        self.gate: asyncio.Event | None = None
        self.asked = 0
        self.early = False

    async def ask(self, query: Any) -> Any:
        self.asked += 1
        depths = [full_depth(self.eng, SYM_A), full_depth(self.eng, SYM_B)]
        if self.gate is not None:
            await self.gate.wait()
        if not self.early:
            depths = [full_depth(self.eng, SYM_A), full_depth(self.eng, SYM_B)]
        return depths


class Orders:
    def __init__(self, eng: Any) -> None:
        self.eng, self.n = eng, 0

    def __call__(self, owner: str, side: Side, price: int, symbol: str = SYM_A) -> list[Event]:
        self.n += 1
        return self.eng.process(
            NewOrder(instrument=symbol, order_id=self.n, owner=owner, side=side, quantity=LOT,
                     price=price, time=self.n)
        )  # fmt: skip


def frames(sub: Subscriber) -> list[dict[str, Any]]:
    return [msgspec.json.decode(f) for f in sub.pending()]


def kinds(sub: Subscriber) -> list[str]:
    return [f["code"] if f["type"] == "error" else f["type"] for f in frames(sub)]


async def _relay() -> tuple[FakeNats, FakeExchange, MarketData, FeedRelay, Orders]:
    eng = engine()
    nats, exchange, hub = FakeNats(), FakeExchange(eng), MarketData()
    relay = FeedRelay(nats, exchange, hub)  # type: ignore[arg-type]
    await relay.start()
    return nats, exchange, hub, relay, Orders(eng)


def _subscribed(hub: MarketData, owner: str = "alice") -> Subscriber:
    sub = hub.connect()
    hub.subscribe_book(sub, SYM_A)
    hub.subscribe_trades(sub, SYM_A)
    hub.subscribe_orders(sub, owner)
    frames(sub)
    return sub


async def test_batches_held_during_a_reload_reach_the_private_and_trades_streams() -> None:
    """A batch committed and published before DepthsQuery is answered is held, then
    published whole: the loaded book already holds its events (no delta), but the trade
    and alice's accepted and fill frames arrive, after the notice that some may have been
    missed while the feed was interrupted."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    exchange.gate = asyncio.Event()
    relay.reload()  # NATS reconnected
    await asyncio.sleep(0)
    await nats.deliver(order("alice", Side.SELL, 150) + order("bob", Side.BUY, 150))
    exchange.gate.set()  # the query is answered after that batch committed
    await asyncio.sleep(0.05)
    got = frames(sub)
    assert [f["type"] for f in got] == ["snapshot", "error", "error", "order", "trade", "fill"]
    assert got[0]["seq"] == 3  # accepted, accepted, fill
    assert [(f["code"], f["channel"]) for f in got[1:3]] == [
        ("stream_interrupted", "trades"), ("stream_interrupted", "orders"),
    ]  # fmt: skip
    assert got[1]["instrument"] == SYM_A and "REST" in got[2]["message"]
    assert got[3]["event"]["type"] == "accepted" and got[5]["liquidity"] == "maker"
    await nats.deliver(order("carol", Side.BUY, 140))
    (delta,) = frames(sub)  # the seq chain goes on from the snapshot
    assert delta["type"] == "delta" and delta["prev_seq"] == 3 and delta["seq"] == 4
    await relay.close()


async def test_batches_are_held_from_the_disconnect_so_none_after_the_reconnect_is_a_gap() -> None:
    """NATS delivers the batches of the replayed subscription before its reconnect
    callback runs: held from the disconnect on, the one after the lost one is not a gap
    (no book_unavailable); the reconnect's reload sends a snapshot, the notices, and then
    the batch."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    relay.hold()  # NATS disconnected
    order("alice", Side.SELL, 155)  # published while disconnected: lost
    await nats.deliver(order("bob", Side.BUY, 155))  # after the reconnect, before its callback
    assert frames(sub) == []
    relay.reload()  # NATS reconnected
    await asyncio.sleep(0.05)
    # alice's accepted was lost (hence the notice); her fill as maker arrives
    assert kinds(sub) == ["snapshot", "stream_interrupted", "stream_interrupted", "trade", "fill"]
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    await relay.close()


async def test_a_book_broken_by_a_lost_batch_is_reloaded_by_itself() -> None:
    """A batch lost with no reconnect (and no number to tell): the book's seq gap marks it
    unavailable and its subscribers are told; the hub asks the relay to reload it, and a
    subscribe soon succeeds with a book equal to the engine's."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    await nats.deliver(order("alice", Side.SELL, 150))
    order("alice", Side.SELL, 155)  # lost
    await nats.deliver(order("alice", Side.SELL, 160))
    await asyncio.sleep(0.05)
    got = frames(sub)
    assert [f.get("code") for f in got if f["type"] == "error"][:1] == ["book_unavailable"]
    assert exchange.asked == 2  # start, and the reload the hub asked for
    for i in range(5):
        await nats.deliver(order("bob", Side.BUY, 100 + i * 5))
    again = hub.connect()
    hub.subscribe_book(again, SYM_A)
    assert frames(again)[1]["seq"] == full_depth(exchange.eng, SYM_A).seq
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    await relay.close()


async def test_a_skipped_message_number_reloads_before_the_next_batch_is_applied() -> None:
    """Message 2 lost: message 3 is held and the books reloaded, so book subscribers get
    a fresh snapshot rather than book_unavailable."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub, owner="nobody")
    await nats.deliver(order("alice", Side.SELL, 150), number=1)
    order("alice", Side.SELL, 155)  # message 2: lost
    await nats.deliver(order("alice", Side.SELL, 160), number=3)
    await asyncio.sleep(0.05)
    assert kinds(sub) == ["delta", "snapshot", "stream_interrupted", "stream_interrupted"]
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    await relay.close()


async def test_a_resync_message_reloads_the_books() -> None:
    """The sequencer rebuilt its memory from a commit reported failed but durable: its
    events were never published; its resync message makes the gateway load the books."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    order("alice", Side.SELL, 150)  # durable, never published
    await nats.deliver([], number=1, resync=True)
    await asyncio.sleep(0.05)
    assert kinds(sub) == ["snapshot", "stream_interrupted", "stream_interrupted"]
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    await nats.deliver(order("bob", Side.BUY, 140), number=2)
    assert kinds(sub) == ["delta"]
    await relay.close()


async def test_a_message_lost_while_the_books_load_makes_them_load_once_more() -> None:
    """The load's depths were read before message 3 committed, and message 3 (of A) was
    lost: message 4 (of B) shows the gap while the batches are held, so the books load
    once more and A's book is the engine's, its subscribers told, not left stale."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    await nats.deliver(order("alice", Side.SELL, 150), number=1)
    await nats.deliver([], number=2, resync=True)  # the sequencer rebuilt: a load
    exchange.gate, exchange.early = asyncio.Event(), True
    await asyncio.sleep(0)  # the load has read the depths
    order("alice", Side.SELL, 155)  # message 3: lost
    await nats.deliver(order("bob", Side.SELL, 150, SYM_B), number=4)
    exchange.gate.set()
    await asyncio.sleep(0.05)
    assert exchange.asked == 3  # start, the resync, and once more for the gap
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    assert kinds(sub)[-3:] == ["snapshot", "stream_interrupted", "stream_interrupted"]
    await relay.close()


async def test_a_message_lost_right_after_a_load_is_seen() -> None:
    """A resync's load keeps the message count (only a NATS disconnect starts it anew):
    message 2 (of A) lost after it, message 3 (of B) shows the gap and the books load."""
    nats, exchange, hub, relay, order = await _relay()
    sub = _subscribed(hub)
    await nats.deliver([], number=1, resync=True)
    await asyncio.sleep(0.05)
    frames(sub)
    order("alice", Side.SELL, 155)  # message 2: lost
    await nats.deliver(order("bob", Side.SELL, 150, SYM_B), number=3)
    await asyncio.sleep(0.05)
    assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    assert kinds(sub) == ["snapshot", "stream_interrupted", "stream_interrupted"]
    await relay.close()


async def _until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_gateway_through_a_nats_restart(tmp_path: Any, monkeypatch: Any) -> None:
    """A gateway's lifespan (`ops.gateway_process`) on a real NATS that is restarted: the
    relay holds from the disconnect, reloads once reconnected, and its subscribers get a
    snapshot and the notices; the batches after it are deltas on that snapshot."""
    from litestar.datastructures import State

    from market.sequencer.wire import (
        MARKET_DATA_SUBJECT,
        QUERY_SUBJECT,
        SEQUENCER_QUEUE,
        Answer,
        Reply,
    )
    from ops import bus
    from ops.gateway_process import remote_exchange_lifespan

    held: list[int] = []
    hold = FeedRelay.hold
    monkeypatch.setattr(FeedRelay, "hold", lambda self: (held.append(1), hold(self))[1])
    eng = engine()
    order = Orders(eng)
    nats_server = bus.EmbeddedNats(tmp_path / "a")
    port = nats_server.port
    token = nats_server.token
    monkeypatch.setenv(bus.TOKEN_ENV, token)  # as a gateway process is given it
    sequencer = await bus.connect(nats_server.url, name="sequencer")

    async def depths(msg: Any) -> None:
        value = [full_depth(eng, SYM_A), full_depth(eng, SYM_B)]
        await msg.respond(encode(Answer(replies=[Reply(value=value)])))

    await sequencer.subscribe(QUERY_SUBJECT, queue=SEQUENCER_QUEUE, cb=depths)
    hub = MarketData()
    app: Any = type("App", (), {"state": State({"market_data": hub})})()
    try:
        async with remote_exchange_lifespan(nats_server.url, 0)(app):
            sub = _subscribed(hub)
            batch = MarketDataBatch(order("alice", Side.SELL, 150), {}, number=1)
            await sequencer.publish(MARKET_DATA_SUBJECT, encode(batch))
            got: list[str] = []
            await _until(lambda: got.extend(kinds(sub)) or got)
            assert got == ["order", "delta"]
            nats_server.stop()
            await _until(lambda: held)  # the disconnect
            order("alice", Side.SELL, 155)  # message 2: published while NATS was down
            monkeypatch.setattr(bus, "_free_port", lambda host: port)
            nats_server = bus.EmbeddedNats(tmp_path / "b", token=token)
            got.clear()
            await _until(lambda: got.extend(kinds(sub)) or len(got) >= 3)
            assert got == ["snapshot", "stream_interrupted", "stream_interrupted"]
            assert hub.depth(SYM_A) == full_depth(eng, SYM_A)
            batch = MarketDataBatch(order("bob", Side.BUY, 150), {}, number=3)
            await sequencer.publish(MARKET_DATA_SUBJECT, encode(batch))
            got.clear()
            await _until(lambda: got.extend(kinds(sub)) or len(got) >= 3)
            assert got == ["trade", "fill", "delta"]
    finally:
        await bus.close(sequencer)
        nats_server.stop()


async def test_batches_held_for_a_load_that_does_not_come_are_bounded(
    monkeypatch: Any,
) -> None:
    """While `DepthsQuery` cannot be answered, what is held stays under `HELD_MAX`; once
    the load comes, the subscribers are told what they may have missed."""
    from market import feed_relay

    monkeypatch.setattr(feed_relay, "HELD_MAX", 10)
    nats, exchange, hub, relay, order = await _relay()
    try:
        sub = hub.connect()
        hub.subscribe_trades(sub, SYM_A)
        sub.pending()
        exchange.gate = asyncio.Event()
        relay.reload()
        for n in range(25):
            await nats.deliver(order("alice", Side.BUY if n % 2 else Side.SELL, 100))
            assert relay._held is not None and len(relay._held) <= 10
        exchange.gate.set()
        await asyncio.sleep(0.05)
        assert "stream_interrupted" in kinds(sub)
        assert hub.depth(SYM_A) == full_depth(exchange.eng, SYM_A)
    finally:
        await relay.close()
