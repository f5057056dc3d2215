"""Health of providers' endpoints: `GET {base_url}/models`, at registration and periodically.

An endpoint is healthy when that answers 200 with a JSON object (OpenAI's model list,
`{"object": "list", "data": [...]}`, as vLLM, llama.cpp server, Ollama, SGLang and TGI
serve it) of at most `PROBE_MAX_BYTES` (64 KiB), the whole answer within
`PROBE_TIMEOUT_S` (5 s; not each read: a body sent a byte at a time is unhealthy, not
waited for). Redirects are not followed (a redirect could point the
exchange at an address the SSRF check refused). The base URL is checked again before each
probe (`ssrf.resolve`), so an endpoint whose name now resolves to a refused address turns
unhealthy. Only healthy endpoints get calls.

`HealthMonitor` probes every endpoint every `interval_s` seconds (`tokex serve` runs it,
`TOKEX_ENDPOINT_HEALTH_INTERVAL_S`, default 10 s); probes run concurrently, at most
`MAX_PROBES_IN_FLIGHT` at a time, on one client kept for its life (registrations probe on
it too, `app.state.health_monitor`). Each endpoint's check has its own deadline
(`CHECK_TIMEOUT_S`, its address resolved and probed) and its result is recorded as it
comes, so one endpoint never holds the others' results back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import msgspec

from market.gateway import endpoints as store
from market.gateway.sse import UNDECODABLE
from market.gateway.ssrf import EndpointRefused, Target, resolve
from market.signing import now_ms
from schemas.gateway import Health

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
#: The most of a /models body read: beyond it, unhealthy (a model list is a few KiB).
PROBE_MAX_BYTES = 64 * 1024
#: The longest one endpoint's check in a sweep takes, its address resolved and probed.
CHECK_TIMEOUT_S = 2 * PROBE_TIMEOUT_S
MAX_PROBES_IN_FLIGHT = 16


def upstream_headers(target: Target, credential: str | None) -> dict[str, str]:
    """Headers of a request to the endpoint: its Host, and its credential if it has one."""
    headers = target.headers
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    return headers


def probe_client() -> httpx.AsyncClient:
    """A client for probes, kept by its owner (the monitor, the gateway) and reused."""
    return httpx.AsyncClient(
        timeout=PROBE_TIMEOUT_S, follow_redirects=False, trust_env=False,
        limits=httpx.Limits(max_connections=MAX_PROBES_IN_FLIGHT * 2),
    )  # fmt: skip


async def probe(
    target: Target, credential: str | None, client: httpx.AsyncClient | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[Health, str]:  # fmt: skip
    """Probe one checked target: (health, a short reason when unhealthy). With no
    `client`, a client for this probe alone. The whole probe, its body read to the end,
    is bounded by `timeout_s` (httpx's timeout bounds each read: a body sent a byte at a
    time would hold it for ever), and its body by `PROBE_MAX_BYTES`."""
    if client is None:
        async with probe_client() as own:
            return await probe(target, credential, own, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            return await _probe(target, credential, client, timeout_s)
    except TimeoutError:
        return Health.UNHEALTHY, f"GET /models took longer than {timeout_s:g} s"


async def _probe(
    target: Target, credential: str | None, client: httpx.AsyncClient, timeout_s: float
) -> tuple[Health, str]:
    try:
        async with client.stream(
            "GET", target.url + "/models", headers=upstream_headers(target, credential),
            extensions=target.extensions, timeout=timeout_s, follow_redirects=False,
        ) as response:  # fmt: skip
            if response.status_code != 200:
                return Health.UNHEALTHY, f"GET /models answered {response.status_code}"
            raw = await _read_capped(response)
    except httpx.HTTPError as exc:
        return Health.UNHEALTHY, f"GET /models failed: {type(exc).__name__}"
    if raw is None:
        return Health.UNHEALTHY, f"GET /models answered more than {PROBE_MAX_BYTES // 1024} KiB"
    try:
        body = msgspec.json.decode(raw)
    except UNDECODABLE:
        return Health.UNHEALTHY, "GET /models did not answer JSON"
    if not isinstance(body, dict):
        return Health.UNHEALTHY, "GET /models did not answer a JSON object"
    return Health.HEALTHY, ""


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The body, or None once it is longer than `PROBE_MAX_BYTES` (not read further)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > PROBE_MAX_BYTES:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > PROBE_MAX_BYTES:
            return None
    return bytes(body)


async def check(
    base_url: str, credential: str | None, allow_hosts: frozenset[str],
    client: httpx.AsyncClient | None = None,
) -> tuple[Health, str]:  # fmt: skip
    """Check the base URL again (SSRF), then probe it."""
    try:
        target = await resolve(base_url, allow_hosts)
    except EndpointRefused as exc:
        return Health.UNHEALTHY, f"{exc.code}: {exc.message}"
    return await probe(target, credential, client)


class HealthMonitor:
    """Probes every registered endpoint every `interval_s` seconds and records the result."""

    def __init__(
        self, pool: asyncpg.Pool, allow_hosts: frozenset[str], interval_s: float,
        clock: Callable[[], int] = now_ms, on_change: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self._pool = pool
        self._allow_hosts = allow_hosts
        self.interval_s = interval_s
        self._clock = clock
        self._on_change = on_change
        self._limit = asyncio.Semaphore(MAX_PROBES_IN_FLIGHT)
        self.check_timeout_s = CHECK_TIMEOUT_S
        self.client = probe_client()

    async def close(self) -> None:
        await self.client.aclose()

    async def _one(self, row: store.EndpointRow) -> None:
        async with self._limit:
            try:  # its own deadline: the sweep waits for every endpoint, none holds it
                async with asyncio.timeout(self.check_timeout_s):
                    health, detail = await check(
                        row.base_url, row.credential, self._allow_hosts, self.client
                    )
            except TimeoutError:
                health = Health.UNHEALTHY
                detail = f"the check took longer than {self.check_timeout_s:g} s"
        async with self._pool.acquire() as conn:
            await store.set_health(conn, row, health, detail, self._clock())
        if health is not row.health and self._on_change is not None:
            self._on_change()

    async def sweep(self) -> None:
        """Probe every endpoint once."""
        async with self._pool.acquire() as conn:
            rows = await store.all_endpoints(conn)
        await asyncio.gather(*(self._one(row) for row in rows))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # the database may be down: try again next time
                log.warning("endpoint health sweep failed: %s", type(exc).__name__)


def health_lifespan(
    allow_hosts: frozenset[str], interval_s: float
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Litestar lifespan running a `HealthMonitor` on `app.state.pool`."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        def changed() -> None:  # the gateway keeps healthy endpoints for a moment
            gateway = app.state.get("gateway")
            if gateway is not None:
                gateway.endpoints_changed()

        monitor = HealthMonitor(app.state.pool, allow_hosts, interval_s, on_change=changed)
        task = asyncio.create_task(monitor.run(), name="endpoint-health")
        app.state.health_monitor = monitor
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.state.health_monitor = None
            await monitor.close()

    return lifespan
