"""Calls cut by a crash: the durable progress of streaming calls, and their closing at a
restart.

While a streaming call runs, the gateway records how far it has come, so that a crash of
the exchange does not take its charge with it. Once every `period_s`
(`TOKEX_GATEWAY_PROGRESS_MS`, default 250 ms) `Progress` gives the meter one
`GatewayProgressOp` with a mark (`CallMark`) of each streaming call whose progress changed
since its last committed mark: the call as opened (ids, parties, endpoint, model,
reservation, start, request hash) and its progress (the completion chunks passed on so
far, the upstream's usage once seen, the hash of the events passed on). The op rides with
the meter's next group commit of receipts (`Meter.rider`: the same sequencer batch), or
wakes the meter to commit it alone if no receipt comes. Nothing waits for it: the first
token is not delayed, no chunk waits for a commit, and there is one op per period however
many calls stream (at most `MAX_MARKS` marks each, one in the sequencer at a time). A call
that ends before its first mark is never recorded; one that was has its row deleted by its
receipt's charge (`GatewayChargeOp.closes`), which follows the receipt's journal
commit. What is held here is one entry per streaming call in flight.

At a restart (`close_crashed`, from the gateway's lifespan, before it serves), every call
with a row and no receipt was cut by a crash: it is closed by the cut-call rule
(`metering.charge`) applied to its last mark — the upstream's usage if the mark has it,
else the chunks passed on by then, one token each, no prompt, capped by the reservation —
as a receipt with `ending` CRASH, through the meter like any other (journaled, then
charged by a `GatewayChargeOp`, which deletes the rows). A row whose receipt did commit
(the crash came between the two) is only deleted. So a second restart finds nothing, and nothing is
charged twice. And every receipt made durable whose charge a crash cut (a row of
`gateway_receipts_owed`, `market.gateway.journal`) is charged then (`Meter.owe`: its
delivery is looked up first, in case it committed after all).

What a crash can cost a provider, per streaming call in flight: what it streamed since
the call's last durable mark (at most a period and a commit), and its prompt if the usage
came after that mark; a call younger than a period and a commit, all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from market.gateway import metering, receipts, routing
from market.gateway.keys import KeyGrant
from market.gateway.meter import Group, Meter, Reservations
from market.sequencer.ops import Failed, GatewayProgressOp, Outcome
from market.signing import now_ms
from schemas.gateway import CallMark, Ending, GatewayReceipt

log = logging.getLogger(__name__)

#: Marks one op carries at most (the calls marked longest ago first; the rest next time).
MAX_MARKS = 1000

State = tuple[int, metering.Usage | None]  # (chunks passed on, usage)


class Tracked(Protocol):
    """What a streaming call in flight shows of itself (`service.Call`)."""

    receipt_id: str
    grant: KeyGrant
    group: Group
    route: routing.Route
    model: str
    plan: metering.Plan
    started_ms: int
    request_bytes: bytes
    #: Completion chunks passed on so far, and the upstream's usage once seen.
    chunks: int
    usage: metering.Usage | None
    #: hashlib's SHA-256 of the events passed on (or held for the tail) so far.
    response_hash: Any


@dataclass(slots=True)
class _Entry:
    call: Tracked
    request_sha256: bytes
    recorded: State | None = None  # what its last committed mark said
    marked_ms: int = 0  # when
    submitted: bool = False  # a mark was submitted: a row may exist


def mark_of(call: Tracked, request_sha256: bytes, now: int, instance_id: str = "") -> CallMark:
    """The call's mark now (owned by the gateway process instance `instance_id`)."""
    usage, (buyer, provider, instrument) = call.usage, call.group
    return CallMark(
        receipt_id=call.receipt_id, key_id=call.grant.key_id, buyer=buyer, provider=provider,
        instrument=instrument, endpoint_id=call.route.endpoint.endpoint_id, model=call.model,
        prompt_cap=call.plan.prompt_cap, completion_cap=call.plan.completion_cap,
        completion_weight=call.plan.completion_weight, started_ms=call.started_ms,
        request_sha256=request_sha256, chunks=call.chunks,
        prompt_tokens=None if usage is None else usage.prompt_tokens,
        completion_tokens=None if usage is None else usage.completion_tokens,
        cached_tokens=None if usage is None else usage.cached_tokens,
        reasoning_tokens=None if usage is None else usage.reasoning_tokens,
        response_sha256=call.response_hash.copy().digest(),
        marked_ms=max(now, call.started_ms), instance_id=instance_id,
    )  # fmt: skip


