"""Providers' endpoints on `tokex serve`: register, list, delete, health, SSRF refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from market.client import TokexApiError, TokexClient
from market.gateway.health import PROBE_MAX_BYTES, PROBE_TIMEOUT_S
from schemas.accounts import Role
from tests.support.server import ServerProcess, operator_client
from tests.support.upstream import Mode, Upstream

ALLOW = {"TOKEX_ENDPOINT_ALLOW_HOSTS": "127.0.0.1,localhost"}
SECRET = "sk-upstream-very-secret-credential"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(models=["llama-3.1-70b"]) as up:
        yield up


def serve(db_url: str, tmp_path: Path, env: dict[str, str]) -> ServerProcess:
    return ServerProcess(database_url=db_url, data_dir=tmp_path, env=env).start()


@pytest.fixture
async def provider(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[TokexClient, ServerProcess]]:
    env = {**ALLOW, "TOKEX_ENDPOINT_HEALTH_INTERVAL_S": "0.2"}
    proc = await asyncio.to_thread(serve, db_url, tmp_path, env)
    operator = await operator_client(db_url, proc.base_url)
    created = await operator.create_account(Role.PROVIDER, "provider")
    try:
        yield operator.as_account(created), proc
    finally:
        await operator.aclose()
        await asyncio.to_thread(proc.stop)


def body(base_url: str, endpoint_id: str = "e1", **extra: Any) -> dict[str, Any]:
    return {"endpoint_id": endpoint_id, "model": "llama-3.1-70b", "base_url": base_url, **extra}


async def refused(client: TokexClient, payload: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(TokexApiError) as info:
        await client.request("POST", "/v1/endpoints", json=payload)
    return info.value.status, info.value.code


async def test_register_list_delete(
    provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    client, proc = provider
    made = await client.request(
        "POST", "/v1/endpoints", json=body(upstream.base_url, credential=SECRET, max_concurrency=4)
    )
    assert made["health"] == "healthy" and made["has_credential"] is True
    assert made["max_concurrency"] == 4 and "credential" not in made
    probe = upstream.requests[-1]
    assert (probe.path, probe.headers["authorization"]) == ("/v1/models", f"Bearer {SECRET}")

    listed = await client.request("GET", "/v1/endpoints")
    assert [e["endpoint_id"] for e in listed] == ["e1"]
    assert SECRET not in str(listed) and SECRET not in proc.log()
    assert await refused(client, body(upstream.base_url)) == (409, "endpoint_exists")

    await client.request("DELETE", "/v1/endpoints/e1")
    assert await client.request("GET", "/v1/endpoints") == []
    with pytest.raises(TokexApiError) as gone:
        await client.request("DELETE", "/v1/endpoints/e1")
    assert (gone.value.status, gone.value.code) == (404, "endpoint_not_found")


async def test_only_providers_and_only_their_own(
    db_url: str, provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    client, proc = provider
    await client.request("POST", "/v1/endpoints", json=body(upstream.base_url))
    operator = await operator_client(db_url, proc.base_url)
    try:
        other = operator.as_account(await operator.create_account(Role.PROVIDER, "other"))
        buyer = operator.as_account(await operator.create_account(Role.BUYER, "buyer"))
        assert await other.request("GET", "/v1/endpoints") == []
        with pytest.raises(TokexApiError) as not_theirs:
            await other.request("DELETE", "/v1/endpoints/e1")
        assert not_theirs.value.status == 404
        await other.request("POST", "/v1/endpoints", json=body(upstream.base_url))  # own ids
        assert await refused(buyer, body(upstream.base_url, "b1")) == (403, "forbidden_role")
    finally:
        await operator.aclose()


async def test_ssrf_refusals_with_clear_codes(provider: tuple[TokexClient, ServerProcess]) -> None:
    client, _ = provider
    for url, code in [
        ("http://169.254.169.254/latest", "endpoint_address_refused"),
        ("http://10.0.0.1:8000/v1", "endpoint_address_refused"),
        ("http://[::1]:8000/v1", "endpoint_address_refused"),  # loopback, not in the allow list
        ("http://[2002:a9fe:a9fe::1]/latest", "endpoint_address_refused"),  # 6to4 of the metadata
        ("http://[fec0::1]/v1", "endpoint_address_refused"),  # IPv6 site-local
        ("file:///etc/passwd", "endpoint_scheme"),
        ("http://no-such-host.invalid/v1", "endpoint_unresolvable"),
    ]:
        assert await refused(client, body(url)) == (400, code), url
    assert await client.request("GET", "/v1/endpoints") == []


async def test_loopback_names_refused_unless_allowed(
    db_url: str, tmp_path: Path, upstream: Upstream
) -> None:
    proc = await asyncio.to_thread(serve, db_url, tmp_path, {})  # no allow list
    operator = await operator_client(db_url, proc.base_url)
    try:
        client = operator.as_account(await operator.create_account(Role.PROVIDER, "p"))
        url = upstream.base_url.replace("127.0.0.1", "localhost")
        assert await refused(client, body(url)) == (400, "endpoint_address_refused")
        with pytest.raises(TokexApiError) as info:  # the kind of address, not the address
            await client.request("POST", "/v1/endpoints", json=body(url))
        assert "loopback" in info.value.message
        assert "127.0.0.1" not in info.value.message and "::1" not in info.value.message
        assert await refused(client, body(upstream.base_url)) == (400, "endpoint_address_refused")
        assert upstream.requests == []  # refused before any connection
    finally:
        await operator.aclose()
        await asyncio.to_thread(proc.stop)


async def test_unhealthy_at_registration_is_refused(
    provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    client, _ = provider
    upstream.mode = Mode.ERROR_500
    assert await refused(client, body(upstream.base_url)) == (422, "endpoint_unhealthy")
    dead = upstream.base_url.replace(str(upstream.port), str(upstream.port + 1))
    assert await refused(client, body(dead)) == (422, "endpoint_unhealthy")


async def test_periodic_probes_mark_unhealthy_and_healthy_again(
    db_url: str, provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    client, _ = provider
    await client.request("POST", "/v1/endpoints", json=body(upstream.base_url))

    async def health_becomes(value: str) -> dict[str, Any]:
        for _ in range(100):
            (endpoint,) = await client.request("GET", "/v1/endpoints")
            if endpoint["health"] == value:
                return dict(endpoint)
            await asyncio.sleep(0.1)
        raise AssertionError(f"health never became {value}")

    upstream.mode = Mode.ERROR_500
    sick = await health_becomes("unhealthy")
    assert "500" in sick["health_detail"]
    upstream.mode = Mode.OK
    assert (await health_becomes("healthy"))["health_detail"] == ""
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM gateway_endpoints WHERE health = 'healthy'"
        )
    finally:
        await conn.close()
    assert stored == 1


async def _health_becomes(client: TokexClient, value: str, timeout_s: float = 10) -> dict[str, Any]:
    for _ in range(int(timeout_s * 10)):
        (endpoint,) = await client.request("GET", "/v1/endpoints")
        if endpoint["health"] == value:
            return dict(endpoint)
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {value}")


async def test_a_models_answer_nested_too_deeply_is_unhealthy(
    provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    """Found in review: 100,000 nested arrays made the probe raise RecursionError (not
    ValueError): a 500 at registration, and a sweep that failed leaving it healthy."""
    client, proc = provider
    upstream.mode = Mode.DEEP_MODELS
    assert await refused(client, body(upstream.base_url)) == (422, "endpoint_unhealthy")
    upstream.mode = Mode.OK
    await client.request("POST", "/v1/endpoints", json=body(upstream.base_url))
    upstream.mode = Mode.DEEP_MODELS
    sick = await _health_becomes(client, "unhealthy")
    assert "JSON" in sick["health_detail"]
    assert "RecursionError" not in proc.log_path.read_text(errors="replace")


async def test_an_endpoint_trickling_its_models_answer_holds_no_other_probe(
    provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    """Found in review: httpx's timeout bounds each read, not the request, and the sweep
    awaited every probe: a /models sent a byte a second froze every health check, so
    another endpoint whose /models now answers 500 stayed healthy and kept its calls."""
    client, _ = provider
    with Upstream(models=["llama-3.1-70b"]) as slow:
        slow.hang_s = 120
        await client.request("POST", "/v1/endpoints", json=body(slow.base_url, "slow"))
        await client.request("POST", "/v1/endpoints", json=body(upstream.base_url, "e1"))
        slow.mode = Mode.SLOW_MODELS
        await asyncio.sleep(1)  # a sweep or more is held by it
        upstream.mode = Mode.ERROR_500

        async def health(timeout_s: float) -> dict[str, dict[str, Any]]:
            for _ in range(int(timeout_s * 10)):
                now = {e["endpoint_id"]: e for e in await client.request("GET", "/v1/endpoints")}
                if all(e["health"] == "unhealthy" for e in now.values()):
                    return now
                await asyncio.sleep(0.1)
            raise AssertionError(f"still healthy: {now}")

        both = await health(PROBE_TIMEOUT_S * 2 + 2)
        assert "500" in both["e1"]["health_detail"]
        assert "longer than" in both["slow"]["health_detail"]


async def test_a_models_answer_beyond_64_kib_is_unhealthy(
    provider: tuple[TokexClient, ServerProcess], upstream: Upstream
) -> None:
    """Found in review: an 800 MiB /models body was read whole (2.1 GiB at its peak) and
    the endpoint reported healthy. The probe reads at most `PROBE_MAX_BYTES`."""
    client, _ = provider
    upstream.mode = Mode.BIG_MODELS
    upstream.big_bytes = PROBE_MAX_BYTES + 1
    assert await refused(client, body(upstream.base_url)) == (422, "endpoint_unhealthy")
    upstream.big_bytes = PROBE_MAX_BYTES - 1_000  # a long list of models is fine
    await client.request("POST", "/v1/endpoints", json=body(upstream.base_url))
    upstream.big_bytes = 64 * 1024 * 1024
    sick = await _health_becomes(client, "unhealthy")
    assert "64 KiB" in sick["health_detail"] or str(PROBE_MAX_BYTES) in sick["health_detail"]
