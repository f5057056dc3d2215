"""Watching the database of a running exchange, and bringing the exchange back after it.

`DatabaseSupervisor` probes the database (`SELECT 1` on a connection of its own, every
`probe_interval_ms`, and at once when a request failed on a connection error, see
`ops.errors`). When the probe fails:

* the state becomes `DOWN` and every route but `/health` and `/schema` answers
  503 `database_unavailable` with `Retry-After` (`ops.middleware.DatabaseGate`);
  the pools' connections are cut (`ops.database.cut_connections`), so a request
  already waiting on a database that froze (a partition, an I/O stall) fails with
  the same 503 now, not at its query's timeout; and the exchange is told (`on_down`):
  the sequencer gives the database up (`Sequencer.abandon`): the ops of its batches in
  flight are answered at once 503 `ledger_unavailable` saying they may have committed
  (a retry with the same ids returns the first outcome), its connections are cut, and
  it never reconnects: the reopen below rebuilds from what is committed;
* if tokex started this PostgreSQL (the embedded one, no `DATABASE_URL`) it starts it
  again (`RESTARTING`), with a doubling delay between attempts, at most
  `restart_attempts` times (a postmaster that runs but does not answer yet, replaying
  its WAL, is waited for, not counted) (then `GAVE_UP`: it still probes, so a PostgreSQL someone
  else starts brings the exchange back); a server given by `DATABASE_URL` is only
  probed until it answers again;
* once the database answers, the exchange is reopened (`REOPENING`) through its
  start-up path: the old sequencer is closed (which releases the ledger's writer
  lock), a new one opens, rebuilding books, live orders and balances from what is
  committed, the pool's old connections are replaced, and the state is `UP` again.

Nothing acknowledged can be lost on the way: an acknowledgement means committed, and
the reopened sequencer starts from what is committed. Unless the database that came
back is not the one that went (a restore from an older backup, a lagging replica): the
reopen refuses a ledger behind the log the exchange already signed (`ops.ledger_head`),
and the state is `LEDGER_REGRESSED` (every route but `/health` and `/schema` answers 503
`ledger_regressed`; logged once as an error), probing on until the right database is
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from ledger.log import LedgerRegressed
from ops.database import (
    EmbeddedPostgres,
    PostmasterState,
    cut_connections,
    postmaster_state,
)

log = logging.getLogger(__name__)


class DatabaseState(enum.Enum):
    UP = "up"
    DOWN = "down"
    RESTARTING = "restarting"
    GAVE_UP = "gave_up"
    REOPENING = "reopening"
    LEDGER_REGRESSED = "ledger_regressed"


#: Close the exchange that lost its database, open a new one; raises if it cannot.
Reopen = Callable[[], Awaitable[None]]
#: The database was found down: what waits on it is cut (the sequencer gives it up).
OnDown = Callable[[], None]


def _nothing() -> None:
    pass


class DatabaseSupervisor:
    def __init__(
        self,
        url: str,
        *,
        embedded: EmbeddedPostgres | None,
        reopen: Reopen,
        on_down: OnDown = _nothing,
        probe_interval_ms: int = 500,
        probe_timeout_ms: int = 3_000,
        restart_attempts: int = 12,
        first_backoff_ms: int = 250,
        max_backoff_ms: int = 4_000,
    ) -> None:
        self.url = url
        self.embedded = embedded
        self._reopen = reopen
        self._on_down = on_down
        self.probe_interval_ms = probe_interval_ms
        self.probe_timeout_ms = probe_timeout_ms
        self.restart_attempts = restart_attempts
        self.first_backoff_ms = first_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.state = DatabaseState.UP
        self.outages = 0
        #: Why the exchange refuses its database (state `LEDGER_REGRESSED`), else None.
        self.refusal: LedgerRegressed | None = None
        self._conn: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.state is DatabaseState.UP

    @property
    def regressed(self) -> LedgerRegressed | None:
        """Why the exchange refuses the database that answers now; None if it does not."""
        return self.refusal if self.state is DatabaseState.LEDGER_REGRESSED else None

    @property
    def retry_after_s(self) -> int:
        return 1 if self.state is not DatabaseState.GAVE_UP else 10

    def start(self, refused: LedgerRegressed | None = None) -> None:
        """Watch the database; `refused`: the exchange did not open on it (start-up's check),
        so reopen as after an outage once its ledger is not behind any more."""
        if refused is not None:
            self._refuse(refused)
        self._task = asyncio.create_task(self._watch(), name="database-supervisor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_probe()

    def report_failure(self) -> None:
        """A request failed on a connection error: probe now rather than at the next tick."""
        if self.state is DatabaseState.UP:
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_interval_ms / 1000):
                    await self._wake.wait()
            self._wake.clear()
            if self.state is DatabaseState.UP:
                if await self.probe():
                    continue
                self.outages += 1
                self.state = DatabaseState.DOWN
                cut = cut_connections(self.url)  # what waits on a frozen database: 503 now
                try:
                    self._on_down()
                except Exception:  # the reopen closes what this did not
                    log.exception("supervisor: cutting the exchange off its database failed")
                log.error(
                    "database unreachable: answering 503 until it is back (%d pool "
                    "connections cut)",
                    cut,
                )
            try:  # also after a failed attempt (the state is not UP): until it is back
                await self._bring_back()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the supervisor die; the next tick tries again
                log.exception("supervisor: bringing the database back failed")

    async def _bring_back(self) -> None:
        """Until the database answers and the exchange is reopened on it."""
        attempt = reopen_failures = 0
        while True:
            if await self.probe():
                if self.state is not DatabaseState.LEDGER_REGRESSED:  # refused: still is
                    self.state = DatabaseState.REOPENING
                try:
                    await self._reopen()
                except LedgerRegressed as exc:
                    reopen_failures += 1
                    self._refuse(exc)
                except Exception as exc:
                    reopen_failures += 1
                    log.warning("supervisor: the exchange could not reopen yet: %s", exc)
                    self.state = DatabaseState.DOWN
                else:
                    self.state = DatabaseState.UP
                    self.refusal = None
                    log.warning("database back, exchange reopened (outage %d)", self.outages)
                    return
            elif self.state is DatabaseState.LEDGER_REGRESSED:
                self.state = DatabaseState.DOWN  # gone again (`refusal` stays: logged once)
            elif self.embedded is not None and self._postmaster_runs():
                pass  # started, not answering yet (replaying its WAL): no restart to count
            elif self.embedded is not None and attempt < self.restart_attempts:
                attempt += 1
                self.state = DatabaseState.RESTARTING
                await self._restart_embedded(attempt)
            elif self.embedded is not None and self.state is not DatabaseState.GAVE_UP:
                self.state = DatabaseState.GAVE_UP
                log.error(
                    "embedded PostgreSQL did not come back after %d attempts; still probing",
                    attempt,
                )
            await asyncio.sleep(self._backoff_s(max(attempt, reopen_failures)))

    def _refuse(self, exc: LedgerRegressed) -> None:
        if self.refusal is None:  # once per refusal, not on every probe
            log.error("refusing the database: %s; still probing", exc)
        self.refusal = exc
        self.state = DatabaseState.LEDGER_REGRESSED

    def _backoff_s(self, attempt: int) -> float:
        doubled: int = self.first_backoff_ms * 2 ** max(0, attempt - 1)
        return min(self.max_backoff_ms, doubled) / 1000

    def _postmaster_runs(self) -> bool:
        assert self.embedded is not None
        return postmaster_state(self.embedded.pg_path) is PostmasterState.RUNNING

    async def _restart_embedded(self, attempt: int) -> None:
        assert self.embedded is not None
        try:
            started = await asyncio.to_thread(self.embedded.ensure_running)
        except Exception as exc:
            log.warning("embedded PostgreSQL restart %d failed: %s", attempt, exc)
            return
        if not started:
            log.info("embedded PostgreSQL: the dead postmaster is not reaped yet")

    async def probe(self) -> bool:
        """Does the database answer? (On its own connection, opened again if it broke.)

        An embedded one whose postmaster is gone is down even if the probe's backend still
        answers: backends outlive a killed postmaster for a while. Any failure of the probe
        means down (a probe cut by a timeout can leave its connection unusable); a broken
        connection is tried once more on a new one, a timeout is not (a database that
        froze would otherwise take two timeouts to be found down)."""
        timeout_s = self.probe_timeout_ms / 1000
        if self.embedded is not None and not self._postmaster_runs():
            await self._drop_probe()
            return False
        for _ in (1, 2):  # a connection broken by a past outage says nothing about now
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self.url,
                        timeout=timeout_s,
                        server_settings={"application_name": "tokex-supervisor"},
                    )
                await self._conn.fetchval("SELECT 1", timeout=timeout_s)
                return True
            except TimeoutError:  # no answer in time is about now (frozen, partitioned)
                log.debug("probe timed out after %ss", timeout_s)
                await self._drop_probe()
                return False
            except Exception as exc:  # down, whatever broke: the next probe starts afresh
                log.debug("probe failed: %s: %s", type(exc).__name__, exc)
                await self._drop_probe()
        return False

    async def _drop_probe(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
