"""A gateway process's side of the desk (`tokex serve --workers N`): the reservations are
decided in the sequencer process (`desk_server`), asked over NATS (`desk_wire`).

* `RemoteDesk` is a `desk.DeskPort`: `reserve` is one request (the call's only round
  trip before it is forwarded), `models` one; a call that ends served says nothing here
  (its receipt, in the meter's next charge, ends it at the desk), one that ends unserved
  is released with the next release request (one in flight at a time, all those ended
  meanwhile together, tried again after a failure);
* a `reserve` whose answer did not come back (no answer in time, a lost reply, the call
  cancelled while it waited, an answer that could not be read) is released the same way
  once it was sent: the desk may have reserved it all the same, and nothing else would
  ever give that back (the entitlement and the key's budget it holds, the account's
  place in flight, the endpoint's). A reserve the desk answered with an error (402, 429,
  503 as its class) reserved nothing and is not released. The release can reach the desk
  before the reserve does, or while the desk is still deciding it: the desk then undoes
  or refuses that reserve (`desk_server`, "released before reserved");
* `DeskExchange` is what this process's meter submits its group commits to: the desk's
  `tokex.gw.charge`, which submits them to the sequencer as one `submit_all`.

No answer in time, or no sequencer process: 503 `sequencer_unreachable`; not connected
to NATS: 503 `bus_unavailable` at once; as for every command of a gateway process
(`market.sequencer.remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from market.gateway import desk_wire as wire
from market.gateway import metering, routing
from market.gateway.desk import Reserved, Slot
from market.gateway.meter import Group
from market.request_context import REQUEST_ID
from market.sequencer.ops import GatewayChargeOp, GatewayProgressOp, Op, Outcome
from market.sequencer.remote import (
    REQUEST_ID_HEADER,
    TIMEOUT_S,
    SequencerUnreachable,
    refuse_unconnected,
)
from market.sequencer.wire import Answer, encode, outcomes_of
from schemas.gateway import GatewayReceipt

log = logging.getLogger(__name__)

#: How long a failed release waits before it is sent again (s).
RELEASE_RETRY_S = 1.0


async def request(nats: Client, subject: str, payload: bytes, timeout_s: float) -> bytes:
    """One request to the desk (503 at once if not connected)."""
    refuse_unconnected(nats)
    return await _sent(nats, subject, payload, timeout_s)


async def _sent(nats: Client, subject: str, payload: bytes, timeout_s: float) -> bytes:
    headers = None
    request_id = REQUEST_ID.get()
    if request_id:
        headers = {REQUEST_ID_HEADER: request_id}
    try:
        msg = await nats.request(subject, payload, timeout=timeout_s, headers=headers)
    except (TimeoutError, NatsTimeout) as exc:
        raise SequencerUnreachable("the sequencer did not answer in time; try again") from exc
    except (NoRespondersError, ConnectionClosedError) as exc:
        raise SequencerUnreachable("the sequencer is not running; try again shortly") from exc
    data: bytes = msg.data
    return data


def _value(answer: Answer[Any]) -> Any:
    if answer.error is not None:
        raise answer.error.error()
    reply = answer.replies[0]
    if reply.error is not None:
        raise reply.error.error()
    return reply.value


class RemoteDesk:
    """The desk of the sequencer process, from a gateway process (see the module)."""

    def __init__(self, nats: Client, instance_id: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self._nats = nats
        self.instance_id = instance_id
        self._timeout_s = timeout_s
        self._reserved = msgspec.msgpack.Decoder(Answer[wire.Reservation])
        self._models = msgspec.msgpack.Decoder(Answer[wire.Models])
        self._released = msgspec.msgpack.Decoder(Answer[int])
        self._releases: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def models(self, buyer: str, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        payload = encode(wire.ModelsRequest(buyer, None if allowed is None else sorted(allowed)))
        data = await request(self._nats, wire.MODELS, payload, self._timeout_s)
        models: list[dict[str, Any]] = _value(self._models.decode(data))
        return models

    async def reserve(
        self, receipt_id: str, buyer: str, key_id: str, budget: int | None, model: str,
        wants: metering.Demand, endpoints: list[routing.Endpoint],
    ) -> Reserved:  # fmt: skip
        payload = encode(wire.ReserveRequest(
            self.instance_id, receipt_id, buyer, key_id, budget, model, wants.prompt_estimate,
            wants.max_tokens, [(e.provider, e.endpoint_id, e.max_concurrency) for e in endpoints],
        ))  # fmt: skip
        refuse_unconnected(self._nats)  # not sent: nothing to release
        try:
            answer = self._reserved.decode(
                await _sent(self._nats, wire.RESERVE, payload, self._timeout_s)
            )
        except BaseException:  # sent, but what the desk did is unknown (see the module)
            self._release(receipt_id)
            raise
        r: wire.Reservation = _value(answer)  # an error answered: nothing was reserved
        endpoint = routing.Endpoint(r.provider, r.endpoint_id, r.max_concurrency)
        route = routing.Route(r.instrument, r.provider, endpoint, r.available)
        return route, metering.Plan(r.prompt_cap, r.completion_cap, r.completion_weight)

    def ended(
        self, receipt_id: str, group: Group, key_id: str, slot: Slot, reserved: int,
        charged: int, *, served: bool,
    ) -> None:  # fmt: skip
        if not served:  # a served call's receipt ends it at the desk
            self._release(receipt_id)

    def _release(self, receipt_id: str) -> None:
        self._releases.append(receipt_id)
        self._wake.set()

    # -- releases ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-releases")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self._send():
                await asyncio.sleep(RELEASE_RETRY_S)
                self._wake.set()

    async def _send(self) -> bool:
        """Send the releases pending; whether they were taken (else they stay pending)."""
        ids, self._releases = self._releases, []
        if not ids:
            return True
        payload = encode(wire.ReleaseRequest(self.instance_id, ids))
        try:
            _value(self._released.decode(
                await request(self._nats, wire.RELEASE, payload, self._timeout_s)
            ))  # fmt: skip
        except Exception as exc:
            log.warning("gateway: %d releases not taken, sent again: %s", len(ids), exc)
            self._releases[:0] = ids
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._send()


class DeskExchange:
    """Where a gateway process's meter journals its receipts (`tokex.gw.journal`, one
    request per journal commit) and submits their charges: the desk's `tokex.gw.charge`
    (one request per group commit, with the progress marks riding with it)."""

    def __init__(self, nats: Client, instance_id: str, *, timeout_s: float = TIMEOUT_S) -> None:
        self._nats = nats
        self.instance_id = instance_id
        self._timeout_s = timeout_s
        self._answer = msgspec.msgpack.Decoder(Answer[Any])

    async def journal(self, receipts: Sequence[GatewayReceipt]) -> None:
        """Make `receipts` durable: the desk's `tokex.gw.journal` (the meter's `JournalWrite`)."""
        payload = encode(wire.JournalRequest(self.instance_id, list(receipts)))
        answer = self._answer.decode(
            await request(self._nats, wire.JOURNAL, payload, self._timeout_s)
        )
        if answer.error is not None:
            raise answer.error.error()

    async def submit_all(self, ops: Sequence[Op[Any]]) -> list[Outcome[Any]]:
        progress = None
        charges: list[GatewayChargeOp] = []
        for op in ops:
            if isinstance(op, GatewayProgressOp):
                progress = op
            else:
                assert isinstance(op, GatewayChargeOp), op
                charges.append(op)
        payload = encode(wire.ChargeRequest(self.instance_id, progress, charges))
        answer = self._answer.decode(
            await request(self._nats, wire.CHARGE, payload, self._timeout_s)
        )
        if answer.error is not None:
            raise answer.error.error()
        return outcomes_of(answer)
