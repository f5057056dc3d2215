"""A gateway process's market data: the sequencer process's batches, into its own hub.

The sequencer process publishes each committed batch on `tokex.md`
(`market.sequencer.responder`); every gateway process subscribes and feeds it to
its own `MarketData` hub (`market.feed`), which fans it out to its websocket
clients exactly as in one process. On start (and after NATS reconnects, when
messages may have been missed) the hub is loaded with every book at full depth
(`DepthsQuery`), subscribed first so nothing falls between: a batch that arrives
while the books load is held, and its events the loaded books already reflect
(seq at most the book's) are dropped.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from market.feed import MarketData
from market.sequencer.port import Exchange
from market.sequencer.queries import DepthsQuery
from market.sequencer.wire import MARKET_DATA_SUBJECT, MarketDataBatch

log = logging.getLogger(__name__)

_decoder = msgspec.msgpack.Decoder(MarketDataBatch)


class FeedRelay:
    """`tokex.md` into `hub` (see the module docstring)."""

    def __init__(self, nats: Client, exchange: Exchange, hub: MarketData) -> None:
        self._nats = nats
        self._exchange = exchange
        self._hub = hub
        self._held: list[MarketDataBatch] | None = []  # None: loaded, batches go straight in
        self._subscription: Subscription | None = None
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self._nats.subscribe(MARKET_DATA_SUBJECT, cb=self._on_batch)
        await self._load()

    def reload(self) -> None:
        """Load the books again (NATS reconnected: batches may have been missed)."""
        if self._loading is None or self._loading.done():
            self._held = []
            self._loading = asyncio.create_task(self._load())

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_batch(self, msg: Msg) -> None:
        try:
            batch = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.exception("market data: undecodable batch")
            return
        if self._held is not None:
            self._held.append(batch)
        else:
            self._hub.publish(batch.events, batch.fills)

    async def _load(self) -> None:
        try:
            depths = await self._exchange.ask(DepthsQuery())
        except Exception:
            log.exception("market data: cannot load the books; retrying")
            await asyncio.sleep(1.0)
            self._loading = asyncio.create_task(self._load())
            return
        self._hub.load(depths)
        loaded = {depth.instrument: depth.seq for depth in depths}
        held, self._held = self._held or [], None
        for batch in held:
            events = [e for e in batch.events if e.seq == 0 or e.seq > loaded.get(e.instrument, 0)]
            if events:
                self._hub.publish(events, batch.fills)
