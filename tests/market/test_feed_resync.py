"""The market data after the sequencer rebuilds its memory: a commit reported failed
(the connection dropped after COMMIT reached PostgreSQL) was durable after all, so its
events were never published. The hub is loaded again from the rebuilt books, in one
process (`resync`) and in a gateway (the responder's resync message, `tokex.md`), and a
book that broke on a lost batch heals by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from ledger.errors import LedgerUnavailable
from market.feed import MarketData, Subscriber
from market.feed_relay import FeedRelay
from market.sequencer import Sequencer
from market.sequencer.pipeline import Flight
from market.sequencer.responder import Responder
from market.sequencer.wire import MARKET_DATA_SUBJECT
from schemas.market import Event, Side
from schemas.trading import FillView
from tests.market.test_sequencer import SYM, Clock, order, place, setup_market


def kinds(sub: Subscriber) -> list[str]:
    got = [msgspec.json.decode(f) for f in sub.pending()]
    return [f["code"] if f["type"] == "error" else f["type"] for f in got]


async def kinds_of_next(sub: Subscriber, n: int) -> list[str]:
    """The kinds of the next `n` frames (waiting up to 10 s for them), and any more."""
    got: list[str] = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(got) < n and asyncio.get_running_loop().time() < deadline:
        got += kinds(sub)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    return got + kinds(sub)


def lose_the_next_commit_reply(s: Sequencer) -> Callable[[], None]:
    """Arm: the next batch commits, but its commit is reported failed (503)."""
    finish: Callable[[Flight], Awaitable[None]] = s._finish
    armed = {"on": False}

    async def finish_losing_the_reply(flight: Flight) -> None:
        if armed["on"] and flight.commit is not None:
            armed["on"] = False
            await asyncio.shield(flight.commit)  # durable in PostgreSQL
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            lost.set_exception(ConnectionResetError("connection lost after COMMIT"))
            flight.commit = lost
        await finish(flight)

    s._finish = finish_losing_the_reply  # type: ignore[method-assign]
    return lambda: armed.update(on=True)


async def _ambiguous_buy(s: Sequencer, db_url: str, arm: Callable[[], None]) -> None:
    arm()
    with pytest.raises(LedgerUnavailable):
        await place(s, "b1", order("b1", Side.BUY, 10_000, 5_000))
    conn = await asyncpg.connect(db_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM market_orders WHERE client_order_id='b1'")
    finally:
        await conn.close()
    assert n == 1  # it did commit: b1 bought 10 lots


def _subscribed(hub: MarketData) -> Subscriber:
    sub = hub.connect()
    hub.subscribe_book(sub, SYM)
    hub.subscribe_trades(sub, SYM)
    hub.subscribe_orders(sub, "b1")
    sub.pending()
    return sub


async def test_a_commit_durable_after_all_resyncs_the_hub(db_url: str) -> None:
    """One process: the rebuild loads the hub again, so book subscribers get a snapshot
    with the durable batch, and trades and orders subscribers are told to reconcile;
    the next batch is a delta on it, not a gap, and the book can be subscribed to."""
    hub = MarketData()
    s = await Sequencer.open(db_url, clock=Clock(), publish=hub.publish, resync=hub.load)
    try:
        arm = lose_the_next_commit_reply(s)
        await setup_market(s)
        await place(s, "p1", order("s1", Side.SELL, 30_000, 5_000))
        sub = _subscribed(hub)
        await _ambiguous_buy(s, db_url, arm)
        assert kinds(sub) == ["snapshot", "stream_interrupted", "stream_interrupted"]
        assert hub.depth(SYM) == s.engine.book(SYM).depth(1_000_000)
        await place(s, "p2", order("s2", Side.SELL, 1_000, 6_000))
        assert kinds(sub) == ["delta"]
        again = hub.connect()
        hub.subscribe_book(again, SYM)
        assert kinds(again) == ["subscribed", "snapshot"]
    finally:
        await s.close()


async def test_a_book_broken_by_a_lost_publish_is_reloaded_from_the_sequencer(
    db_url: str,
) -> None:
    """One process: a batch's market data lost (a bug, say): the next batch is a gap, the
    book is unavailable and its subscribers are told; the hub asks the sequencer
    (`resync_soon`, as `ops.exchange` wires it) and the book is back, equal to the
    engine's."""
    hub = MarketData()
    dropping = {"on": False}

    def lossy(events: Sequence[Event], fills: Mapping[int, Sequence[FillView]]) -> None:
        if dropping["on"]:
            dropping["on"] = False
            return
        hub.publish(events, fills)

    s = await Sequencer.open(db_url, clock=Clock(), publish=lossy, resync=hub.load)
    hub.reloader = s.resync_soon
    try:
        await setup_market(s)
        await place(s, "p1", order("s0", Side.SELL, 1_000, 7_000))
        sub = _subscribed(hub)
        dropping["on"] = True
        await place(s, "p1", order("s1", Side.SELL, 30_000, 5_000))  # lost
        await place(s, "p1", order("s2", Side.SELL, 1_000, 6_000))
        got = await kinds_of_next(sub, 3)
        assert got == ["book_unavailable", "stream_interrupted", "stream_interrupted"]
        again = hub.connect()
        hub.subscribe_book(again, SYM)
        assert hub.depth(SYM) == s.engine.book(SYM).depth(1_000_000)
    finally:
        await s.close()


class FakeBus:
    """Enough of a NATS client for the responder and a relay in one process."""

    def __init__(self) -> None:
        self.cbs: dict[str, list[Any]] = {}

    async def subscribe(self, subject: str, queue: str = "", cb: Any = None) -> Any:
        self.cbs.setdefault(subject, []).append(cb)
        return self

    async def unsubscribe(self) -> None:
        return None

    async def publish(self, subject: str, payload: bytes) -> None:
        for cb in self.cbs.get(subject, []):
            await cb(type("Msg", (), {"data": payload})())

    async def flush(self) -> None:
        return None


async def test_a_commit_durable_after_all_resyncs_the_gateways(db_url: str) -> None:
    """Workers mode: the rebuild publishes a resync on `tokex.md`, and a gateway's relay
    loads its books again (`DepthsQuery`): the same frames as in one process."""
    bus, gateway_hub = FakeBus(), MarketData()
    responder = Responder(bus, lambda: s)  # type: ignore[arg-type]
    s = await Sequencer.open(
        db_url, clock=Clock(), publish=responder.publish, resync=responder.load
    )
    await responder.start()
    relay = FeedRelay(bus, s, gateway_hub)  # type: ignore[arg-type]
    try:
        arm = lose_the_next_commit_reply(s)
        await relay.start()
        await setup_market(s)
        await place(s, "p1", order("s1", Side.SELL, 30_000, 5_000))
        for _ in range(1000):  # until its first event reached the gateway
            if SYM in gateway_hub:
                break
            await asyncio.sleep(0.01)
        sub = _subscribed(gateway_hub)
        await _ambiguous_buy(s, db_url, arm)
        got = await kinds_of_next(sub, 3)
        assert got == ["snapshot", "stream_interrupted", "stream_interrupted"]
        assert gateway_hub.depth(SYM) == s.engine.book(SYM).depth(1_000_000)
        await place(s, "p2", order("s2", Side.SELL, 1_000, 6_000))
        assert await kinds_of_next(sub, 1) == ["delta"]
        assert MARKET_DATA_SUBJECT in bus.cbs
    finally:
        await relay.close()
        await responder.close()
        await s.close()
