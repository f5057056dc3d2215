"""The sequencer's batches in flight: staged in memory, their commit not done yet.

With a depth of D, up to D batches are in flight: while batch N's statement commits,
batch N+1 is staged on top of N's state in memory (the engine's books, the live
orders, the ledger's balances all run ahead of the database). Commits run one at a
time in the order staged (`ledger.writer.Ledger.staged`); each batch's answers and
market data go out when its own commit is done, strictly in that order (each
finisher waits for the one before it).

If a batch fails (its staging or its commit), every batch staged after it fails too
(the ledger refuses their statements: their state stood on the failed one), and once
nothing is in flight the sequencer rebuilds its memory from the database, then
answers them all `ledger_unavailable` (503). Nothing unacknowledged is ever visible:
readers of memory (`Sequencer.committed`) wait until nothing is in flight, and a
waiting reader stops the pipeline from staging further ahead until it has read.

Only trading commands (and the gateway's progress marks) are staged ahead (`PIPELINED`):
others look up their caller-chosen ids in the database, which has not seen the batches
in flight, so a batch holding one waits for the pipeline to empty first. A batch that settled an
instrument makes the next wait for its commit (its books are reduced then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from market.sequencer.batch import Batch, Key
from market.sequencer.ops import (
    AmendOp,
    AnyOp,
    CancelAfterOp,
    CancelAllOp,
    CancelOp,
    GatewayProgressOp,
    Outcome,
    PlaceOp,
    TickOp,
)
from market.store import OrderRow

#: Batches in flight by default (`TOKEX_PIPELINE_DEPTH`): 1 is strictly serial.
PIPELINE_DEPTH = 2

#: Commands a batch may hold and still be staged while earlier batches commit (the
#: gateway's progress marks read nothing: they only replace rows of calls in flight).
PIPELINED = (PlaceOp, CancelOp, AmendOp, CancelAllOp, CancelAfterOp, TickOp, GatewayProgressOp)


@dataclass(slots=True)
class Flight:
    """One batch in flight: its tickets and, once staged, its outcomes and commit."""

    tickets: Sequence[Any]
    batch: Batch | None = None
    outcomes: list[Outcome[Any]] | None = None
    commit: asyncio.Future[None] | None = None
    #: Why it failed (staging or commit); `rebuild`: whether memory must be rebuilt.
    error: Exception | None = None
    rebuild: bool = False
    #: For its log lines and metrics: its number, its requests' ids, when it was staged.
    number: int = 0
    request_ids: list[str] = field(default_factory=list)
    started: float = 0.0


@dataclass(slots=True)
class Pipeline:
    """Bookkeeping of the batches in flight (`Sequencer` owns one)."""

    depth: int = PIPELINE_DEPTH
    flights: list[Flight] = field(default_factory=list)
    #: Set while nothing is in flight (memory holds only committed state).
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: Readers waiting for `idle`: while there are, nothing more is staged ahead.
    readers: int = 0
    #: The last batch asks the next one to wait for its commit (it settled instruments).
    quiet: bool = False
    #: Failed batches waiting for the rebuild (the first one's error answers them all).
    failed: list[Flight] = field(default_factory=list)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    _last: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError("the pipeline holds at least one batch")
        self.idle.set()
        self._room.set()

    @property
    def broken(self) -> bool:
        return bool(self.failed)

    async def room(self) -> None:
        """Until fewer than `depth` batches are in flight."""
        while len(self.flights) >= self.depth:
            self._room.clear()
            await self._room.wait()

    def must_drain(self, ops: Sequence[AnyOp]) -> bool:
        """Whether the next batch must wait until nothing is in flight."""
        return (
            self.readers > 0 or self.quiet or self.broken
            or not all(isinstance(op, PIPELINED) for op in ops)
        )  # fmt: skip

    async def drain(self) -> None:
        """Until nothing is in flight (failed batches answered, memory rebuilt)."""
        await self.idle.wait()

    def begin(self, tickets: Sequence[Any]) -> Flight:
        """A batch starts staging: it is in flight from now on."""
        flight = Flight(tickets)
        self.flights.append(flight)
        self.idle.clear()
        return flight

    def placed_ahead(self) -> list[dict[Key, OrderRow]]:
        """The orders placed by the batches in flight, by (account, client order id): the
        database does not have them yet. Take this before reading the database."""
        return [f.batch.placed for f in self.flights if f.batch is not None]

    def launch(self, flight: Flight, finish: Callable[[Flight], Any]) -> None:
        """Finish `flight` (`finish(flight)`: await its commit, answer) after the one
        launched before it."""
        before = self._last

        async def finisher() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])
            await finish(flight)

        self._last = asyncio.create_task(finisher(), name="sequencer-commit")

    def last_in_flight(self, flight: Flight) -> bool:
        """Whether `flight` is the only batch in flight (memory holds nothing beyond it)."""
        return self.flights == [flight]

    def end(self, flight: Flight) -> None:
        """`flight` is answered: out of the pipeline."""
        self.flights.remove(flight)
        self._room.set()

    async def finished(self) -> None:
        """Until the last launched batch is finished (for closing)."""
        if self._last is not None and not self._last.done():
            await asyncio.wait([self._last])


def request_ids_of(tickets: Sequence[Any]) -> list[str]:
    """The distinct request ids of a batch's ops (its tickets'), in queue order."""
    return list(dict.fromkeys(t.request_id for t in tickets if t.request_id is not None))


def log_batch(
    log: logging.Logger, event: str, number: int, request_ids: list[str], **fields: object
) -> None:
    """One structured line of a batch (`batch`, `commit`, `batch_failed`) naming the
    requests whose ops it holds, so that a grep for a request id finds its batch. A
    batch of the clock alone (no request) is logged at debug level."""
    level = logging.INFO if request_ids else logging.DEBUG
    if log.isEnabledFor(level):
        log.log(level, event, extra={"batch": number, "request_ids": request_ids, **fields})