def crash_receipt(m: CallMark) -> GatewayReceipt:
    """The receipt of a call cut by a crash: the cut-call rule on its last mark (pure)."""
    plan = metering.Plan(m.prompt_cap, m.completion_cap, m.completion_weight)
    usage = None
    if m.prompt_tokens is not None and m.completion_tokens is not None:
        usage = metering.Usage(
            m.prompt_tokens, m.completion_tokens, m.cached_tokens or 0, m.reasoning_tokens or 0
        )
    charged = metering.charge(plan, usage, m.chunks)
    return GatewayReceipt(
        receipt_id=m.receipt_id, key_id=m.key_id, buyer=m.buyer, provider=m.provider,
        instrument=m.instrument, endpoint_id=m.endpoint_id, model=m.model,
        prompt_tokens=charged.prompt_tokens, completion_tokens=charged.completion_tokens,
        cached_tokens=charged.cached_tokens, reasoning_tokens=charged.reasoning_tokens,
        tokens=charged.tokens, started_ms=m.started_ms, ended_ms=m.marked_ms,
        request_sha256=m.request_sha256, response_sha256=m.response_sha256,
        ending=Ending.CRASH,
    )  # fmt: skip


class Progress:
    """The progress marks of streaming calls, once a period, with the meter's group commits
    (see the module). `wake`: asks the meter to flush (`Meter.wake`)."""

    def __init__(self, period_s: float, wake: Callable[[], None], instance_id: str = "") -> None:
        self.period_s = period_s
        #: written in every mark: this process owns these calls (`close_crashed`)
        self.instance_id = instance_id
        self._wake = wake
        self._calls: dict[str, _Entry] = {}
        self._task: asyncio.Task[None] | None = None
        #: The period has passed since the last op was taken; the op in flight.
        self._due_now = False
        self._in_flight: tuple[list[tuple[_Entry, State]], int] | None = None
        #: Progress ops committed, and the marks they carried (ops/bench, the log).
        self.commits = 0
        self.marks = 0

    def track(self, call: Tracked) -> None:
        """A streaming call has begun: mark it from the next period on."""
        request_sha256 = hashlib.sha256(call.request_bytes).digest()
        self._calls[call.receipt_id] = _Entry(call, request_sha256)

    def untrack(self, call: Tracked) -> bool:
        """The call ended: no more marks. Whether a mark of it was submitted (its receipt
        must then delete its row)."""
        entry = self._calls.pop(call.receipt_id, None)
        return entry is not None and entry.submitted

    def _due(self) -> list[_Entry]:
        due = [e for e in self._calls.values() if e.recorded != (e.call.chunks, e.call.usage)]
        if len(due) > MAX_MARKS:
            due.sort(key=lambda e: e.marked_ms)
            del due[MAX_MARKS:]
        return due

    def take(self) -> GatewayProgressOp | None:
        """The marks due, once a period and one op at a time (`meter.Rider`)."""
        if not self._due_now or self._in_flight is not None:
            return None
        due = self._due()
        if not due:
            return None
        self._due_now = False
        now = now_ms()
        self._in_flight = ([(e, (e.call.chunks, e.call.usage)) for e in due], now)
        marks = tuple(mark_of(e.call, e.request_sha256, now, self.instance_id) for e in due)
        for e in due:
            e.submitted = True
        return GatewayProgressOp(marks=marks)

    def taken(self, op: GatewayProgressOp, outcome: Outcome[int]) -> None:
        """The op is done: committed marks are recorded; failed ones are due again."""
        assert self._in_flight is not None
        states, at = self._in_flight
        self._in_flight = None
        if isinstance(outcome, Failed):
            log.warning("gateway progress of %d calls not recorded: %s",
                        len(op.marks), outcome.error)  # fmt: skip
            return
        for e, state in states:
            e.recorded, e.marked_ms = state, at
        self.commits += 1
        self.marks += len(op.marks)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self._due_now = True
            if self._in_flight is None and self._calls:
                self._wake()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-progress")

    async def close(self) -> None:
        """Stop marking (the calls still in flight are closed by their receipts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._due_now = False
        log.info("gateway progress: %d marks in %d commits", self.marks, self.commits)


_OPEN_CALLS = """
SELECT c.*, r.receipt_id IS NOT NULL AS receipted
  FROM gateway_calls c LEFT JOIN gateway_receipts r USING (receipt_id)
 WHERE $1::text IS NULL OR c.instance_id = $1
 ORDER BY c.started_ms, c.receipt_id
