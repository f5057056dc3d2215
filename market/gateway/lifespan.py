"""Start and stop the gateway with the app (after the exchange's lifespan: it needs the
sequencer): `app.state.gateway`, its meter's group commits and its progress marks; before
it serves, the calls a crash cut closed by their last progress mark
(`progress.close_crashed`); a last flush on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg

from market.gateway.desk import watch_deliveries
from market.gateway.meter import Meter, Reservations
from market.gateway.progress import close_crashed
from market.gateway.service import GatewayConfig, local_gateway

log = logging.getLogger(__name__)


async def close_all_crashed(pool: asyncpg.Pool, meter: Meter, reservations: Reservations) -> None:
    """Close every call a crash cut (the exchange is starting: no gateway owns one), and
    wait for their commit. If it fails, their charge is retried by the meter (or, if they
    could not even be read, at the next start)."""
    try:
        closing = await close_crashed(pool, meter, reservations)
    except Exception:
        log.exception("gateway: the calls a crash cut could not be read; closed at next start")
        return
    for outcome in await asyncio.gather(*closing, return_exceptions=True):
        if isinstance(outcome, Exception):
            log.warning("gateway: the charge of calls a crash cut is retried: %s", outcome)
            return


def gateway_lifespan(config: GatewayConfig) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        gateway, desk = local_gateway(app.state.pool, lambda: app.state.get("sequencer"), config)
        gateway.meter.start()
        watch_deliveries(app.state, desk)  # before the charges of calls a crash cut are owed
        await close_all_crashed(gateway.pool, gateway.meter, desk.reservations)
        gateway.progress.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()  # the charges still waiting are flushed first
            watch_deliveries(app.state, None)
            desk.close()

    return lifespan
