"""A call's receipt is durable before its last byte reaches the buyer, a charge that
cannot be committed reaches a stream's buyer as an OpenAI-style error in place of the
tail (a non-streamed body goes anyway, marked pending, and is charged once), and a call
cut by a crash is charged, once, by what the exchange had recorded of it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from ledger.receipts import receipt_hash
from ledger.store import recomputed_balances
from market.clearing.rules import delivery_split
from schemas.gateway import Ending
from tests.market.gateway.gateway_support import FEE_BPS, MODEL, RECEIPTS, Market, open_market
from tests.support.upstream import Mode, Upstream

CHAT = [{"role": "user", "content": "one two three"}]
#: Settlement "at least once a minute": a receipt found before the tail can only have
#: been committed by the call's own group commit, not by the periodic flush.
SLOW_FLUSH = {"TOKEX_GATEWAY_FLUSH_MS": "60000"}


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, tokens=100_000, env=SLOW_FLUSH):
        yield m


@pytest.fixture
async def quick(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    """Failed charges retried every 100 ms; no progress marks (their ops would meet the
    lost database first, and it would have healed by the call's end)."""
    env = {"TOKEX_GATEWAY_PROGRESS_MS": "60000"}
    async for m in open_market(db_url, tmp_path, upstream, tokens=100_000, env=env):
        yield m


async def receipt(conn: asyncpg.Connection, receipt_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT tokens, charged_in AS transaction_id FROM {RECEIPTS} WHERE receipt_id = $1",
        receipt_id,
    )


async def charged(db_url: str, receipt_id: str) -> tuple[asyncpg.Record, int, int]:
    """The receipt once its charge has committed (20 s at most), with the number of
    delivery links and of receipts stored."""
    conn = await asyncpg.connect(db_url)
    try:
        for _ in range(100):
            row = await receipt(conn, receipt_id)
            if row is not None and row["transaction_id"] is not None:
                links = await conn.fetchval("SELECT count(*) FROM gateway_delivery_receipts")
                return row, links, await conn.fetchval("SELECT count(*) FROM gateway_receipts")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise AssertionError(f"receipt {receipt_id} not charged in time")


async def cut_the_database(db_url: str) -> None:
    """Terminate the exchange's connections: its charges fail until it has reopened."""
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


async def test_the_receipt_is_committed_before_the_body_and_before_done(
    market: Market, db_url: str
) -> None:
    m = market
    headers = {"Authorization": f"Bearer {await m.key()}"}
    conn = await asyncpg.connect(db_url)
    try:
        async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
            plain = {"model": MODEL, "messages": CHAT, "max_tokens": 5}
            answer = await http.post("/chat/completions", json=plain)
            assert answer.status_code == 200 and answer.json()["usage"]["total_tokens"] == 8
            committed = await receipt(conn, answer.headers["x-tokex-receipt"])
            assert committed is not None and committed["tokens"] == 8
            await m.settled()  # its charge follows its receipt's journal commit
            charged = await receipt(conn, answer.headers["x-tokex-receipt"])
            assert charged is not None and charged["transaction_id"] is not None

            m.upstream.chunk_delay_s = 0.05
            streamed = {**plain, "max_tokens": 4, "stream": True}
            async with http.stream("POST", "/chat/completions", json=streamed) as r:
                rid = r.headers["x-tokex-receipt"]
                seen_before_done: list[asyncpg.Record | None] = []
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        break
                    if line.startswith("data: "):
                        seen_before_done.append(await receipt(conn, rid))
            # While the stream's content came, its receipt was not there yet; the moment
            # [DONE] arrives it is.
            assert seen_before_done[0] is None
            done = await receipt(conn, rid)
            assert done is not None and done["tokens"] == 3 + 4
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def receipts_refused(db_url: str) -> AsyncIterator[None]:
    """The database refuses every new receipt (a constraint no row meets) until the block
    ends: the receipt journal's writes fail, as in an outage, while all else works."""
    admin = await asyncpg.connect(db_url)
    try:
        await admin.execute(
            "ALTER TABLE gateway_receipts_owed ADD CONSTRAINT refused CHECK (false) NOT VALID"
        )
        try:
            yield
        finally:
            await admin.execute("ALTER TABLE gateway_receipts_owed DROP CONSTRAINT refused")
    finally:
        await admin.close()


async def test_a_stream_outlives_the_exchange_losing_its_connections_and_is_charged_once(
    quick: Market, db_url: str
) -> None:
    """The exchange's connections are cut mid-stream (the sequencer's among them): the
    receipt journal writes on a new connection, so the stream ends whole, [DONE] and all,
    and its charge commits once the exchange has reopened."""
    m = quick
    headers = {"Authorization": f"Bearer {await m.key()}"}
    m.upstream.chunk_delay_s = 0.3
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 4, "stream": True}
    events: list[str] = []
    async with (
        httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=20) as http,
        http.stream("POST", "/chat/completions", json=body) as r,
    ):
        rid = r.headers["x-tokex-receipt"]
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 1:
                    await cut_the_database(db_url)
    assert events[-1] == "[DONE]"
    row, links, _ = await charged(db_url, rid)
    assert row["tokens"] == 7 and links == 1


