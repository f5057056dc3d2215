"""The health monitor's sweep (`market.gateway.health.HealthMonitor`), on a stand-in for
its pool and store: one endpoint's check that never ends holds no other's result, and is
recorded unhealthy once its own deadline passes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from market.gateway import endpoints as store
from market.gateway import health
from schemas.gateway import Health


def _row(endpoint_id: str) -> store.EndpointRow:
    return store.EndpointRow(
        provider="p", endpoint_id=endpoint_id, model="m", base_url=f"http://{endpoint_id}/v1",
        credential=None, max_concurrency=1, health=Health.HEALTHY, health_detail="",
        checked_ms=0,
    )  # fmt: skip


class _Pool:
    """A stand-in for the asyncpg pool: the store's functions are replaced below."""

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[None]:
        yield None


async def test_a_check_that_never_ends_holds_no_other_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: dict[str, tuple[Health, str, float]] = {}
    loop = asyncio.get_running_loop()

    async def all_endpoints(_: Any) -> list[store.EndpointRow]:
        return [_row("stuck"), _row("sick")]

    async def set_health(_: Any, row: store.EndpointRow, h: Health, detail: str, __: int) -> None:
        recorded[row.endpoint_id] = (h, detail, loop.time())

    async def check(base_url: str, *_: Any) -> tuple[Health, str]:
        if "stuck" in base_url:  # a resolver or a probe that never answers
            await asyncio.sleep(3600)
        return Health.UNHEALTHY, "GET /models answered 500"

    monkeypatch.setattr(store, "all_endpoints", all_endpoints)
    monkeypatch.setattr(store, "set_health", set_health)
    monkeypatch.setattr(health, "check", check)
    monitor = health.HealthMonitor(_Pool(), frozenset(), interval_s=3600)  # type: ignore[arg-type]
    monitor.check_timeout_s = 0.3
    try:
        started = loop.time()
        async with asyncio.timeout(5):
            await monitor.sweep()
    finally:
        await monitor.close()
    assert recorded["sick"][:2] == (Health.UNHEALTHY, "GET /models answered 500")
    assert recorded["sick"][2] - started < 0.2  # recorded at once, not after the other
    assert recorded["stuck"][:2] == (Health.UNHEALTHY, "the check took longer than 0.3 s")
