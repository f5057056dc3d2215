"""The gateway's books in memory: reservations, and the charges on their way to the ledger.

`Reservations` keeps, per (buyer, provider, instrument), the tokens the gateway has
promised away: reserved by calls in flight, plus charged by finished calls whose
delivery has not committed yet. A call may use the ledger's entitlement less that, and
reserves before it is forwarded, in the same step of the event loop as the check, so
concurrent calls can never together overdraw the entitlement. Per key, it keeps the
tokens metered (loaded from the receipts once, then counted here) and reserved, against
the key's `token_budget`.

`Meter` collects the receipts of finished calls and, every `flush_s` seconds (at least
once a second by default, `TOKEX_GATEWAY_FLUSH_MS`), submits them to the sequencer as one
`GatewayChargeOp`: one op a flush, however many calls, so the gateway never floods nor
blocks the sequencer's queue. Once it commits, the charged tokens are in the ledger and
leave the reservations. If it fails (503: the batch did not commit), the same op is
submitted again at the next flush (its deliveries are idempotent by their ids).

Served by one process: a second server process would need the reservations shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from market.sequencer import Sequencer
from market.sequencer.errors import SequencerStopped
from market.sequencer.ops import GatewayChargeOp
from schemas.errors import DomainError
from schemas.gateway import GatewayReceipt

log = logging.getLogger(__name__)

Group = tuple[str, str, str]  # (buyer, provider, instrument)
K = TypeVar("K")


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


def current(source: SequencerSource) -> Sequencer:
    """The running sequencer, or 503 `sequencer_stopped` while the exchange reopens."""
    sequencer = source()
    if sequencer is None:
        raise SequencerStopped("the exchange is reopening; try again")
    return sequencer


class Meter:
    def __init__(
        self, sequencer: SequencerSource, reservations: Reservations, flush_s: float
    ) -> None:
        self._sequencer = sequencer
        self._reservations = reservations
        self.flush_s = flush_s
        self._pending: list[GatewayReceipt] = []
        self._retry: GatewayChargeOp | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(self, receipt: GatewayReceipt) -> None:
        self._pending.append(receipt)

    @property
    def backlog(self) -> int:
        """Receipts not yet committed."""
        return len(self._pending) + (len(self._retry.receipts) if self._retry else 0)

    async def flush(self) -> None:
        """Submit what is pending (after a failed op, that op again first)."""
        async with self._lock:
            if self._retry is None and self._pending:
                self._retry = GatewayChargeOp(receipts=tuple(self._pending))
                self._pending = []
            op = self._retry
            if op is None:
                return
            try:
                await current(self._sequencer).submit(op)
            except DomainError as exc:
                log.warning("gateway charge of %d calls not committed: %s", len(op.receipts), exc)
                return
            self._retry = None
            self._settle(op.receipts)

    def _settle(self, receipts: Sequence[GatewayReceipt]) -> None:
        for r in receipts:
            self._reservations.settled((r.buyer, r.provider, r.instrument), r.tokens)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # a bug: keep metering, say so
                log.exception("gateway flush failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-meter")

    async def close(self, attempts: int = 3) -> None:
        """Stop flushing periodically; flush what is left (a few tries)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in range(attempts):
            await self.flush()
            if not self.backlog:
                return
        log.error("gateway: %d metered calls not charged at shutdown", self.backlog)
