"""The running exchange: the sequencer, its Merkle log and its market data, as a lifespan.

`tokex serve` starts the app with `exchange_lifespan(settings)`: it loads (or
creates, on first start) the ledger's signing key, opens the sequencer — the
single writer, with the Merkle log written in every batch — rebuilds the books
from the journal, loads them into the market data hub if the app has one
(`app.state.market_data`), and puts the sequencer on `app.state.sequencer` for
the trading routes. Apps built without it (most tests) serve reads only; the
trading routes then answer 503 `exchange_not_running`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar

from ledger.keys import load_or_create_signer
from ledger.log import MerkleLog
from market.sequencer import QUEUE_MAX, Sequencer
from market.snapshot_writer import SnapshotPolicy
from ops.config import Settings
from ops.database import database_url

log = logging.getLogger(__name__)


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
        hub = app.state.get("market_data")
        sequencer = await Sequencer.open(
            url,
            hooks=[MerkleLog(signer, settings.exchange_name)],
            publish=None if hub is None else hub.publish,
            queue_max=settings.queue_max or QUEUE_MAX,
            snapshots=SnapshotPolicy(
                interval_entries=settings.snapshot_interval_entries,
                interval_seconds=settings.snapshot_interval_seconds,
            ),
        )
        if hub is not None and hasattr(hub, "load"):
            hub.load(book.depth(1_000_000) for book in sequencer.engine.books())
        app.state.sequencer = sequencer
        # The books, balances and holds are long-lived objects by the hundred thousand:
        # move what start-up built out of the collector's sight, and collect the young
        # generation less often, so collections do not show up as latency spikes.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        log.info(
            "exchange open: %d instruments, ledger size %d",
            len(sequencer.market.instruments),
            sequencer.ledger.size,
        )
        try:
            yield
        finally:
            app.state.sequencer = None
            await sequencer.close()

    return lifespan
