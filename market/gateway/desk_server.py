"""The desk in the sequencer process of `tokex serve --workers N`: it answers the gateway
processes' reservations, charges and releases over NATS (`desk_wire`), and closes the
calls of a gateway process that died.

Each call reserved here is kept by its receipt id with the gateway process instance
that asked (`_Entry`), until it ends:

* served: its receipt arrives to be journaled (`tokex.gw.journal`). The desk releases
  what the call reserved beyond its charge (`Desk.ended`, as one process does when the
  call ends) and writes the receipt durably (`market.gateway.journal`); its charge comes
  next (`tokex.gw.charge`), which the desk submits to the sequencer, and once it
  commits the charged tokens leave the reservations (the ledger's balance says them now);
* not served: a release (`tokex.gw.release`) gives back all of it;
* its reserve's answer never reached the gateway (no answer in time, a lost reply, the
  call cancelled while it waited): the gateway releases it all the same
  (`desk_remote`), as a call ended unserved.

Released before reserved. That release can reach the desk while the reserve is still
being decided here (it awaits the key's budget, or a commit), or, over NATS, before the
reserve itself arrives. Either way the desk must not keep the reserve: nobody would
release it again. A reserve under way is in `_reserving` while it is decided; a release
of it marks it, and it undoes itself once decided (as one of a gateway gone does). A
release of a call the desk has neither reserved nor is reserving is remembered
(`ReleasedEarly`, per gateway instance and receipt id) and the reserve arriving later is
refused (`CallReleased`, answered to nobody: the gateway stopped waiting). That memory
is bounded, `RELEASED_EARLY_S` and `RELEASED_EARLY_MAX` entries, the oldest forgotten
first: a release arrives after its reserve on one NATS connection to one desk, so such
a reserve overtaken by its release is one rerouted in a NATS cluster, late by far less
than a minute. This, rather than a deadline in each reserve that the desk checks, needs
no clock shared between hosts, and is exact for a reserve under way however long it
takes (a deadline would still need the release, for a reply lost after the desk
reserved in time).

So between a call's end and its receipt's arrival (at most its gateway's journal commit
in flight) it holds its whole reservation, never less: the rule can only err by
refusing, never by overdrawing.

A gateway process that exits (`gone`, from the supervisor, `ops.workers.Gateways`): its
instance is marked gone first, so a request of it still on its way is refused; then the
desk waits for its journal writes and charges under way, drops its reservations (its
uncommitted charges too) and closes its open calls by their last progress mark
(`progress.close_crashed` on its instance id only: the calls of the other gateways are
not touched), and charges its receipts journaled but not charged (its rows of
`gateway_receipts_owed`), through the desk's own meter here, with their tokens owed in
the reservations until they commit. The new process in its slot has another instance id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from market.gateway import desk_wire as wire
from market.gateway.desk import Desk, Slot, drop
from market.gateway.errors import TooManyInFlight
from market.gateway.journal import ReceiptJournal
from market.gateway.meter import Group, Meter
from market.gateway.metering import Demand
from market.gateway.progress import close_crashed
from market.gateway.routing import Endpoint
from market.sequencer.ops import Failed, GatewayChargeOp, Op, Outcome
from market.sequencer.wire import SEQUENCER_QUEUE, Answer, ErrorWire, Reply, encode, replies_of
from schemas.errors import DomainError, ErrorKind
from schemas.gateway import GatewayReceipt

log = logging.getLogger(__name__)


class GatewayGone(DomainError):
    """A request of a gateway process the desk has seen exit (it is no longer answered)."""

    code = "gateway_gone"
    kind = ErrorKind.UNAVAILABLE


#: How long, and how many, releases of calls not reserved here are remembered, for a
#: reserve arriving after its release (see the module).
RELEASED_EARLY_S = 60.0
RELEASED_EARLY_MAX = 10_000


class CallReleased(DomainError):
    """A reserve arriving after the gateway released its call (it stopped waiting for it)."""

    code = "call_released"
    kind = ErrorKind.UNAVAILABLE


class ReleasedEarly:
    """Calls released before their reserve arrived, by (gateway instance, receipt id):
    each kept `ttl_s`, at most `size` of them, the oldest forgotten first."""

    def __init__(self, ttl_s: float = RELEASED_EARLY_S, size: int = RELEASED_EARLY_MAX) -> None:
        self._ttl_s = ttl_s
        self._size = size
        self._at: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def add(self, instance_id: str, receipt_id: str) -> None:
        now = time.monotonic()
        self._expire(now)
        self._at[(instance_id, receipt_id)] = now
        self._at.move_to_end((instance_id, receipt_id))
        while len(self._at) > self._size:
            self._at.popitem(last=False)

    def take(self, instance_id: str, receipt_id: str) -> bool:
        """Whether this call was released early (it is forgotten now: its reserve came)."""
        self._expire(time.monotonic())
        return self._at.pop((instance_id, receipt_id), None) is not None

    def _expire(self, now: float) -> None:
        oldest = now - self._ttl_s
        while self._at and next(iter(self._at.values())) <= oldest:
            self._at.popitem(last=False)


@dataclass(slots=True)
class _Entry:
    instance_id: str
    group: Group
    key_id: str
    slot: Slot
    reserved: int
    charged: int | None = None  # its receipt arrived: what it charges, until committed


class DeskServer:
    """See the module docstring."""

    def __init__(
        self, nats: Client, desk: Desk, meter: Meter, pool: asyncpg.Pool, max_in_flight: int,
        journal: ReceiptJournal,
    ) -> None:  # fmt: skip
        self._nats = nats
        self.journal = journal
        self.desk = desk
        self.meter = meter
        self.pool = pool
        #: calls in flight per buying account through every gateway (429 beyond), the
        #: cap each gateway process also keeps for itself (`GatewayConfig.max_in_flight`)
        self.max_in_flight = max_in_flight
        self._accounts: dict[str, int] = {}
        self._entries: dict[str, _Entry] = {}
        self._gone: set[str] = set()
        #: reserves being decided: receipt id -> instance; those released meanwhile
        self._reserving: dict[str, str] = {}
        self._released_under_way: set[str] = set()
        self.released_early = ReleasedEarly()
        self._charging: dict[str, set[asyncio.Task[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
            wire.RESERVE: msgspec.msgpack.Decoder(wire.ReserveRequest),
            wire.CHARGE: msgspec.msgpack.Decoder(wire.ChargeRequest),
            wire.JOURNAL: msgspec.msgpack.Decoder(wire.JournalRequest),
            wire.RELEASE: msgspec.msgpack.Decoder(wire.ReleaseRequest),
            wire.MODELS: msgspec.msgpack.Decoder(wire.ModelsRequest),
        }
        self._handlers: dict[str, Callable[[Any], Awaitable[Any]]] = {
            wire.RESERVE: self.reserve,
            wire.CHARGE: self.charge,
            wire.JOURNAL: self.journal_receipts,
            wire.RELEASE: self.release,
            wire.MODELS: self.models,
        }

    @property
    def nats(self) -> Client:
        return self._nats

    @property
    def calls(self) -> int:
        """Calls reserved here and not yet ended and committed."""
        return len(self._entries)

    async def start(self) -> None:
        self._subscription = await self._nats.subscribe(
            wire.PREFIX + "*", queue=SEQUENCER_QUEUE, cb=self._spawn
        )
        await self._nats.flush()

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _spawn(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            decoder = self._decoders.get(msg.subject)
            if decoder is None:
                raise GatewayGone(f"no such desk request: {msg.subject[:64]!r}")
            answer = await self._handlers[msg.subject](decoder.decode(msg.data))
        except DomainError as exc:
            answer = Answer(error=ErrorWire.of(exc))
        except Exception:
            log.exception("answering %s failed", msg.subject)
            return  # no answer: the gateway's request times out (503)
        await msg.respond(encode(answer))

    def _refuse_gone(self, instance_id: str) -> None:
        if instance_id in self._gone:
            raise GatewayGone("this gateway process is gone")

    # -- requests ------------------------------------------------------------------------

    async def reserve(self, r: wire.ReserveRequest) -> Answer[wire.Reservation]:
        self._refuse_gone(r.instance_id)
        if self.released_early.take(r.instance_id, r.receipt_id):
            raise CallReleased("this call was released before its reserve arrived")
        if self._accounts.get(r.buyer, 0) >= self.max_in_flight:
            raise TooManyInFlight(
                f"your account has {self.max_in_flight} calls in flight, the most the "
                "gateway takes; retry when one ends"
            )
        self._accounts[r.buyer] = self._accounts.get(r.buyer, 0) + 1  # its place, taken now
        endpoints = [Endpoint(p, e, n) for p, e, n in r.endpoints]
        self._reserving[r.receipt_id] = r.instance_id
        try:
            route, plan = await self.desk.reserve(
                r.receipt_id, r.buyer, r.key_id, r.budget, r.model,
                Demand(r.prompt_estimate, r.max_tokens), endpoints,
            )  # fmt: skip
        except BaseException:
            self._decided(r.receipt_id)
            drop(self._accounts, r.buyer)
            raise
        released = self._decided(r.receipt_id)
        group = (r.buyer, route.provider, route.instrument)
        slot = (route.provider, route.endpoint.endpoint_id)
        gone = r.instance_id in self._gone  # it died while this waited for a commit
        if gone or released:  # or its gateway released it meanwhile: undone
            drop(self._accounts, r.buyer)
            self.desk.ended(r.receipt_id, group, r.key_id, slot, plan.reserved, 0, served=False)
            if gone:
                raise GatewayGone("this gateway process is gone")
            raise CallReleased("this call was released while its reserve was decided")
        self._entries[r.receipt_id] = _Entry(r.instance_id, group, r.key_id, slot, plan.reserved)
        reservation = wire.Reservation(
            route.instrument, route.provider, route.endpoint.endpoint_id,
            route.endpoint.max_concurrency, route.available, plan.prompt_cap,
            plan.completion_cap, plan.completion_weight,
        )  # fmt: skip
        return Answer(replies=[Reply(value=reservation)])

    def _decided(self, receipt_id: str) -> bool:
        """A reserve is decided: whether its gateway released it meanwhile."""
        self._reserving.pop(receipt_id, None)
        if receipt_id in self._released_under_way:
            self._released_under_way.discard(receipt_id)
            return True
        return False

    def _released_before_reserved(self, instance_id: str, receipt_id: str) -> None:
        """A release of a call not reserved here (yet): see the module."""
        if self._reserving.get(receipt_id) == instance_id:
            self._released_under_way.add(receipt_id)
        elif instance_id not in self._gone:
            self.released_early.add(instance_id, receipt_id)

    async def release(self, r: wire.ReleaseRequest) -> Answer[int]:
        released = 0
        for receipt_id in r.receipt_ids:
            entry = self._entries.get(receipt_id)
            if entry is None:
                self._released_before_reserved(r.instance_id, receipt_id)
                continue
            if entry.charged is not None or entry.instance_id != r.instance_id:
                continue
            del self._entries[receipt_id]
            drop(self._accounts, entry.group[0])
            self.desk.ended(receipt_id, entry.group, entry.key_id, entry.slot, entry.reserved, 0,
                            served=False)  # fmt: skip
            released += 1
        return Answer(replies=[Reply(value=released)])

    async def models(self, r: wire.ModelsRequest) -> Answer[wire.Models]:
        allowed = None if r.allowed is None else frozenset(r.allowed)
        return Answer(replies=[Reply(value=await self.desk.models(r.buyer, allowed))])

    async def journal_receipts(self, r: wire.JournalRequest) -> Answer[int]:
        """A gateway's receipts: its calls have ended; made durable here."""
        self._refuse_gone(r.instance_id)
        with self._under_way(r.instance_id):
            for receipt in r.receipts:
                self._ended(receipt)
            await self.journal.write(r.receipts, r.instance_id)
            return Answer(replies=[Reply(value=len(r.receipts))])

    @contextlib.contextmanager
    def _under_way(self, instance_id: str) -> Iterator[None]:
        """A request of `instance_id` in progress (`gone` waits for it)."""
        task = asyncio.current_task()
        assert task is not None
        under_way = self._charging.setdefault(instance_id, set())
        under_way.add(task)
        try:
            yield
        finally:
            under_way.discard(task)
            if not under_way:
                self._charging.pop(instance_id, None)

    async def charge(self, r: wire.ChargeRequest) -> Answer[Any]:
        """A gateway's group commit of charges (its receipts journaled already), submitted
        as one `submit_all`."""
        self._refuse_gone(r.instance_id)
        with self._under_way(r.instance_id):
            for op in r.charges:
                for receipt in op.receipts:
                    self._ended(receipt)
            ops: list[Op[Any]] = [*([r.progress] if r.progress is not None else []), *r.charges]
            outcomes = await self.desk.sequencer.submit_all(ops)
            self._committed(r.charges, outcomes[len(ops) - len(r.charges) :])
            return replies_of(outcomes)

    def _ended(self, receipt: GatewayReceipt) -> None:
        """Its receipt has arrived: the call releases what it reserved beyond its charge."""
        entry = self._entries.get(receipt.receipt_id)
        if entry is None or entry.charged is not None:
            return  # a retry, or not reserved here
        entry.charged = min(receipt.tokens, entry.reserved)
        drop(self._accounts, entry.group[0])
        self.desk.ended(receipt.receipt_id, entry.group, entry.key_id, entry.slot,
                        entry.reserved, entry.charged, served=True)  # fmt: skip

    def _committed(
        self, charges: Sequence[GatewayChargeOp], outcomes: Sequence[Outcome[Any]]
    ) -> None:
        """The charges that committed are in the ledger now: out of the reservations."""
        groups: set[Group] = set()
        for op, outcome in zip(charges, outcomes, strict=True):
            if isinstance(outcome, Failed):
                continue  # the gateway submits it again
            for receipt in op.receipts:
                entry = self._entries.pop(receipt.receipt_id, None)
                if entry is not None and entry.charged is not None:
                    self.desk.reservations.settled(entry.group, entry.charged)
                    groups.add(entry.group)
        if groups:
            self.desk.refresh(groups)

    # -- a gateway process gone ------------------------------------------------------------

    async def gone(self, instance_id: str) -> None:
        """The gateway process `instance_id` exited (see the module docstring)."""
        self._gone.add(instance_id)
        under_way = list(self._charging.get(instance_id, ()))
        if under_way:
            await asyncio.wait(under_way)
        reservations = self.desk.reservations
        # Its open calls' charges are owed before its reservations go: in between, the
        # desk would tell the sequencer nothing is on the way, and an instrument waiting
        # for them would settle and refuse them (`Sequencer.delivering`).
        try:
            closing = await close_crashed(self.pool, self.meter, reservations, instance_id)
        except Exception:
            log.exception("gateway %s: its open calls could not be read; closed at next start",
                          instance_id)  # fmt: skip
            closing = None
        dropped = 0
        for receipt_id, entry in list(self._entries.items()):
            if entry.instance_id != instance_id:
                continue
            del self._entries[receipt_id]
            dropped += 1
            if entry.charged is None:
                drop(self._accounts, entry.group[0])
                self.desk.ended(receipt_id, entry.group, entry.key_id, entry.slot,
                                entry.reserved, 0, served=False)  # fmt: skip
            else:  # its charge failed and nobody will submit it again: as after a crash
                reservations.settled(entry.group, entry.charged)
                reservations.key_used[entry.key_id] = (
                    reservations.key_used.get(entry.key_id, 0) - entry.charged
                )
        if closing is None:
            return
        log.warning("gateway %s gone: %d calls dropped, %d open calls closed as cut by a crash",
                    instance_id, dropped, len(closing))  # fmt: skip
        for outcome in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.warning("gateway %s: the charge of its calls is retried: %s",
                            instance_id, outcome)  # fmt: skip
                return
