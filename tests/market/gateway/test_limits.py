"""The gateway's admission: a rate per key and a cap on an account's calls in flight,
both 429 in OpenAI's shape with Retry-After. The caps on what an upstream sends: a
non-streamed answer's bytes, one SSE event's bytes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.market.gateway.gateway_support import MODEL, Market, open_market
from tests.support.upstream import Mode, Upstream

LIMITS = {
    "TOKEX_GATEWAY_RATE_LIMIT": "0.1",  # one more call every 10 s
    "TOKEX_GATEWAY_RATE_BURST": "3",
    "TOKEX_GATEWAY_MAX_IN_FLIGHT": "1",
}
WORKERS = int(os.environ.get("TOKEX_TEST_SERVE_WORKERS") or 1)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=10_000, env=LIMITS):
        yield m


async def test_calls_in_flight_per_account_then_the_keys_rate(market: Market) -> None:
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}"}
    m.upstream.chunk_delay_s = 0.2
    async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status_code == 200  # call 1 of the burst holds the account's one slot
            second = await http.post("/chat/completions", json=CHAT)  # call 2
            async for _ in r.aiter_bytes():
                pass
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        error = second.json()["error"]
        assert (error["code"], error["type"]) == ("too_many_calls_in_flight", "rate_limit_error")

        m.upstream.chunk_delay_s = 0.0
        await asyncio.sleep(0.1)
        third = await http.post("/chat/completions", json=CHAT)  # the slot is free again
        assert third.status_code == 200
        # past the burst of 3: the 4th call in one process; the rate is each gateway
        # process's own with `serve --workers N` (N x the burst in all), the calls in
        # flight are counted for all of them (above)
        for _ in range(3 * WORKERS - 2):
            fourth = await http.post("/chat/completions", json=CHAT)
            if fourth.status_code != 200:
                break
    assert fourth.status_code == 429
    assert fourth.json()["error"]["code"] == "rate_limited"
    assert int(fourth.headers["retry-after"]) >= 1


CAPS = {"TOKEX_GATEWAY_MAX_ANSWER_BYTES": str(1024 * 1024),
        "TOKEX_GATEWAY_MAX_EVENT_BYTES": str(64 * 1024)}  # fmt: skip


@pytest.fixture
async def capped(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=10_000, env=CAPS):
        yield m


async def test_an_upstream_answer_beyond_the_caps_is_a_502_or_a_cut_stream(
    capped: Market,
) -> None:
    """Found in review: a non-streamed answer was read whole however large (300 MiB:
    707 MB at the peak), and a streamed event with no blank line cost quadratic CPU."""
    m = capped
    headers = {"Authorization": f"Bearer {await m.key()}"}
    before = (await m.entitlement()).entitlement
    m.upstream.mode, m.upstream.big_bytes = Mode.BIG_ANSWER, 2 * 1024 * 1024
    async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=20) as http:
        big = await http.post("/chat/completions", json=CHAT)
        assert big.status_code == 502
        assert big.json()["error"]["code"] == "upstream_error"
        assert "nothing was charged" in big.json()["error"]["message"]
        cut = await http.post("/chat/completions", json={**CHAT, "stream": True})
        assert cut.status_code == 200
        events = [e for e in cut.text.split("\n\n") if e]
        assert '"content": "w0"' in events[0]  # the chunk before the long event, passed on
        assert "upstream_stream_cut" in events[-1] and len(events) == 2
        assert "[DONE]" not in cut.text
        m.upstream.mode, m.upstream.big_bytes = Mode.BIG_ANSWER, 512 * 1024
        fine = await http.post("/chat/completions", json=CHAT)  # within the cap: served
        assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] == 4
    await m.settled()
    # not streamed: nothing; cut: its one chunk passed on (the cut-call rule); within
    # the cap: 1 prompt token + 4
    assert before - (await m.entitlement()).entitlement == 1 + 5
