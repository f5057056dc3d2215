"""The gateway's lifespans for `tokex serve`, from the settings.

* One process: endpoint health probes (`market.gateway.health`) and the gateway with its
  desk (`market.gateway.lifespan`; after the exchange's lifespan, whose sequencer it uses).
* `serve --workers N`: in the sequencer process, `desk_lifespan` (the desk and its server
  on NATS, the one endpoint health checker, the closing of calls a crash cut); in each
  gateway process, `remote_gateway_lifespan` (the call path, its desk over NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from nats.aio.client import Client

from market.gateway.desk import Desk, watch_deliveries
from market.gateway.desk_remote import DeskExchange, RemoteDesk
from market.gateway.desk_server import DeskServer
from market.gateway.health import HealthMonitor, health_lifespan
from market.gateway.journal import ReceiptJournal
from market.gateway.lifespan import close_all_crashed, gateway_lifespan
from market.gateway.meter import Meter
from market.gateway.service import Gateway, GatewayConfig
from market.gateway.ssrf import parse_allow_hosts
from ops.app import Lifespan
from ops.config import Settings

log = logging.getLogger(__name__)

#: Connections of the sequencer process's own pool (keys' usage, open calls, health),
#: besides the receipt journal's writers.
DESK_POOL_SIZE = 4


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        allow_hosts=parse_allow_hosts(settings.endpoint_allow_hosts),
        flush_s=settings.gateway_flush_ms / 1000,
        progress_s=settings.gateway_progress_ms / 1000,
        upstream_timeout_s=settings.gateway_upstream_timeout_s,
        upstream_idle_s=settings.gateway_upstream_idle_ms / 1000,
        max_in_flight=settings.gateway_max_in_flight,
        rate_limit=settings.gateway_rate_limit,
        rate_burst=settings.gateway_rate_burst,
        max_answer_bytes=settings.gateway_max_answer_bytes,
        max_event_bytes=settings.gateway_max_event_bytes,
        receipt_writers=settings.receipt_writers,
    )


def gateway_lifespans(settings: Settings) -> list[Lifespan]:
    config = gateway_config(settings)
    return [
        health_lifespan(config.allow_hosts, settings.endpoint_health_interval_s),
        gateway_lifespan(config),
    ]


def desk_lifespan(
    settings: Settings, nats: Client
) -> Callable[[Any], AbstractAsyncContextManager[DeskServer]]:
    """The sequencer process's part of the gateway (after the exchange's lifespan): a pool
    of its own, the desk on its sequencer, answered on NATS; before any gateway process
    starts, every open call closed as cut by a crash (no gateway process is running);
    the one health checker of providers' endpoints (results in `gateway_endpoints`,
    which every gateway process reads, kept `service.ENDPOINTS_CACHE_S`)."""
    from ops.database import open_pool

    config = gateway_config(settings)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[DeskServer]:
        assert settings.database_url is not None
        size = DESK_POOL_SIZE + config.receipt_writers
        pool = await open_pool(settings.database_url, min_size=1, max_size=size)
        app.state.pool = pool  # the exchange's reopen after an outage expires its connections
        source = lambda: app.state.get("sequencer")  # noqa: E731
        desk = Desk(source, pool)
        journal = ReceiptJournal(pool, config.receipt_writers)
        meter = Meter(source, desk.reservations, config.flush_s, journal.bound(""),
                      config.receipt_writers)  # fmt: skip
        meter.on_commit = desk.refresh
        meter.start()
        server = DeskServer(nats, desk, meter, pool, config.max_in_flight, journal)
        monitor = HealthMonitor(pool, config.allow_hosts, settings.endpoint_health_interval_s)
        health = asyncio.create_task(monitor.run(), name="endpoint-health")
        try:
            watch_deliveries(app.state, desk)  # before the charges of cut calls are owed
            await close_all_crashed(pool, meter, desk.reservations)
            await server.start()
            yield server
        finally:
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            await monitor.close()
            await server.close()
            await meter.close()  # the charges still waiting are flushed first
            await journal.close()  # its connections back to the pool, before it closes
            watch_deliveries(app.state, None)
            desk.close()
            app.state.pool = None
            await pool.close()

    return lifespan


def remote_gateway_lifespan(settings: Settings, instance_id: str) -> Lifespan:
    """A gateway process's call path (after `remote_exchange_lifespan`, whose NATS
    connection it uses): its reservations and charges go to the sequencer process's desk.
    It closes no call a crash cut: the sequencer process does (`desk_lifespan`,
    `DeskServer.gone`)."""
    config = gateway_config(settings)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        nats: Client = app.state.nats
        desk = RemoteDesk(nats, instance_id)
        exchange = DeskExchange(nats, instance_id)
        gateway = Gateway(app.state.pool, config, desk, lambda: exchange, exchange.journal,
                          instance_id=instance_id)  # fmt: skip
        desk.start()
        gateway.meter.start()
        gateway.progress.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()
            await desk.close()

    return lifespan
