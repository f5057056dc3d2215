"""A gateway process's handle on the sequencer in another process, over NATS.

`RemoteSequencer` is an `Exchange` (`market.sequencer.port`): `submit` and
`submit_all` send the ops as one NATS request to `tokex.cmd.<op type>`
(`market.sequencer.wire`), which the sequencer process (`market.sequencer.responder`)
answers only once their batch is durable, exactly as `Sequencer.submit` returns;
`ask` sends a query to `tokex.query`. A request that gets no answer in time (the
sequencer is gone, or slower than `timeout_s`) is 503 `sequencer_unreachable` with
Retry-After: its op may have committed after all, so a client retries with the same
idempotency key (`client_order_id`, `deposit_id`, ...) and gets its first outcome.
While this process is not connected to NATS (the server down or restarting) nothing is
sent: 503 `bus_unavailable` at once, with Retry-After.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from market.request_context import REQUEST_ID, SIGNED
from market.sequencer.ops import Op, Outcome
from market.sequencer.queries import Query
from market.sequencer.wire import (
    COMMAND_PREFIX,
    QUERY_SUBJECT,
    Answer,
    Codec,
    encode,
    outcomes_of,
)
from schemas.errors import DomainError, ErrorKind

T = TypeVar("T")

#: How long a command or query waits for the sequencer process's answer.
TIMEOUT_S = 10.0
#: The header that carries the HTTP request's id to the sequencer's batch log lines.
REQUEST_ID_HEADER = "Tokex-Request-Id"
#: The header that carries a command's signed request ("<base64 signature> <timestamp
#: ms>"), for the sequencer process's replay window (`market.request_context.SIGNED`).
SIGNED_HEADER = "Tokex-Signed"


class SequencerUnreachable(DomainError):
    """The sequencer process did not answer (gone, restarting, or too slow)."""

    code = "sequencer_unreachable"
    kind = ErrorKind.UNAVAILABLE


class BusUnavailable(SequencerUnreachable):
    """This process is not connected to NATS now (the server is down or restarting; the
    client reconnects by itself): refused at once, nothing sent, so nothing to retry with
    the same ids for; waiting out the request timeout would only hold the client."""

    code = "bus_unavailable"


def refuse_unconnected(nats: Client) -> None:
    """503 `bus_unavailable` at once if not connected, rather than a request held in the
    client's buffer until it times out."""
    if not nats.is_connected:
        raise BusUnavailable("the message bus is not reachable now; try again shortly")


class RemoteSequencer:
    """The sequencer of another process, reached over NATS (see the module docstring)."""

    def __init__(self, nats: Client, *, timeout_s: float = TIMEOUT_S) -> None:
        self._nats = nats
        self._timeout_s = timeout_s
        self._codec = Codec()
        self._query_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}

    @property
    def healthy(self) -> bool:
        return bool(self._nats.is_connected)

    def require_bus(self) -> None:
        """Raise `BusUnavailable` unless connected to NATS now."""
        refuse_unconnected(self._nats)

    async def committed(self) -> None:
        """Nothing to wait for here: every query is answered from committed memory."""

    async def _request(self, subject: str, payload: bytes, *, command: bool = False) -> bytes:
        refuse_unconnected(self._nats)
        headers: dict[str, str] = {}
        request_id = REQUEST_ID.get()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        signed = SIGNED.get() if command else None
        if signed:
            headers[SIGNED_HEADER] = signed
        try:
            msg = await self._nats.request(
                subject, payload, timeout=self._timeout_s, headers=headers or None
            )
        except (TimeoutError, NatsTimeout) as exc:
            raise SequencerUnreachable(
                "the sequencer did not answer in time; retry with the same ids"
            ) from exc
        except (NoRespondersError, ConnectionClosedError) as exc:
            raise SequencerUnreachable("the sequencer is not running; try again shortly") from exc
        data: bytes = msg.data
        return data

    async def _command(self, ops: Sequence[Op[Any]]) -> list[Outcome[Any]]:
        name = type(ops[0]).__name__
        data = await self._request(COMMAND_PREFIX + name, encode(ops), command=True)
        answer = self._codec.answer(name, data)
        if answer.error is not None:
            raise answer.error.error()
        return outcomes_of(answer)

    async def submit(self, op: Op[T]) -> T:
        (outcome,) = await self._command([op])
        value: T = outcome.unwrap()
        return value

    async def submit_all(self, ops: Sequence[Op[T]]) -> list[Outcome[T]]:
        """Each run of ops of one type is one request (a request's batch of orders is one
        run), queued whole or not at all, as in `Sequencer.submit_all`."""
        outcomes: list[Outcome[T]] = []
        start = 0
        for end in range(1, len(ops) + 1):
            if end == len(ops) or type(ops[end]) is not type(ops[start]):
                outcomes.extend(await self._command(ops[start:end]))
                start = end
        return outcomes

    async def ask(self, query: Query[T]) -> T:
        kind = type(query)
        decoder = self._query_decoders.get(kind)
        if decoder is None:
            decoder = msgspec.msgpack.Decoder(Answer[kind.result_type()])  # type: ignore[misc]
            self._query_decoders[kind] = decoder
        answer: Answer[T] = decoder.decode(await self._request(QUERY_SUBJECT, encode(query)))
        if answer.error is not None:
            raise answer.error.error()
        value: T = answer.replies[0].value  # type: ignore[assignment]
        return value


__all__ = ["BusUnavailable", "RemoteSequencer", "SequencerUnreachable"]
