"""The sequencer process's NATS side (`market.sequencer.responder`) without a database:
an answer NATS will not take is replaced by an error the gateway can answer with, and
market data that NATS has fallen far behind on becomes one resync, not a queue that
grows for as long as NATS is slow."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from market.sequencer import responder as responder_module
from market.sequencer.responder import Responder
from market.sequencer.wire import Answer, MarketDataBatch, Reply

_answer_decoder = msgspec.msgpack.Decoder(Answer[Any])
_batch_decoder = msgspec.msgpack.Decoder(MarketDataBatch)


class Msg:
    """A request whose first answer is refused (as NATS refuses one over max_payload)."""

    subject = "tokex.query"
    headers = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def respond(self, data: bytes) -> None:
        if not self.sent:
            self.sent.append(b"")
            raise ValueError("nats: maximum payload exceeded")
        self.sent.append(data)


class StuckBus:
    """A NATS connection whose publishes never complete."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published += 1
        await asyncio.Event().wait()


async def test_an_answer_nats_refuses_is_replaced_by_an_error_to_retry() -> None:
    responder = Responder(StuckBus(), lambda: None)  # type: ignore[arg-type]
    msg = Msg()

    async def handle(_: Any) -> Answer[Any]:
        return Answer(replies=[Reply(value="x" * 100)])

    await responder._answer(msg, handle)  # type: ignore[arg-type]
    assert len(msg.sent) == 2
    error = _answer_decoder.decode(msg.sent[1]).error
    assert error is not None and error.code == "answer_not_sent" and error.kind == "unavailable"


async def test_market_data_far_behind_nats_becomes_one_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(responder_module, "PUBLISHED_MAX", 5)
    bus = StuckBus()
    responder = Responder(bus, lambda: None)  # type: ignore[arg-type]
    publisher = asyncio.create_task(responder._publish_loop())
    try:
        responder.publish([], {})
        await asyncio.sleep(0)  # the first is taken: NATS is stuck on it
        for _ in range(5):
            responder.publish([], {})
        assert responder._published.qsize() == 5
        responder.publish([], {})  # one more: the backlog becomes a resync
        assert responder._published.qsize() == 1
        queued = _batch_decoder.decode(responder._published.get_nowait())
        assert queued.resync and queued.number == 7  # numbers 2-6 were dropped: a gap too
    finally:
        publisher.cancel()
