"""A gateway process's market data: the sequencer process's batches, into its own hub.

The sequencer process publishes each committed batch on `tokex.md`
(`market.sequencer.responder`); every gateway process subscribes and feeds it to
its own `MarketData` hub (`market.feed`), which fans it out to its websocket
clients exactly as in one process. The hub is loaded with every book at full depth
(`DepthsQuery`) on start and again whenever messages may have been missed: NATS
disconnected (batches are held from the disconnect on, and the books reloaded once
it reconnects), a message number skipped, a `resync` message (the sequencer rebuilt
its memory), or a book of the hub broke (a gap in its seq: the hub asks, `reloader`).
The subscription comes first, so nothing falls between: a batch that arrives while
the books load is held, and published whole once they are loaded. Its book events the
loaded books already reflect change nothing (`DepthBook.apply` ignores a seq at most
the book's), and its trades and private order and fill frames reach the subscribers,
who never had them. A message number skipped while the books load means the load may
have read them before the lost message committed: they load once more after it. The
hub's load tells trades and orders subscribers that updates may have been missed
(`stream_interrupted`), since those of lost messages never come.
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
from market.sequencer.remote import SequencerUnreachable
from market.sequencer.wire import MARKET_DATA_SUBJECT, MarketDataBatch

log = logging.getLogger(__name__)

_decoder = msgspec.msgpack.Decoder(MarketDataBatch)

#: How long a failed `DepthsQuery` waits before it is asked again (s).
RETRY_S = 1.0
#: Batches held for a load at most: past it (the load keeps failing) they are dropped,
#: and their trades and private frames lost; the load's `stream_interrupted` says so.
HELD_MAX = 10_000


class FeedRelay:
    """`tokex.md` into `hub` (see the module docstring)."""

    def __init__(self, nats: Client, exchange: Exchange, hub: MarketData) -> None:
        self._nats = nats
        self._exchange = exchange
        self._hub = hub
        self._held: list[MarketDataBatch] | None = []  # None: loaded, batches go straight in
        self._subscription: Subscription | None = None
        self._loading: asyncio.Task[None] | None = None
        self._again = False  # asked to reload while loading: once more after this load
        self._number = 0  # of the last numbered message

    async def start(self) -> None:
        self._subscription = await self._nats.subscribe(MARKET_DATA_SUBJECT, cb=self._on_batch)
        self._hub.reloader = self.reload
        self._loading = asyncio.create_task(self._load())
        await self._loading  # a first attempt (a failed one goes on in the background)

    def hold(self) -> None:
        """NATS disconnected: hold the batches from now on, until the next load (the
        batches right after it reconnects come before its reconnect callback)."""
        if self._held is None:
            self._held = []
            # The numbers go on from those of the batches published while it was down,
            # lost: the reconnect's load covers them, so count anew. Only here: a load
            # for another reason keeps counting, or a message lost right after it (the
            # next one's number skips) would go unseen.
            self._number = 0

    def reload(self) -> None:
        """Load the books again (NATS reconnected, a message lost, a book broke)."""
        if self._held is None:
            self._held = []
        if self._is_loading():
            self._again = True  # what it loads may be from before the reason for this
            return
        self._loading = asyncio.create_task(self._load())

    def _is_loading(self) -> bool:
        return self._loading is not None and not self._loading.done()

    async def close(self) -> None:
        if self._hub.reloader == self.reload:
            self._hub.reloader = None
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
            self.reload()  # its events are lost
            return
        if batch.number:
            lost = self._number and batch.number != self._number + 1
            self._number = batch.number
            # Held after a disconnect with no load yet: the reconnect's load covers it.
            # A load under way may have read the books before the lost one committed:
            # reload() has it load once more.
            if lost and (self._held is None or self._is_loading()):
                log.warning("market data: message(s) lost before %d; reloading", batch.number)
                self.reload()
        if batch.resync:
            self.reload()
            return
        if self._held is not None:
            if len(self._held) >= HELD_MAX:  # the load is long in coming: memory is bounded
                log.warning("market data: %d batches held for a load; dropped", HELD_MAX)
                self._held.clear()  # the load covers the books; subscribers are told
            self._held.append(batch)
        else:
            self._hub.publish(batch.events, batch.fills)

    async def _load(self) -> None:
        self._again = False
        try:
            depths = await self._exchange.ask(DepthsQuery())
        except Exception as exc:
            if isinstance(exc, SequencerUnreachable):  # the bus or the sequencer not back yet
                log.warning("market data: cannot load the books (%s); retrying", exc)
            else:
                log.exception("market data: cannot load the books; retrying")
            await asyncio.sleep(RETRY_S)
            self._loading = asyncio.create_task(self._load())
            return
        self._hub.load(depths)
        held, self._held = self._held or [], None
        for batch in held:
            self._hub.publish(batch.events, batch.fills)
        if self._again:  # a reason to reload came while this one loaded
            self._held = []
            self._loading = asyncio.create_task(self._load())
