"""The gateway's books in memory: reservations, and the charges on their way to the ledger.

`Reservations` keeps, per (buyer, provider, instrument), the tokens the gateway has
promised away: reserved by calls in flight, plus charged by finished calls whose
delivery has not committed yet. A call may use the ledger's entitlement less that, and
reserves before it is forwarded, in the same step of the event loop as the check, so
concurrent calls can never together overdraw the entitlement. Per key, it keeps the
tokens metered (loaded from the receipts once, then counted here) and reserved, against
the key's `token_budget`.

`Meter` is the receipts' group commit: a call's receipt goes to the sequencer at once,
with every receipt filed meanwhile, as one `GatewayChargeOp` (at most `PIPELINE` ops in
the sequencer however many calls end, so the gateway never floods the sequencer's queue).
After each commit the gateway reads the charged groups' balances again (`on_commit`), so
the next calls route on the committed view without waiting for the next batch.
The call sends its last bytes (a stream's last events and `[DONE]`, or a whole
non-streamed body) only once its receipt's commit is done (`Meter.charge`). Once it
commits, the charged tokens are in the ledger and leave the reservations. If it fails
(503: the batch did not commit), a stream gets an error in place of its tail (a
non-streamed body goes anyway, marked `x-tokex-charge: pending`), and the same op is
submitted again with the next group, or after `flush_s` seconds at the latest
(`TOKEX_GATEWAY_FLUSH_MS`, default 1 s): its deliveries are idempotent by their ids.
A receipt whose call's progress was recorded (`market.gateway.progress`) closes that
record in the same commit (the op's `closes`). The progress marks of streaming calls ride
with these group commits (`rider`: a `GatewayProgressOp` in the same `submit_all`, so in
the same sequencer batch), once per progress period: on a busy gateway they add no batch.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
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

#: `Meter.waited` counts receipts that waited for this many batches or more under this key.
WAITED_MAX = 10


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

    @property
    def commits(self) -> int:
        """Batches committed so far (to count how many a receipt waited for)."""

    async def submit_all(self, ops: Sequence[Op[Any]]) -> list[Outcome[Any]]: ...


CommitterSource = Callable[[], Committer | None]


#: Charges the meter has in the sequencer at once. One: a receipt filed while a charge
#: commits goes into the very next one, started the moment that one ends, so a call
#: waits at its end for the rest of the commit in flight and its own, never more. (With
#: two, one committing and the next queued, the sequencer never waits for the meter, but
#: a receipt may wait behind the queued one too: a third batch, measured 2026-12-02.)
PIPELINE = 1


class Rider(Protocol):
    """Ops that ride with the meter's group commits (`progress.Progress`)."""

    def take(self) -> GatewayProgressOp | None:
        """The op to submit with this flush, if one is due."""

    def taken(self, op: GatewayProgressOp, outcome: Outcome[int]) -> None:
        """How it went."""


