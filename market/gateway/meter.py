"""The gateway's books in memory: reservations, and the charges on their way to the ledger.

`Reservations` keeps, per (buyer, provider, instrument), the tokens the gateway has
promised away: reserved by calls in flight, plus charged by finished calls whose
delivery has not committed yet. A call may use the ledger's entitlement less that, and
reserves before it is forwarded, in the same step of the event loop as the check, so
concurrent calls can never together overdraw the entitlement. Per key, it keeps the
tokens metered (loaded from the receipts once, then counted here) and reserved, against
the key's `token_budget`.

`Meter` takes a call's receipt to the ledger in two group commits. First the receipt
journal (`market.gateway.journal`): the receipts of calls ended in one turn of the event
loop are written in one commit of their own, at once if a writer is free (several commit
at a time), so a call's end waits for that one commit, never for the sequencer's batch in
flight. The call sends its last bytes (a stream's last events and `[DONE]`, or a whole
non-streamed body) only once its receipt is durable (`Meter.charge`). If that fails (503:
the database is unreachable), a stream gets an error in place of its tail (a non-streamed
body goes anyway, marked `x-tokex-charge: pending`), and the receipt is written again after
`flush_s` seconds (`TOKEX_GATEWAY_FLUSH_MS`, default 1 s), with the next receipts.
Then the charge: every receipt made durable meanwhile goes to the sequencer as one
`GatewayChargeOp` (at most `PIPELINE` ops in the sequencer however many calls end, so the
gateway never floods the sequencer's queue). Once it commits, the charged tokens are in
the ledger and leave the reservations; until then they stay promised away. A failed
charge is submitted again (the same op: its deliveries are idempotent by their ids) with
the next group, or after `flush_s` at the latest. After each charge the gateway reads
the charged groups' balances again (`on_commit`), so the next calls route on the
committed view without waiting for the next batch.
A receipt whose call's progress was recorded (`market.gateway.progress`) closes that
record with its charge (the op's `closes`). The progress marks of streaming calls ride
with the charges (`rider`: a `GatewayProgressOp` in the same `submit_all`, so in the same
sequencer batch), once per progress period: on a busy gateway they add no batch.

The reservations are the desk's (`market.gateway.desk`): in one process the meter
settles them itself when a charge commits; in a gateway process of `serve --workers N`
its charges go to the desk in the sequencer process (`desk_remote.DeskExchange`), which
settles them there, and this meter keeps none (`reservations` None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from market.sequencer import Sequencer
from market.sequencer.errors import SequencerStopped
from market.sequencer.ops import Failed, GatewayChargeOp, GatewayProgressOp, Op, Outcome
from schemas.errors import DomainError
from schemas.gateway import GatewayReceipt

log = logging.getLogger(__name__)

Group = tuple[str, str, str]  # (buyer, provider, instrument)
K = TypeVar("K")
S = TypeVar("S")


class Reservations:
    def __init__(self) -> None:
        self.outstanding: dict[Group, int] = {}
        self.key_used: dict[str, int] = {}
        self.key_reserved: dict[str, int] = {}

    def left(self, group: Group, held: int) -> int:
        return held - self.outstanding.get(group, 0)

    def key_left(self, key_id: str, budget: int | None) -> int | None:
        if budget is None:
            return None
        return budget - self.key_used.get(key_id, 0) - self.key_reserved.get(key_id, 0)

    def reserve(self, group: Group, key_id: str, tokens: int) -> None:
        self.outstanding[group] = self.outstanding.get(group, 0) + tokens
        self.key_reserved[key_id] = self.key_reserved.get(key_id, 0) + tokens

    def finish(self, group: Group, key_id: str, reserved: int, charged: int) -> None:
        """A call ended: release what it reserved beyond its charge."""
        self._take(self.outstanding, group, reserved - charged)
        self._take(self.key_reserved, key_id, reserved)
        self.key_used[key_id] = self.key_used.get(key_id, 0) + charged

    def owed(self, group: Group, key_id: str, tokens: int) -> None:
        """A charge filed for a call of an earlier process (one cut by a crash): promised
        away until it commits, and metered against its key (whose count must be loaded)."""
        self.outstanding[group] = self.outstanding.get(group, 0) + tokens
        self.key_used[key_id] = self.key_used.get(key_id, 0) + tokens

    def charging(self, group: Group, tokens: int) -> None:
        """A durable receipt whose charge a crash cut (found at a start): promised away
        until it commits (its key's use counts it already: it is in the receipts)."""
        self.outstanding[group] = self.outstanding.get(group, 0) + tokens

    def reserved(self, buyer: str, provider: str, instrument: str) -> int:
        """What is promised away of this entitlement (the sequencer's reports and vouchers
        may not use it: `market.sequencer.batch.Reserved`)."""
        return self.outstanding.get((buyer, provider, instrument), 0)

    def delivering(self, instrument: str) -> bool:
        """Whether any call on `instrument` is in flight or has its charge on the way
        (the sequencer's settlement of it waits: `Sequencer.delivering`)."""
        return any(group[2] == instrument for group in self.outstanding)

    def settled(self, group: Group, tokens: int) -> None:
        """A charge committed (or was refused): the ledger's balance now says it."""
        self._take(self.outstanding, group, tokens)

    @staticmethod
    def _take(counts: dict[K, int], key: K, tokens: int) -> None:
        left = counts.get(key, 0) - tokens
        if left:
            counts[key] = left
        else:
            counts.pop(key, None)


#: Where the gateway finds the running sequencer: read at every use, because after a
#: database outage the exchange reopens with a new one (`ops.exchange`), and None while
#: it does.
SequencerSource = Callable[[], Sequencer | None]


def current(source: Callable[[], S | None]) -> S:
    """The running sequencer, or 503 `sequencer_stopped` while the exchange reopens."""
    sequencer = source()
    if sequencer is None:
        raise SequencerStopped("the exchange is reopening; try again")
    return sequencer


class Committer(Protocol):
    """What the meter submits its charges to: the sequencer, or (in a gateway process)
    the desk in the sequencer process (`desk_remote.DeskExchange`)."""

    async def submit_all(self, ops: Sequence[Op[Any]]) -> list[Outcome[Any]]: ...


CommitterSource = Callable[[], Committer | None]


#: Charges the meter has in the sequencer at once. One: the receipts journaled while a
#: charge commits go together in the next one, so however many calls end, the sequencer
#: gets one op per commit. (No call waits for a charge: its end waits for its receipt's
#: journal commit only.)
PIPELINE = 1

#: What writes receipts durably (`journal.ReceiptJournal.write` of this process, or the
#: sequencer process's over NATS: `desk_remote.DeskExchange.journal`).
JournalWrite = Callable[[Sequence[GatewayReceipt]], Awaitable[None]]


class Rider(Protocol):
    """Ops that ride with the meter's group commits (`progress.Progress`)."""

    def take(self) -> GatewayProgressOp | None:
        """The op to submit with this flush, if one is due."""

    def taken(self, op: GatewayProgressOp, outcome: Outcome[int]) -> None:
        """How it went."""


@dataclass(slots=True)
class _Filed:
    """A receipt on its way to the journal: who waits for it, and whether its call's
    progress row closes with its charge."""

    receipt: GatewayReceipt
    future: asyncio.Future[None] | None
    recorded: bool
    resubmitted: bool
    #: every writer was busy when it was filed: it waits for one commit more
    queued: bool


class Meter:
    """A call's receipt made durable, then charged: two group commits in a row.

    `charge(receipt)` files it with the receipt journal (`journal`): the receipts filed in
    one turn of the event loop go together in one journal commit, started at once if one
    of the `writers` is free (else when one is: the next commit takes every receipt
    filed meanwhile). Its future is done once the receipt is durable (or failed with the
    journal's error: the call then sends the buyer an error in place of its tail, and the
    receipt is written again after `flush_s`). So a call waits at its end for one commit,
    its receipt's, never for the sequencer's batch in flight.

    A durable receipt's charge goes to the sequencer (`GatewayChargeOp`), with every other
    receipt journaled meanwhile: at most `PIPELINE` charges are in the sequencer at a
    time, so the sequencer gets one op per commit. A charge that failed is kept and
    submitted again (the same op: its deliveries are idempotent by their ids) with the
    next group, and at least every `flush_s` seconds while none comes. Until its charge
    commits, a receipt's tokens stay promised away in the reservations.
    """

    def __init__(
        self, sequencer: CommitterSource, reservations: Reservations | None, flush_s: float,
        journal: JournalWrite, writers: int = 1,
    ) -> None:  # fmt: skip
        self._sequencer = sequencer
        self._reservations = reservations
        self.flush_s = flush_s
        self._journal = journal
        self._writers = max(1, writers)
        self._filed: list[_Filed] = []
        self._rejournal: list[_Filed] = []  # failed: written again with the next write
        self._writing = 0
        self._write_soon: asyncio.Handle | None = None
        self._writes: set[asyncio.Task[None]] = set()
        #: durable receipts whose charge is due, and receipt ids whose progress rows the
        #: next charge deletes (`GatewayChargeOp.closes`)
        self._pending: list[GatewayReceipt] = []
        self._closes: list[str] = []
        self._retry: list[GatewayChargeOp] = []
        #: a pending receipt may have been submitted before (`GatewayChargeOp.resubmitted`)
        self._resubmitted = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(PIPELINE)
        self._flushing: set[asyncio.Task[None]] = set()
        #: called with the groups of each charge that committed (the gateway refreshes
        #: its view of their balances as of that commit)
        self.on_commit: Callable[[set[Group]], None] | None = None
        self.rider: Rider | None = None
        self.charges = 0
        self.charge_s = 0.0  # time spent in them
        self.journaled = 0  # journal commits
        self.journal_s = 0.0
        #: per receipt made durable: how many journal commits its call waited for at its
        #: end (1: its own; 2: every writer was busy, so one of theirs too) -> receipts
        self.waited: dict[int, int] = {}

    def add(self, receipt: GatewayReceipt, *, recorded: bool = False) -> None:
        """File a receipt nobody waits for (its buyer is gone). `recorded`: the call's
        progress may be in `gateway_calls`, and the receipt's charge deletes it."""
        self._file(receipt, None, recorded, False)

    def charge(
        self, receipt: GatewayReceipt, *, recorded: bool = False, resubmitted: bool = False
    ) -> asyncio.Future[None]:
        """File a receipt; the future is done once it is durable (or failed).
        `resubmitted`: it may have been submitted before (a call a crash cut, closed at a
        restart): its charge looks its delivery up first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._file(receipt, future, recorded, resubmitted)
        return future

    def owe(self, receipt: GatewayReceipt) -> None:
        """Charge a receipt that is durable already (journaled before a crash cut its
        charge: `progress.close_crashed`); it may have been charged after all."""
        self._pending.append(receipt)
        self._resubmitted = True
        self._wake.set()

    def forget(self, receipt_ids: Sequence[str]) -> None:
        """Delete these calls' progress rows with the next commit (their receipts are
        committed already: rows a restart found)."""
        self._closes.extend(receipt_ids)
        self._wake.set()

    def _file(
        self, receipt: GatewayReceipt, future: asyncio.Future[None] | None, recorded: bool,
        resubmitted: bool,
    ) -> None:  # fmt: skip
        queued = self._writing >= self._writers
        self._filed.append(_Filed(receipt, future, recorded, resubmitted, queued))
        if self._write_soon is None:  # those filed in this turn of the loop go together
            self._write_soon = asyncio.get_running_loop().call_soon(self._start_writes)

    def _take_filed(self) -> list[_Filed]:
        """Everything waiting for the journal (failed writes first), for one write."""
        filed, self._filed, self._rejournal = [*self._rejournal, *self._filed], [], []
        self._writing += 1
        return filed

    def _start_writes(self) -> None:
        self._write_soon = None
        if (self._filed or self._rejournal) and self._writing < self._writers:
            task = asyncio.create_task(self._write(self._take_filed()), name="gateway-journal")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, filed: list[_Filed]) -> None:
        began = time.perf_counter()
        try:
            await self._journal([f.receipt for f in filed])
        except Exception as exc:
            self._not_journaled(filed, exc)
        else:
            self.journaled += 1
            self.journal_s += time.perf_counter() - began
            self._journaled(filed)
        finally:
            self._writing -= 1
            # New receipts only: a failed write is tried again after `flush_s`, not at once.
            if self._filed and self._write_soon is None:
                self._write_soon = asyncio.get_running_loop().call_soon(self._start_writes)

    def _journaled(self, filed: list[_Filed]) -> None:
        """Durable: the calls may end; their charges are due."""
        for f in filed:
            if f.future is not None and not f.future.done():
                waited = 2 if f.queued else 1
                self.waited[waited] = self.waited.get(waited, 0) + 1
                f.future.set_result(None)
            self._pending.append(f.receipt)
            if f.recorded:
                self._closes.append(f.receipt.receipt_id)
            self._resubmitted |= f.resubmitted
        self._wake.set()

    def _not_journaled(self, filed: list[_Filed], exc: Exception) -> None:
        """Not durable: the waiting calls hear why; written again after `flush_s`."""
        if isinstance(exc, DomainError):
            log.warning("gateway receipts of %d calls not journaled: %s", len(filed), exc)
            error: Exception = exc
        else:  # a bug: keep metering, say so
            log.error("gateway journal write failed", exc_info=exc)
            error = SequencerStopped("the receipt could not be made durable now; try again")
        for f in filed:
            if f.future is not None and not f.future.done():
                f.future.set_exception(error)
            f.future = None
        self._rejournal.extend(filed)
        asyncio.get_running_loop().call_later(self.flush_s, self._retry_writes)

    def _retry_writes(self) -> None:
        if self._rejournal and self._write_soon is None:
            self._write_soon = asyncio.get_running_loop().call_soon(self._start_writes)

    async def written(self) -> None:
        """Wait until every receipt filed so far has been through a journal write."""
        while self._filed or self._writes:
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)
            else:
                await asyncio.sleep(0)  # the write starts at the end of this turn

    def wake(self) -> None:
        """Flush now (or right after the flush in flight): a rider has an op due."""
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Receipts (and progress rows to delete) not yet durable or not yet charged."""
        retrying = sum(len(op.receipts) + len(op.closes) for op in self._retry)
        journal = len(self._filed) + len(self._rejournal)
        return journal + len(self._pending) + len(self._closes) + retrying

    async def flush(self) -> None:
        """Submit what failed before and what is pending, together (one sequencer batch)."""
        async with self._slots:
            await self._flush()

    async def _flush(self) -> None:
        pending, closes = self._pending, self._closes
        self._pending, self._closes = [], []
        resubmitted, self._resubmitted = self._resubmitted, False
        ops, self._retry = self._retry, []
        if pending or closes:
            ops.append(GatewayChargeOp(tuple(pending), tuple(closes), resubmitted))
        ride = self.rider.take() if self.rider is not None else None
        if not ops and ride is None:
            return
        began = time.perf_counter()
        outcomes = await self._submit([*([ride] if ride is not None else []), *ops])
        committed: set[Group] = set()
        if ride is not None:
            first, outcomes = outcomes[0], outcomes[1:]
            committed |= self._rode(ride, first)
        if ops:
            self.charge_s += time.perf_counter() - began
            committed |= self._charged(ops, outcomes)
            self.charges += 1
        if committed and self.on_commit is not None:
            self.on_commit(committed)

    async def _submit(self, ops: list[Op[Any]]) -> list[Outcome[Any]]:
        try:
            return await current(self._sequencer).submit_all(ops)
        except DomainError as exc:  # nothing queued: the queue is full, or it reopens
            return [Failed(exc) for _ in ops]

    def _rode(self, ride: GatewayProgressOp, outcome: Outcome[Any]) -> set[Group]:
        """The rider's op is done: tell it; the groups whose view to read again."""
        if self.rider is not None:
            self.rider.taken(ride, outcome)
        if isinstance(outcome, Failed):
            return set()
        return {(m.buyer, m.provider, m.instrument) for m in ride.marks}

    def _charged(
        self, ops: Sequence[GatewayChargeOp], outcomes: Sequence[Outcome[Any]]
    ) -> set[Group]:
        """The charges are done: settle those committed, keep the others to retry."""
        committed: set[Group] = set()
        for op, outcome in zip(ops, outcomes, strict=True):
            if isinstance(outcome, Failed):
                log.warning("gateway charge of %d calls not committed: %s",
                            len(op.receipts), outcome.error)  # fmt: skip
                self._retry.append(replace(op, resubmitted=True))  # it may have committed
            else:
                self._settle(op.receipts)
                committed.update((r.buyer, r.provider, r.instrument) for r in op.receipts)
        return committed

    async def _flush_in(self) -> None:
        """One flush in a slot taken by `_run` (released when it is done)."""
        try:
            await self._flush()
        except Exception:  # a bug: keep metering, say so
            log.exception("gateway flush failed")
        finally:
            self._slots.release()

    def _settle(self, receipts: Sequence[GatewayReceipt]) -> None:
        if self._reservations is None:
            return  # the desk settles them where it is (a gateway process)
        for r in receipts:
            self._reservations.settled((r.buyer, r.provider, r.instrument), r.tokens)

    async def _run(self) -> None:
        while True:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_s)
            await self._slots.acquire()
            self._wake.clear()  # what is pending now goes with this flush
            task = asyncio.create_task(self._flush_in(), name="gateway-charge")
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-meter")

    async def close(self, attempts: int = 3) -> None:
        """Stop the flusher; flush what is left (a few tries)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        for _ in range(attempts):
            if self._writes:
                await asyncio.gather(*self._writes, return_exceptions=True)
            if self._filed or self._rejournal:  # what is filed goes now, in one write
                await self._write(self._take_filed())
            await self.flush()
            if not self.backlog:
                break
        else:
            log.error("gateway: %d metered calls not charged at shutdown", self.backlog)
        log.info("gateway meter: %d journal commits; receipts by commits waited for: %s; "
                 "%.1f ms a commit; %d charge commits, %.1f ms a commit", self.journaled,
                 dict(sorted(self.waited.items())),
                 self.journal_s * 1000 / max(1, self.journaled), self.charges,
                 self.charge_s * 1000 / max(1, self.charges))  # fmt: skip
