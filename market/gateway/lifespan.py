"""Start and stop the gateway with the app (after the exchange's lifespan: it needs the
sequencer): `app.state.gateway`, its meter's group commits, a last flush on shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from market.gateway.service import Gateway, GatewayConfig


def gateway_lifespan(config: GatewayConfig) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        gateway = Gateway(app.state.pool, lambda: app.state.get("sequencer"), config)
        gateway.meter.start()
        app.state.gateway = gateway
        try:
            yield
        finally:
            app.state.gateway = None
            await gateway.close()

    return lifespan