"""
_OWED = """
SELECT r.* FROM gateway_receipts_owed o JOIN gateway_receipts r USING (receipt_id)
 WHERE $1::text IS NULL OR o.instance_id = $1
 ORDER BY r.seq
"""
_MARK_FIELDS = CallMark.__struct_fields__


def _mark_of_row(row: asyncpg.Record) -> CallMark:
    values = {name: row[name] for name in _MARK_FIELDS}
    values["request_sha256"] = bytes(values["request_sha256"])
    values["response_sha256"] = bytes(values["response_sha256"])
    return CallMark(**values)


async def close_crashed(
    pool: asyncpg.Pool, meter: Meter, reservations: Reservations, instance_id: str | None = None
) -> list[asyncio.Future[None]]:
    """Close the calls a crash cut (see the module): file their receipts with the meter;
    the futures are done once they are committed (or failed: the meter retries).

    `instance_id` None: every open call (the whole exchange is starting, so no gateway
    process owns one); else only the calls of that gateway process instance, which is
    gone (`desk.DeskServer.gone`): never the calls of one still serving."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_OPEN_CALLS, instance_id)
        owed = [receipts.receipt_of(r) for r in await conn.fetch(_OWED, instance_id)]
        marks = [_mark_of_row(r) for r in rows if not r["receipted"]]
        keys = sorted({m.key_id for m in marks} | {r.key_id for r in owed})
        used = await receipts.tokens_used(conn, keys)
    # No await from here to the filing: the keys' counts read above stay exact.
    receipted = [r["receipt_id"] for r in rows if r["receipted"]]
    if receipted:
        meter.forget(receipted)
    futures = []
    for receipt in map(crash_receipt, marks):
        reservations.key_used.setdefault(receipt.key_id, used.get(receipt.key_id, 0))
        group = (receipt.buyer, receipt.provider, receipt.instrument)
        reservations.owed(group, receipt.key_id, receipt.tokens)
        futures.append(meter.charge(receipt, recorded=True, resubmitted=True))
    for receipt in owed:  # durable, but a crash cut its charge
        group = (receipt.buyer, receipt.provider, receipt.instrument)
        if instance_id is None:  # a start: the receipts loaded into the keys' use hold it
            reservations.key_used.setdefault(receipt.key_id, used.get(receipt.key_id, 0))
            reservations.charging(group, receipt.tokens)
        else:  # a gateway gone: the desk drops its calls' charges next (`DeskServer.gone`)
            reservations.owed(group, receipt.key_id, receipt.tokens)
        meter.owe(receipt)
    if owed:
        log.warning("gateway: %d receipts whose charge a crash cut charged now", len(owed))
    if rows:
        log.warning("gateway: %d calls cut by a crash closed by their last progress mark, "
                    "%d that had their receipt forgotten", len(marks), len(receipted))  # fmt: skip
    return futures
