"""The receipt journal: a metered call's receipt made durable at the call's end, in a
commit of its own, before the sequencer charges it.

Why apart from the sequencer's batches: a receipt must be durable before the call's last
byte goes to the buyer, and the ledger commits one batch at a time, in order. Carried by
the ledger's batch, a receipt filed while a batch commits waits for the rest of that
commit and then for its own: two commits added at the end of most calls under load
(measured: two thirds of them). Here several commits may be in flight at once
(`TOKEX_RECEIPT_WRITERS`, a connection each), none depending on another (a receipt is an
append-only row that no other row of the journal needs), so a receipt filed while one
commits starts its own at once: one commit added at the end of a call, unless every
writer is busy (counted: `Meter.waited`).

What a journal commit writes, in one statement: the receipts (`gateway_receipts`, as the
sequencer's delivery would: append-only, `ON CONFLICT DO NOTHING`, so writing one again
after an unknown outcome is harmless) and a row each in `gateway_receipts_owed` naming
the gateway process instance whose meter charges it. The meter then submits the charge
(`GatewayChargeOp`) as before: the sequencer's batch writes the delivery transaction and
its links to the receipts and deletes the owed rows. The balances change only there, in
the sequencer, in order; the journal changes no balance and no book. A crash between the
two leaves owed rows: at the next start (or when a gateway process is gone, for its
instance's), they are charged (`progress.close_crashed`), once: a delivery already
committed is recognised by its id.

The journal lives where the sequencer does (one process, or the sequencer process of
`serve --workers N`, which a gateway process reaches over NATS: `desk_remote`), on
connections of that process's pool (`ops.database.open_pool`: cut with the others when
the database is lost; a write on a dead one is made on a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from ledger.errors import LedgerUnavailable
from ledger.rows import BatchRows
from market.sequencer.calls import OWED_TABLE
from market.sequencer.delivery import RECEIPT_COLUMNS, receipt_record
from schemas.gateway import GatewayReceipt

#: Journal commits in flight at once (a connection each), unless set. With 4, a call in 12
#: to 20 found all busy at 1,500-3,000 calls/s on 2 cores; with 8, one in 1,000.
WRITERS = 8
#: How long a journal commit may take before the calls waiting for it are told it failed
#: (it is retried; a commit that went through after all is written again harmlessly).
WRITE_TIMEOUT_S = 10.0

OWED_COLUMNS = ("receipt_id", "instance_id")


class ReceiptJournal:
    """Writes receipts durably, each `write` one commit on a connection of its own, taken
    from `pool` and kept between writes, at most `writers` at once (a write beyond waits
    for one: the sequencer process's journal takes every gateway process's writes, and
    the pool's other users keep the rest of its connections). Kept, not given back
    after each write: the pool's release resets a connection with a query of its own, a
    second round trip a write."""

    def __init__(
        self, pool: asyncpg.Pool, writers: int = WRITERS, timeout_s: float = WRITE_TIMEOUT_S
    ) -> None:
        self._pool = pool
        self._slots = asyncio.Semaphore(writers)
        self._timeout_s = timeout_s
        self._idle: list[asyncpg.Connection] = []

    async def write(self, receipts: Sequence[GatewayReceipt], instance_id: str) -> None:
        """Commit `receipts` (and their owed rows, of `instance_id`); 503
        `ledger_unavailable` if that cannot be done now."""
        if not receipts:
            return
        rows = BatchRows()
        records = [receipt_record(r, None) for r in receipts]  # the charge links them
        rows.insert("gateway_receipts", RECEIPT_COLUMNS, records,
                    on_conflict="ON CONFLICT (receipt_id) DO NOTHING")  # fmt: skip
        rows.insert(OWED_TABLE, OWED_COLUMNS, [(r.receipt_id, instance_id) for r in receipts],
                    on_conflict="ON CONFLICT (receipt_id) DO NOTHING")  # fmt: skip
        try:
            async with asyncio.timeout(self._timeout_s), self._slots:
                await self._execute(rows)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise LedgerUnavailable(
                f"the receipts could not be made durable now ({type(exc).__name__})"
            ) from None

    async def _execute(self, rows: BatchRows) -> None:
        """On a kept connection, or a new one if a kept one turns out dead (the database
        restarted, or the supervisor cut it): once, so a healed database takes the write."""
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else await self._pool.acquire()
            try:
                await rows.execute(conn)  # one statement: its own commit, all or nothing
            except BaseException as exc:
                await self._give_back(conn)
                dead = isinstance(exc, asyncpg.InterfaceError | ConnectionError | OSError)
                if attempt == 1 and dead and not isinstance(exc, TimeoutError):
                    continue
                raise
            self._idle.append(conn)
            return

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.release(conn), 1.0)

    async def close(self) -> None:
        """Give the kept connections back to the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._give_back(conn)

    def bound(self, instance_id: str) -> Callable[[Sequence[GatewayReceipt]], Awaitable[None]]:
        """`write` for the meter of the gateway process instance `instance_id`."""

        async def write(receipts: Sequence[GatewayReceipt]) -> None:
            await self.write(receipts, instance_id)

        return write
