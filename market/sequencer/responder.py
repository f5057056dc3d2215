"""The sequencer process's side of NATS: it answers commands and queries, and publishes
market data (`market.sequencer.wire` for the bytes, `remote` for the other side).

`Responder.start` subscribes to `tokex.cmd.*` and `tokex.query` in the queue group
`sequencer`. Each request runs as its own task (a subscription's callback is awaited
one message at a time, and a command waits for its commit), started in arrival order,
so ops reach the sequencer's queue in the order they came and many requests share a
batch, as HTTP requests do in one process. A command is answered only once its batch
is durable (`Sequencer.submit_all`). `publish` is the sequencer's market data hook:
each committed batch is one message on `tokex.md`, in commit order, numbered; `load`
its resync hook: after every rebuild of the sequencer's memory, a `resync` message
there, so that every gateway loads its books again (`market.feed_relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from market.auth import ReplayWindow, replayed_signature
from market.request_context import REQUEST_ID
from market.sequencer.errors import AnswerNotSent, SequencerStopped
from market.sequencer.port import Exchange
from market.sequencer.queries import AnyQuery, Query
from market.sequencer.remote import REQUEST_ID_HEADER, SIGNED_HEADER
from market.sequencer.wire import (
    COMMAND_PREFIX,
    MARKET_DATA_SUBJECT,
    QUERY_SUBJECT,
    SEQUENCER_QUEUE,
    Answer,
    BadCommand,
    Codec,
    ErrorWire,
    MarketDataBatch,
    Reply,
    encode,
    replies_of,
)
from market.signing import decode_signature, now_ms
from schemas.errors import DomainError
from schemas.market import Depth, Event
from schemas.trading import FillView

log = logging.getLogger(__name__)

#: Where the responder finds the sequencer now (a new one after the exchange reopens).
SequencerSource = Callable[[], Exchange | None]

_query_decoder = msgspec.msgpack.Decoder(AnyQuery)

#: Market data batches waiting for NATS at most (`Responder.publish`).
PUBLISHED_MAX = 10_000


class Responder:
    """Answers the gateways' commands and queries; publishes market data."""

    def __init__(self, nats: Client, sequencer: SequencerSource) -> None:
        self._nats = nats
        self._sequencer = sequencer
        self._codec = Codec()
        self._replay = ReplayWindow()
        self._subscriptions: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._published: asyncio.Queue[bytes] = asyncio.Queue()
        self._number = 0  # of the last market data message
        self._publisher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._publisher = asyncio.create_task(self._publish_loop())
        for subject, handle in (
            (COMMAND_PREFIX + "*", self._command),
            (QUERY_SUBJECT, self._query),
        ):
            sub = await self._nats.subscribe(
                subject, queue=SEQUENCER_QUEUE, cb=self._spawner(handle)
            )
            self._subscriptions.append(sub)
        await self._nats.flush()

    async def close(self) -> None:
        """Stop taking requests; wait for those under way (their batches end), then for
        the market data published so far to be sent."""
        for sub in self._subscriptions:
            await sub.unsubscribe()
        self._subscriptions.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._publisher is not None:
            await self._published.put(b"")  # the end
            await self._publisher
            self._publisher = None
        await self._nats.flush()

    def _spawner(self, handle: Callable[[Msg], Any]) -> Callable[[Msg], Any]:
        async def spawn(msg: Msg) -> None:
            task = asyncio.create_task(self._answer(msg, handle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return spawn

    async def _answer(self, msg: Msg, handle: Callable[[Msg], Any]) -> None:
        headers = msg.headers
        if headers:
            REQUEST_ID.set(headers.get(REQUEST_ID_HEADER))
        try:
            answer: Answer[Any] = await handle(msg)
        except DomainError as exc:
            answer = Answer(error=ErrorWire.of(exc))
        except Exception:
            log.exception("answering %s failed", msg.subject)
            return  # no answer: the gateway's request times out (503), as if we were gone
        try:
            await msg.respond(encode(answer))
        except Exception as exc:  # too large for NATS, or the connection is gone
            log.warning("the answer to %s was not sent: %r", msg.subject, exc)
            not_sent = AnswerNotSent(f"the exchange could not send its answer ({exc}); retry")
            with contextlib.suppress(Exception):  # else the gateway's request times out
                await msg.respond(encode(Answer(error=ErrorWire.of(not_sent))))

    def _exchange(self) -> Exchange:
        sequencer = self._sequencer()
        if sequencer is None:
            raise SequencerStopped("the exchange is reopening; try again shortly")
        return sequencer

    async def _command(self, msg: Msg) -> Answer[Any]:
        ops = self._codec.ops(msg.subject.removeprefix(COMMAND_PREFIX), msg.data)
        signed = msg.headers.get(SIGNED_HEADER) if msg.headers else None
        if signed is not None:
            self._refuse_replay(signed)
        return replies_of(await self._exchange().submit_all(ops))

    def _refuse_replay(self, signed: str) -> None:
        """A signed request's command is taken once, whichever gateway it came through
        (each gateway's own window sees only its own requests)."""
        signature_b64, _, timestamp = signed.partition(" ")
        signature = decode_signature(signature_b64)
        if signature is None or not timestamp.isdigit():
            return  # checked by the gateway already; nothing to remember it by
        if not self._replay.check_and_add(signature, int(timestamp), now_ms()):
            raise replayed_signature()

    async def _query(self, msg: Msg) -> Answer[Any]:
        try:
            query: Query[Any] = _query_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise BadCommand(f"cannot read the query: {exc}") from exc
        return Answer(replies=[Reply(value=await self._exchange().ask(query))])

    # -- market data --------------------------------------------------------------------

    def publish(self, events: Sequence[Event], fills: Mapping[int, Sequence[FillView]]) -> None:
        """The sequencer's publish hook: never blocks; sent in commit order. If NATS has
        fallen `PUBLISHED_MAX` batches behind, what waits is dropped for one `resync`:
        the gateways load the books again, and tell their subscribers of the gap."""
        if self._published.qsize() >= PUBLISHED_MAX:
            log.warning("market data %d batches behind NATS: resyncing the gateways instead",
                        self._published.qsize())  # fmt: skip
            while not self._published.empty():
                self._published.get_nowait()
            self.load(())
            return
        self._number += 1
        batch = MarketDataBatch(
            list(events), {k: list(v) for k, v in fills.items()}, number=self._number
        )
        self._published.put_nowait(encode(batch))

    def load(self, depths: Sequence[Depth]) -> None:
        """The sequencer's resync hook (it rebuilt its memory): a `resync` message, after
        the batches published before it. The gateways ask for the depths themselves
        (`DepthsQuery`: every book at full depth may not fit in one message)."""
        self._number += 1
        self._published.put_nowait(encode(MarketDataBatch([], {}, self._number, resync=True)))

    async def _publish_loop(self) -> None:
        while True:
            payload = await self._published.get()
            if not payload:
                return
            try:
                await self._nats.publish(MARKET_DATA_SUBJECT, payload)
            except Exception:
                log.exception("publishing market data failed")