class Meter:
    """Group commit of receipts: a receipt goes to the sequencer at once, with every other
    receipt filed meanwhile, as one `GatewayChargeOp`.

    At most `PIPELINE` charges are in the sequencer at a time: receipts filed while one
    commits wait for it and go together in the next one (the group commit), so however
    many calls end, the sequencer gets one op per commit, and a call waits at its end for
    at most the rest of the commit in flight and its own. `charge(receipt)` returns a future
    that is done once the receipt is durable (or failed with the sequencer's error: the
    call then sends the buyer an error in place of its tail). A charge that failed is
    kept and submitted again (the same op: its deliveries are idempotent by their ids)
    with the next group, and at least every `flush_s` seconds while none comes.
    """

    def __init__(
        self, sequencer: CommitterSource, reservations: Reservations | None, flush_s: float
    ) -> None:
        self._sequencer = sequencer
        self._reservations = reservations
        self.flush_s = flush_s
        self._pending: list[GatewayReceipt] = []
        #: receipt ids whose progress rows the next op deletes (`GatewayChargeOp.closes`)
        self._closes: list[str] = []
        #: per pending receipt: its future (None: nobody waits) and the sequencer's
        #: commit count when it was filed
        self._waiting: list[tuple[asyncio.Future[None] | None, int]] = []
        self._retry: list[GatewayChargeOp] = []
        #: a pending receipt may have been submitted before (`GatewayChargeOp.resubmitted`)
        self._resubmitted = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(PIPELINE)
        self._flushing: set[asyncio.Task[None]] = set()
        #: Group commits done, and per receipt waited for: how many sequencer batches
        #: committed between its filing and its commit -> how many receipts (ops/bench).
        #: called with the groups of each charge that committed (the gateway refreshes
        #: its view of their balances as of that commit)
        self.on_commit: Callable[[set[Group]], None] | None = None
        self.rider: Rider | None = None
        self.charges = 0
        self.charge_s = 0.0  # time spent in them
        self.waited: dict[int, int] = {}

    def add(self, receipt: GatewayReceipt, *, recorded: bool = False) -> None:
        """File a receipt nobody waits for (its buyer is gone). `recorded`: the call's
        progress may be in `gateway_calls`, and the receipt's commit deletes it."""
        self._file(receipt, None, recorded)

    def charge(
        self, receipt: GatewayReceipt, *, recorded: bool = False, resubmitted: bool = False
    ) -> asyncio.Future[None]:
        """File a receipt; the future is done once it is committed (or failed).
        `resubmitted`: it may have been submitted before (a call a crash cut, closed at a
        restart): its charge looks its delivery up first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._file(receipt, future, recorded)
        self._resubmitted |= resubmitted
        return future

    def forget(self, receipt_ids: Sequence[str]) -> None:
        """Delete these calls' progress rows with the next commit (their receipts are
        committed already: rows a restart found)."""
        self._closes.extend(receipt_ids)
        self._wake.set()

    def _file(
        self, receipt: GatewayReceipt, future: asyncio.Future[None] | None, recorded: bool
    ) -> None:
        sequencer = self._sequencer()
        self._pending.append(receipt)
        if recorded:
            self._closes.append(receipt.receipt_id)
        self._waiting.append((future, sequencer.commits if sequencer is not None else 0))
        self._wake.set()

    def wake(self) -> None:
        """Flush now (or right after the flush in flight): a rider has an op due."""
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Receipts (and progress rows to delete) not yet committed."""
        retrying = sum(len(op.receipts) + len(op.closes) for op in self._retry)
        return len(self._pending) + len(self._closes) + retrying

    async def flush(self) -> None:
        """Submit what failed before and what is pending, together (one sequencer batch)."""
        async with self._slots:
            await self._flush()

    async def _flush(self) -> None:
        pending, waiting, closes = self._pending, self._waiting, self._closes
        self._pending, self._waiting, self._closes = [], [], []
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
        if pending:
            self._answer(waiting, outcomes[-1])

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

    def _answer(
        self, waiting: list[tuple[asyncio.Future[None] | None, int]], outcome: object
    ) -> None:
        failed = outcome.error if isinstance(outcome, Failed) else None
        sequencer = self._sequencer()
        now = sequencer.commits if sequencer is not None else 0
        for future, filed in waiting:
            if failed is None:
                waited = min(max(1, now - filed), WAITED_MAX)
                self.waited[waited] = self.waited.get(waited, 0) + 1
            if future is None or future.done():
                continue
            if failed is None:
                future.set_result(None)
            else:
                future.set_exception(failed)

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
            await self.flush()
            if not self.backlog:
                break
        else:
            log.error("gateway: %d metered calls not charged at shutdown", self.backlog)
        log.info("gateway meter: %d group commits; receipts by batches waited for: %s; "
                 "%.1f ms a commit", self.charges, dict(sorted(self.waited.items())),
                 self.charge_s * 1000 / max(1, self.charges))  # fmt: skip
