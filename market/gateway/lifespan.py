"""Start and stop the gateway with the app (after the exchange's lifespan: it needs the
sequencer): `app.state.gateway`, its meter's flushes, a last flush on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from market.gateway.service import Gateway


def gateway_lifespan(
    allow_hosts: frozenset[str], flush_s: float, upstream_timeout_s: float
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        gateway = Gateway(
            app.state.pool, lambda: app.state.get("sequencer"), allow_hosts=allow_hosts,
            flush_s=flush_s, upstream_timeout_s=upstream_timeout_s,
        )  # fmt: skip
        gateway.meter.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()

    return lifespan
