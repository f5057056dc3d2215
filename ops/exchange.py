"""The running exchange: the sequencer, its Merkle log and its market data, as a lifespan.

`tokex serve` starts the app with `exchange_lifespan(settings)`: it loads (or
creates, on first start) the ledger's signing key, opens the sequencer — the
single writer, with the Merkle log written in every batch — rebuilds the books
from the journal (unless the database's ledger is behind the log it already signed:
`ops.ledger_head`), loads them into the market data hub if the app has one
(`app.state.market_data`; again after every rebuild, and when the hub asks for it
because a book broke), and puts the sequencer on `app.state.sequencer` for
the trading routes. Apps built without it (most tests) serve reads only; the
trading routes then answer 503 `exchange_not_running`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
from litestar import Litestar

from ledger.keys import load_or_create_signer
from ledger.log import LedgerRegressed, MerkleLog
from ledger.note import Signer
from ledger.store import WriterSession, end_writer_sessions
from market.sequencer import QUEUE_MAX, Sequencer
from market.sequencer.batch import nothing_delivering, nothing_reserved
from market.snapshot_writer import SnapshotPolicy
from ops.config import Settings
from ops.database import database_url, embedded_handle
from ops.ledger_head import (
    HeadKeeper,
    LogHead,
    check_not_behind,
    head_of,
    saved_head,
)
from ops.supervisor import DatabaseSupervisor

log = logging.getLogger(__name__)


#: How long closing a sequencer that lost its database may take before it is abandoned.
CLOSE_TIMEOUT_S = 15.0


async def _open_sequencer(app: Litestar, url: str, signer: Signer, settings: Settings) -> Sequencer:
    """Open the sequencer on `url`, its books loaded into the market data hub (after every
    rebuild: `resync`; in workers mode the responder's resync message), publish it on
    `app.state.sequencer`."""
    hub = app.state.get("market_data")
    merkle_log = MerkleLog(
        signer, settings.exchange_name, accept_unsigned=settings.accept_unsigned_journal
    )
    app.state.merkle_log = merkle_log  # for /metrics: tree size, last checkpoint
    sequencer = await Sequencer.open(
        url,
        hooks=[merkle_log],
        publish=None if hub is None else hub.publish,
        resync=None if hub is None else hub.load,
        queue_max=settings.queue_max or QUEUE_MAX,
        max_open_orders=settings.max_open_orders,
        pipeline_depth=settings.pipeline_depth,
        settle_wait_ms=settings.settle_wait_ms,
        snapshots=SnapshotPolicy(
            interval_entries=settings.snapshot_interval_entries,
            interval_seconds=settings.snapshot_interval_seconds,
        ),
    )
    # The gateway's desk, if it runs here: settlement waits for its calls in flight, and
    # reports and vouchers leave what they reserved.
    sequencer.delivering = app.state.get("delivering") or nothing_delivering
    sequencer.reserved = app.state.get("reserved") or nothing_reserved
    if hub is not None and hasattr(hub, "reloader"):
        hub.reloader = sequencer.resync_soon  # a book broke: load it again
    app.state.sequencer = sequencer
    return sequencer


async def _close_sequencer(sequencer: Sequencer) -> list[WriterSession]:
    """Close a sequencer that lost its database; the server sessions it had, to end
    before a new writer takes the lock (`ledger.store.end_writer_sessions`). One that does
    not close in time is given up (`Sequencer.abandon`: its connections cut, nothing
    reconnects), or its session would keep the writer lock and refuse every reopen."""
    try:
        await asyncio.wait_for(sequencer.close(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("the sequencer did not close within %ss; abandoned", CLOSE_TIMEOUT_S)
    except Exception:
        log.warning("closing the sequencer failed", exc_info=True)
    return sequencer.abandon()  # closed: nothing left to cut or name; else cut now


async def _open_checked(
    app: Litestar,
    url: str,
    signer: Signer,
    settings: Settings,
    head: LogHead | None,
    keeper: HeadKeeper,
) -> Sequencer:
    """`_open_sequencer`, unless the database's ledger is behind `head` (`LedgerRegressed`,
    before anything is opened on it: not a leaf or a checkpoint is written there)."""
    await check_not_behind(url, head)
    sequencer = await _open_sequencer(app, url, signer, settings)
    keeper.merkle_log = app.state.merkle_log
    log.info(
        "exchange open: %d instruments, ledger size %d",
        len(sequencer.market.instruments),
        sequencer.ledger.size,
    )
    return sequencer


def _freeze_start_up() -> None:
    """The books, balances and holds are long-lived objects by the hundred thousand: move
    what start-up built out of the collector's sight, and collect the young generation
    less often, so collections do not show up as latency spikes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


def exchange_lifespan(
    settings: Settings,
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """The lifespan that runs the exchange in this app (see the module docstring)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        url = settings.database_url
        if url is None:
            url = await asyncio.to_thread(database_url, settings)
        signer = await asyncio.to_thread(
            load_or_create_signer,
            settings.signing_key_file,
            settings.data_path,
            settings.exchange_name,
        )
        keeper = HeadKeeper(settings.data_path)
        accept = settings.accept_ledger_regression
        refused: LedgerRegressed | None = None
        try:
            saved = await asyncio.to_thread(saved_head, settings.data_path)
            await _open_checked(app, url, signer, settings, None if accept else saved, keeper)
        except LedgerRegressed as exc:
            refused = exc  # not served: the supervisor says why, and reopens once it is not
        _freeze_start_up()

        stale: list[WriterSession] = []  # server sessions of the sequencers given up, to end

        async def reopen() -> None:
            """After an outage: the start-up path again, on what is committed, if that is not
            behind what the exchange signed before (`ops.ledger_head`)."""
            old: Sequencer | None = app.state.get("sequencer")
            head = head_of(app.state.get("merkle_log"))  # the old sequencer's: in memory
            if old is not None:
                stale.extend(await _close_sequencer(old))
                app.state.sequencer = None  # closed: a failed open below must not close it again
            keeper.save_now()
            head = head or await asyncio.to_thread(saved_head, settings.data_path)
            try:
                if await end_writer_sessions(url, stale):
                    log.warning("the old writer's session has not ended yet (a stalled backend)")
            except Exception as exc:  # not allowed, say: the lock tells whether it matters
                log.warning("could not end the old writer's sessions: %s", exc)
            await _open_checked(app, url, signer, settings, None if accept else head, keeper)
            stale.clear()  # the writer now: none of those holds the lock
            pool: asyncpg.Pool | None = app.state.get("pool")
            if pool is not None:
                await pool.expire_connections()  # connections from before the outage are dead

        def cut_off() -> None:  # the database is down: the sequencer gives it up
            sequencer: Sequencer | None = app.state.get("sequencer")
            if sequencer is not None:
                sequencer.abandon()

        supervisor = DatabaseSupervisor(
            url, embedded=embedded_handle(settings.data_path), reopen=reopen, on_down=cut_off
        )
        app.state.database_supervisor = supervisor
        supervisor.start(refused)
        keeper.start()
        try:
            yield
        finally:
            await supervisor.close()
            app.state.database_supervisor = None
            current: Sequencer | None = app.state.get("sequencer")
            app.state.sequencer = None
            if current is not None:
                await current.close()
            await keeper.close()  # after the last commit: the head it saves is the last

    return lifespan