async def test_a_charge_that_cannot_commit_is_an_error_in_place_of_the_tail(
    quick: Market, db_url: str
) -> None:
    m = quick
    headers = {"Authorization": f"Bearer {await m.key()}"}
    m.upstream.chunk_delay_s = 0.3
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    events: list[str] = []
    async with (
        httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=20) as http,
        http.stream("POST", "/chat/completions", json=body) as r,
    ):
        rid = r.headers["x-tokex-receipt"]
        async with receipts_refused(db_url):
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "charge_unavailable"
    assert last["error"]["type"] == "service_unavailable"
    content = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in content)  # the usage chunk was held back with [DONE]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "w0 w1 w2 w3"

    # The call was served: its receipt is written again and charged once the database
    # takes it (its usage: 3 + 4), once.
    row, _, stored = await charged(db_url, rid)
    assert row["tokens"] == 7 and stored == 1


async def test_a_non_streamed_answer_whose_charge_cannot_commit_is_sent_and_charged_once(
    quick: Market, db_url: str
) -> None:
    """A 503 in place of the body would be retried by the SDK (as it retries by default):
    served and charged twice, the first answer never seen. The body goes, marked
    pending, and its one receipt is charged once the exchange has healed."""
    m = quick
    m.upstream.mode, m.upstream.hang_s = Mode.TIMEOUT, 1.0  # answers after 1 s
    client = openai.AsyncOpenAI(base_url=m.openai_url, api_key=await m.key(), timeout=20)

    async with receipts_refused(db_url):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=CHAT, max_tokens=5
        )
    answer = raw.parse()
    assert raw.status_code == 200 and raw.headers.get("x-tokex-charge") == "pending"
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    assert len([r for r in m.upstream.requests if r.method == "POST"]) == 1  # no retry
    row, _, stored = await charged(db_url, raw.headers["x-tokex-receipt"])
    assert row["tokens"] == 3 + 5 and stored == 1


@pytest.fixture
async def marked(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    """Streaming calls' progress recorded every 50 ms."""
    env = {"TOKEX_GATEWAY_PROGRESS_MS": "50"}
    async for m in open_market(db_url, tmp_path, upstream, tokens=100_000, env=env):
        yield m


async def recorded(conn: asyncpg.Connection, receipt_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT chunks, completion_tokens FROM gateway_calls WHERE receipt_id = $1", receipt_id
    )


async def zero_sums(conn: asyncpg.Connection) -> dict[str, int]:
    sums: dict[str, int] = {}
    for account, (available, held) in (await recomputed_balances(conn)).items():
        sums[account.asset] = sums.get(account.asset, 0) + available + held
    return sums


async def test_a_call_cut_by_a_crash_is_charged_by_its_last_progress_mark_once(
    marked: Market, db_url: str
) -> None:
    m = marked
    headers = {"Authorization": f"Bearer {await m.key()}"}
    m.upstream.chunk_delay_s = 0.05  # 60 chunks: 3 s
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 60, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    conn = await asyncpg.connect(db_url)
    try:
        async with httpx.AsyncClient(base_url=m.openai_url, headers=headers, timeout=10) as http:
            # A call marked while it streams, then seen to its end: its receipt took its row.
            async with http.stream(
                "POST", "/chat/completions", json={**body, "max_tokens": 20}
            ) as r:
                done_id, lines, was_marked = r.headers["x-tokex-receipt"], [], False
                async for line in r.aiter_lines():
                    lines.append(line)
                    was_marked = was_marked or await recorded(conn, done_id) is not None
            assert lines[-2:] == ["data: [DONE]", ""] and was_marked
            await m.settled()
            assert await recorded(conn, done_id) is None  # its charge deleted its row
            before, cash_before = await m.entitlement(), await m.provider_cash()
            so_far = await m.delivered()

            async with http.stream("POST", "/chat/completions", json=body) as r:
                rid, events = r.headers["x-tokex-receipt"], 0
                async for line in r.aiter_lines():
                    events += line.startswith("data: ")
                    mark = await recorded(conn, rid) if events >= 5 else None
                    if mark is not None and mark["chunks"] >= 5:
                        m.proc.kill()  # SIGKILL mid-stream, its progress recorded
                        break
        mark = await recorded(conn, rid)  # what the exchange had recorded when it crashed
        assert mark is not None and mark["completion_tokens"] is None  # no usage came
        chunks = mark["chunks"]
        assert 5 <= chunks < 60

        await asyncio.to_thread(m.proc.start)  # it serves once the cut call is closed
        after = await m.entitlement()
        assert before.entitlement - after.entitlement == chunks  # one token a chunk, no prompt
        split = delivery_split(chunks, before.entitlement, before.escrow, FEE_BPS, so_far)
        assert (after.delivered - before.delivered, after.released - before.released) == (
            chunks, split.released)  # fmt: skip
        assert await m.provider_cash() - cash_before == split.paid  # pro rata less the fee
        view = await m.buyer.receipt(rid)
        assert view.receipt.ending is Ending.CRASH and view.transaction_id is not None
        r_ = view.receipt
        assert (r_.prompt_tokens, r_.completion_tokens, r_.tokens) == (0, chunks, chunks)
        assert view.receipt_sha256 == receipt_hash(r_)
        assert (await m.buyer.receipt(done_id)).receipt.ending is Ending.SEEN
        assert await conn.fetchval("SELECT count(*) FROM gateway_calls") == 0
        assert set((await zero_sums(conn)).values()) == {0}

        m.proc.kill()  # a second crash and restart charge nothing more
        await asyncio.to_thread(m.proc.start)
        assert (await m.entitlement()).entitlement == after.entitlement
        assert await m.provider_cash() - cash_before == split.paid
        assert await conn.fetchval("SELECT count(*) FROM gateway_receipts") == 2
    finally:
        await conn.close()
