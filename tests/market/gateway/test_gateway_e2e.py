"""The gateway with the official `openai` SDK against `tokex serve` and the stand-in
upstream: entitlement falls by exactly the metered tokens, the provider is paid pro rata
less its fee, failures are OpenAI-style errors with nothing charged (or the cut-stream
rule), concurrent calls never overdraw."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from market.clearing.rules import delivery_split
from market.gateway.service import ENDPOINTS_CACHE_S
from tests.market.gateway.gateway_support import FEE_BPS, MODEL, RECEIPTS, Market, open_market
from tests.support.upstream import Mode, Upstream

CHAT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens upstream


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=100_000):
        yield m


def sdk(m: Market, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=m.openai_url, api_key=key, max_retries=0, timeout=20)


async def receipts(db_url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(f"SELECT * FROM {RECEIPTS} ORDER BY started_ms, receipt_id")
    finally:
        await conn.close()
    return [{**dict(r), "transaction_id": r["charged_in"]} for r in rows]


async def test_chat_is_metered_exactly_and_pays_the_provider(market: Market, db_url: str) -> None:
    m = market
    client = sdk(m, await m.key())
    models = await client.models.list()
    assert [x.id for x in models.data] == [MODEL]
    before, cash_before = await m.entitlement(), await m.provider_cash()

    answer = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert answer.usage is not None and answer.usage.total_tokens == 8
    sent = m.upstream.requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-up" and sent.body["max_tokens"] == 5

    await m.settled()
    after = await m.entitlement()
    assert before.entitlement - after.entitlement == 8
    split = delivery_split(8, before.entitlement, before.escrow, FEE_BPS)
    assert await m.provider_cash() - cash_before == split.paid
    assert (after.delivered, after.released) == (8, split.released)
    (r,) = await receipts(db_url)
    assert (r["buyer"], r["provider"], r["instrument"], r["endpoint_id"], r["model"]) == (
        m.buyer_id, m.provider_id, m.symbol, "e1", MODEL)  # fmt: skip
    assert (r["prompt_tokens"], r["completion_tokens"], r["tokens"]) == (3, 5, 8)
    assert r["transaction_id"] is not None and len(r["response_sha256"]) == 32
    # /metrics counts the receipt's journal commit, the one its call waited for at its end.
    async with httpx.AsyncClient(base_url=m.proc.base_url) as http:
        text = (await http.get("/metrics")).text
    assert 'tokex_gateway_receipts_durable_total{commits_waited="1"} 1.0' in text
    assert "tokex_gateway_journal_commits_total 1.0" in text


async def test_streaming_and_completions(market: Market, db_url: str) -> None:
    m = market
    client = sdk(m, await m.key())
    before = (await m.entitlement()).entitlement
    stream = await client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7

    plain = await client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=2, stream=True
    )
    assert all(c.usage is None for c in [c async for c in plain])  # not asked: not passed on
    asked = m.upstream.requests[-1].body
    assert asked["stream_options"] == {"include_usage": True}  # but the gateway asked

    done = await client.completions.create(model=MODEL, prompt="a b", max_tokens=3)
    assert done.choices[0].text == "w0 w1 w2" and done.usage is not None
    streamed = await client.completions.create(model=MODEL, prompt="a", max_tokens=2, stream=True)
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == "w0 w1"

    await m.settled()
    charged = 7 + (3 + 2) + (2 + 3) + (1 + 2)
    assert before - (await m.entitlement()).entitlement == charged
    assert sum(r["tokens"] for r in await receipts(db_url)) == charged


async def test_upstream_failures(market: Market, db_url: str) -> None:
    m = market
    client = sdk(m, await m.key())
    before = (await m.entitlement()).entitlement

    m.upstream.mode = Mode.ERROR_500
    with pytest.raises(openai.APIStatusError) as failed:
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"

    m.upstream.mode = Mode.REFUSE_400  # the buyer's request refused by the upstream itself
    with pytest.raises(openai.BadRequestError) as refused:  # 400: the SDK does not retry it
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert refused.value.code == "upstream_refused"
    assert "maximum context length is 8 tokens" in refused.value.message
    assert len([r for r in m.upstream.requests if r.method == "POST"]) == 2  # once each

    m.upstream.mode = Mode.DEEP_ANSWER  # msgspec's RecursionError: was a 500
    with pytest.raises(openai.APIStatusError) as deep:
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert deep.value.status_code == 502 and deep.value.code == "upstream_error"

    m.upstream.mode, m.upstream.hang_s = Mode.TIMEOUT, 4.0
    with pytest.raises(openai.APIStatusError) as slow:
        await client.completions.create(model=MODEL, prompt="a", max_tokens=5)
    assert slow.value.status_code == 502 and slow.value.code == "upstream_timeout"

    m.upstream.mode = Mode.CUT_STREAM  # 3 of 6 words, then the connection drops
    stream = await client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, stream=True
    )
    got: list[str] = []
    with pytest.raises(openai.APIError, match="broke off"):
        async for chunk in stream:
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got) == "w0 w1 w2"

    m.upstream.mode = Mode.NO_USAGE
    await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    quiet = await client.completions.create(model=MODEL, prompt="a", max_tokens=4, stream=True)
    assert len([c async for c in quiet]) == 4

    m.upstream.mode = Mode.LYING_USAGE  # claims 10 x 5 completion tokens
    lie = await client.completions.create(model=MODEL, prompt="a b", max_tokens=5)
    assert lie.usage is not None and lie.usage.completion_tokens == 50

    await m.settled()
    # 500, timeout: nothing. Cut: 3 streamed chunks. No usage: nothing (not streamed),
    # 4 chunks (streamed). Lying: 2 + at most the 5 forwarded as max_tokens.
    charged = 3 + 0 + 4 + (2 + 5)
    assert before - (await m.entitlement()).entitlement == charged
    rows = await receipts(db_url)
    assert [r["tokens"] for r in rows] == [3, 0, 4, 7]  # one receipt per served call
    assert len({r["receipt_id"] for r in rows}) == 4


async def test_bearer_keys(market: Market) -> None:
    m = market
    with pytest.raises(openai.AuthenticationError):
        await sdk(m, "tkx_" + "0" * 64).models.list()
    async with httpx.AsyncClient() as http:  # a valid Ed25519 signature is no bearer key
        response = await http.send(m.buyer.build_request("GET", m.openai_url + "/models"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"

    key = await m.key()
    async with httpx.AsyncClient() as http:  # and a bearer key admits nothing outside it
        other = await http.get(
            m.proc.base_url + "/v1/balances", headers={"Authorization": f"Bearer {key}"}
        )
    assert (other.status_code, other.json()["code"]) == (401, "missing_signature")
    listed = await m.buyer.request("GET", "/v1/inference-keys")
    assert key not in str(listed) and listed[0]["revoked"] is False
    await m.buyer.request("DELETE", f"/v1/inference-keys/{listed[0]['key_id']}")
    with pytest.raises(openai.AuthenticationError):
        await sdk(m, key).models.list()

    other = sdk(m, await m.key(models=["another-model"]))
    assert (await other.models.list()).data == []
    with pytest.raises(openai.NotFoundError):
        await other.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)

    with pytest.raises(openai.AuthenticationError, match="expired"):
        await sdk(m, await m.key(expires_ms=1)).models.list()

    small = sdk(m, await m.key(token_budget=80))  # one call reserves 3 words' bytes + 16 + 5
    await small.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    with pytest.raises(openai.APIStatusError) as spent:
        for _ in range(20):
            await small.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
    assert spent.value.status_code == 402 and spent.value.code == "insufficient_entitlement"


@pytest.fixture
async def small(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=1_000):
        yield m


async def test_concurrent_calls_never_overdraw(small: Market, db_url: str) -> None:
    m = small
    client = sdk(m, await m.key())

    async def one() -> int:
        try:
            answer = await client.completions.create(model=MODEL, prompt="x", max_tokens=10)
        except openai.APIStatusError as exc:
            assert (exc.status_code, exc.code) == (402, "insufficient_entitlement")
            return 0
        assert answer.usage is not None
        return answer.usage.total_tokens

    served = await asyncio.gather(*(one() for _ in range(200)))  # 200 x 11 > 1,000
    ok = [n for n in served if n]
    # Near the end a call gets max_tokens lowered to what is left: fewer tokens, not more.
    assert all(1 <= n <= 11 for n in ok) and 0 < len(ok) < 200
    await m.settled()
    left = (await m.entitlement()).entitlement
    assert left >= 0 and 1_000 - left == sum(ok)
    assert sum(r["tokens"] for r in await receipts(db_url)) == 1_000 - left


async def test_unhealthy_endpoints_get_no_traffic(market: Market, db_url: str) -> None:
    m = market
    client = sdk(m, await m.key())
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE gateway_endpoints SET health = 'unhealthy'")  # as a probe would
        await asyncio.sleep(ENDPOINTS_CACHE_S)  # (a probe in the process clears it at once)
        calls = len(m.upstream.requests)
        with pytest.raises(openai.APIStatusError) as down:
            await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        assert (down.value.status_code, down.value.code) == (503, "no_healthy_endpoint")
        assert len(m.upstream.requests) == calls
        await conn.execute("UPDATE gateway_endpoints SET health = 'healthy'")
        await asyncio.sleep(ENDPOINTS_CACHE_S)
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    finally:
        await conn.close()


async def test_the_receipt_hashes_the_bytes_the_buyer_got(market: Market, db_url: str) -> None:
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}"}
    got: list[bytes] = []
    async with httpx.AsyncClient(timeout=10) as http:
        for stream in (False, True):
            body = {"model": MODEL, "messages": CHAT, "max_tokens": 6, "stream": stream,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            answer = await http.post(m.openai_url + "/chat/completions", json=body, headers=headers)
            assert answer.status_code == 200 and answer.headers["x-tokex-receipt"]
            got.append(answer.content)
        huge = await http.post(  # beyond the gateway's 4 MiB: refused before anything
            m.openai_url + "/chat/completions", content=b" " * (4 * 1024 * 1024 + 1),
            headers={**headers, "Content-Type": "application/json"},
        )  # fmt: skip
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "payload_too_large")
    assert got[1].endswith(b"data: [DONE]\n\n") and got[1].count(b"data: ") == 8
    rows = await receipts(db_url)
    assert sorted(bytes(r["response_sha256"]) for r in rows) == sorted(
        hashlib.sha256(b).digest() for b in got
    )


async def test_prompts_larger_than_the_exchanges_64_kib_limit(market: Market) -> None:
    client = sdk(market, await market.key())
    prompt = "word " * 14_000  # 70 KB: the gateway takes bodies up to 4 MiB
    done = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    assert done.usage is not None and done.usage.prompt_tokens == 14_000
    with pytest.raises(openai.APIStatusError) as big:  # 120 KB: more than is left
        await client.completions.create(model=MODEL, prompt=prompt * 2, max_tokens=2)
    assert (big.value.status_code, big.value.code) == (402, "insufficient_entitlement")


async def test_a_malformed_model_or_stream_options_is_a_400_and_reaches_nobody(
    market: Market, db_url: str
) -> None:
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}"}
    bodies = {
        "a NUL in model": {"model": MODEL + "\u0000", "messages": CHAT},
        "a control character in model": {"model": "llama\n", "messages": CHAT},
        "an endless model": {"model": "m" * 129, "messages": CHAT},
        "stream_options a list": {"model": MODEL, "messages": CHAT, "stream": True,
                                  "stream_options": [1, 2]},
        "stream_options a string": {"model": MODEL, "messages": CHAT, "stream": True,
                                    "stream_options": "x"},
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
        for what, body in bodies.items():
            r = await http.post("/chat/completions", json=body)
            error = r.json()["error"]
            assert (r.status_code, error["type"], error["code"]) == (
                400, "invalid_request_error", "invalid_request"), what  # fmt: skip
        fine = await http.post(
            "/chat/completions",
            json={"model": MODEL, "messages": CHAT, "stream": True, "stream_options": None},
        )
        assert fine.status_code == 200 and fine.text.endswith("data: [DONE]\n\n")
    assert len([r for r in m.upstream.requests if r.method == "POST"]) == 1
    assert len(await receipts(db_url)) == 1


async def _receipts_when(db_url: str, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        rows = await receipts(db_url)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} receipts")


async def _hang_up_after_the_first_chunk(m: Market) -> None:
    """A streamed call of 20 tokens whose buyer reads its first chunk and is gone."""
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 20, "stream": True}
    headers = {"Authorization": f"Bearer {await m.key()}"}
    async with (
        httpx.AsyncClient(base_url=m.openai_url, timeout=10) as http,
        http.stream("POST", "/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        async for _ in r.aiter_bytes():
            break


async def test_a_buyer_who_hangs_up_mid_stream_pays_the_prompt_and_what_was_generated(
    market: Market, db_url: str
) -> None:
    """Found in review: a buyer who read the answer and hung up before the usage came
    paid no prompt tokens (the cut-call rule), so a long prompt went unpaid. The gateway
    reads the rest of the stream for its usage and charges that."""
    m = market
    m.upstream.chunk_delay_s = 0.05  # 20 words: about a second of stream
    await _hang_up_after_the_first_chunk(m)
    (row,) = await _receipts_when(db_url, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens"]) == (3, 20, 23)


async def test_a_buyer_who_hangs_up_where_no_usage_comes_pays_the_chunks_passed_on(
    market: Market, db_url: str
) -> None:
    """An upstream that sends no usage: read to its end for none, the call is charged by
    the cut-call rule, the completion chunks the buyer was passed and no prompt."""
    m = market
    m.upstream.chunk_delay_s, m.upstream.mode = 0.05, Mode.NO_USAGE
    await _hang_up_after_the_first_chunk(m)
    (row,) = await _receipts_when(db_url, 1)
    assert row["prompt_tokens"] == 0 and 1 <= row["completion_tokens"] < 20


async def test_a_malformed_content_part_or_a_body_nested_too_deeply_is_an_openai_400(
    market: Market, db_url: str
) -> None:
    """Found in review: a part's `type` given as a list or an object, and a body of
    100,000 nested arrays, were 500s, not the OpenAI-shaped 400 a client can read."""
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}", "Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = {
        "type a list": (b'{"model": "%s", "messages": [{"role": "user", "content": '
                        b'[{"type": ["text"]}]}]}' % MODEL.encode()),
        "type an object": (b'{"model": "%s", "messages": [{"role": "user", "content": '
                           b'[{"type": {"a": 1}}]}]}' % MODEL.encode()),
        "nested arrays": deep,
        "nested in a field": b'{"model": "%s", "messages": %s}' % (MODEL.encode(), deep),
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
        for what, raw in bodies.items():
            r = await http.post("/chat/completions", content=raw)
            assert r.status_code == 400, (what, r.text[:200])
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error", what
            assert error["code"] in ("invalid_request", "unsupported_parameter"), what
    assert not [r for r in m.upstream.requests if r.method == "POST"]
    assert await receipts(db_url) == []


async def test_an_unknown_path_or_method_under_openai_v1_is_in_openais_shape(
    market: Market,
) -> None:
    """Found in review: the router's 404 and 405 came in tokex's `{"code", "message"}`,
    which the OpenAI SDKs cannot read, not the `{"error": ...}` README promises."""
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}"}
    cases = [("GET", "/chat/completions", 405), ("PUT", "/chat/completions", 405),
             ("POST", "/models", 405), ("POST", "/embeddings", 404),
             ("GET", "/nothing", 404)]  # fmt: skip
    async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
        for method, path, status in cases:
            r = await http.request(method, path, content=b"{}" if method != "GET" else None)
            assert r.status_code == status, (method, path, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "code"}, (method, path)
            assert error["code"] == ("not_found" if status == 404 else "method_not_allowed")
            assert error["type"] == ("not_found_error" if status == 404
                                     else "invalid_request_error")  # fmt: skip
            assert path in error["message"]
        tokex = await http.get(m.proc.base_url + "/v1/nothing")  # elsewhere: tokex's shape
        assert tokex.status_code == 404 and set(tokex.json()) == {"code", "message"}


def _requests_counted(base_url: str, route: str) -> dict[str, float]:
    """`tokex_http_requests_total` of POST `route`, by status, as the server reports it."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    line = re.compile(
        r'^tokex_http_requests_total\{method="POST",route="' + re.escape(route)
        + r'",status="(\d+)"\} (\S+)$', re.M,
    )  # fmt: skip
    return {status: float(value) for status, value in line.findall(text)}


async def test_a_buyer_who_hangs_up_before_the_body_is_in_is_no_500_and_charged_nothing(
    market: Market, db_url: str
) -> None:
    """Found in review: a client that declared a longer body than it sent and hung up
    was counted as a server error (the lean path sent nothing, recorded as a 500): it is
    a 499 now, and no call was made."""
    m = market
    url = httpx.URL(m.proc.base_url)
    assert url.port is not None
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: tokex\r\nAuthorization: Bearer "
        + (await m.key()).encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": '
    )
    await writer.drain()
    await asyncio.sleep(0.5)  # the key checked, the body awaited
    writer.close()
    await writer.wait_closed()
    route = "/openai/v1/chat/completions"
    deadline = asyncio.get_running_loop().time() + 10
    while "499" not in (counted := _requests_counted(m.proc.base_url, route)):
        assert asyncio.get_running_loop().time() < deadline, counted
        await asyncio.sleep(0.1)
    assert counted == {"499": 1.0}
    assert await receipts(db_url) == []
