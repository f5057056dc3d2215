"""`/openai/v1` through the gateway processes of `tokex serve --workers 2`: the openai SDK
streaming and not, concurrent calls through both gateways never overdrawing (the desk in
the sequencer process decides every reservation), and a gateway process SIGKILLed
mid-stream whose calls, and only its, are closed as cut by a crash, charged once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from schemas.gateway import Ending
from tests.market.gateway.gateway_support import MODEL, Market, open_market
from tests.market.gateway.test_gateway_e2e import receipts, sdk  # each sdk: its own connections
from tests.support.server import ServerProcess
from tests.support.upstream import Mode, Upstream

CHAT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens upstream
TWO = ("--workers", "2")


async def two_gateways(
    db_url: str, tmp_path: Path, upstream: Upstream, tokens: int
) -> AsyncIterator[Market]:
    """A market on `serve --workers 2`, once both gateway processes have started."""
    env = {"TOKEX_GATEWAY_PROGRESS_MS": "20"}
    async for m in open_market(db_url, tmp_path, upstream, tokens=tokens, env=env,
                               extra_args=TWO):  # fmt: skip
        await both_gateways_up(m.proc)
        yield m


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in two_gateways(db_url, tmp_path, upstream, tokens=100_000):
        yield m


@pytest.fixture
async def small(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in two_gateways(db_url, tmp_path, upstream, tokens=1_000):
        yield m


async def both_gateways_up(proc: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while proc.log_path.read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, proc.log()
        await asyncio.sleep(0.05)


def gateways(proc: ServerProcess) -> dict[str, tuple[int, int]]:
    """Every gateway process the server's log says it started: instance -> (slot, pid)."""
    log = proc.log_path.read_text()
    found = re.findall(r"gateway (\d+) started \(pid (\d+)\) as (\S+?)\"", log)
    return {instance: (int(slot), int(pid)) for slot, pid, instance in found}


async def test_the_openai_sdk_streaming_and_not_through_the_gateway_processes(
    market: Market, db_url: str
) -> None:
    m = market
    key = await m.key()
    before = (await m.entitlement()).entitlement
    for _ in range(4):
        client = sdk(m, key)
        assert [x.id for x in (await client.models.list()).data] == [MODEL]
        answer = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
        assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
        assert answer.usage is not None and answer.usage.total_tokens == 8
        stream = await client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=4, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "w0 w1 w2 w3")  # fmt: skip
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
        done = await client.completions.create(model=MODEL, prompt="a b", max_tokens=3)
        assert done.choices[0].text == "w0 w1 w2" and done.usage is not None
        streamed = await client.completions.create(
            model=MODEL, prompt="a", max_tokens=2, stream=True
        )
        assert "".join([c.choices[0].text async for c in streamed if c.choices]) == "w0 w1"
        with pytest.raises(openai.APIStatusError) as none:  # the errors of one process
            await client.chat.completions.create(model="other", messages=CHAT, max_tokens=2)
        assert (none.value.status_code, none.value.code) == (402, "insufficient_entitlement")
        await client.close()
    await m.settled()
    charged = 4 * (8 + 7 + (2 + 3) + (1 + 2))
    assert before - (await m.entitlement()).entitlement == charged
    rows = await receipts(db_url)
    assert len(rows) == 16 and sum(r["tokens"] for r in rows) == charged
    assert {r["ending"] for r in rows} == {"seen"} and all(r["transaction_id"] for r in rows)


async def test_concurrent_calls_through_both_gateways_never_overdraw(
    small: Market, db_url: str
) -> None:
    m = small
    key = await m.key()
    m.upstream.chunk_delay_s = 0.02  # streams long enough to be marked, by their gateway
    owners: set[str] = set()
    running = True

    async def watch() -> None:
        conn = await asyncpg.connect(db_url)
        try:
            while running:
                rows = await conn.fetch("SELECT DISTINCT instance_id FROM gateway_calls")
                owners.update(r["instance_id"] for r in rows)
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    async def one(client: openai.AsyncOpenAI) -> int:
        try:
            stream = await client.completions.create(
                model=MODEL, prompt="x", max_tokens=10, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [c async for c in stream]
        except openai.APIStatusError as exc:
            assert (exc.status_code, exc.code) == (402, "insufficient_entitlement")
            return 0
        assert chunks[-1].usage is not None
        return chunks[-1].usage.total_tokens

    watcher = asyncio.create_task(watch())
    served: list[int] = []
    for _ in range(20):  # rounds of 100 at once on new connections, until none is served
        clients = [sdk(m, key) for _ in range(10)]
        for client in clients:  # a connection each, one after another: a burst of them
            await client.models.list()  # is often accepted by one gateway process alone
        now = await asyncio.gather(*(one(clients[n % 10]) for n in range(100)))
        for client in clients:
            await client.close()
        served += now
        if not any(now):
            break
    running = False
    await watcher
    ok = [n for n in served if n]
    assert all(1 <= n <= 11 for n in ok) and 0 < len(ok) < len(served)
    # both gateway processes served calls: each owns the calls it streams
    assert {o.split("-")[0] for o in owners} == {"gw0", "gw1"}, owners
    await m.settled()
    left = (await m.entitlement()).entitlement
    assert left >= 0 and 1_000 - left == sum(ok)
    assert sum(r["tokens"] for r in await receipts(db_url)) == 1_000 - left


async def test_calls_that_fail_upstream_give_their_reservation_back_at_the_desk(
    small: Market, db_url: str
) -> None:
    """Each failed call reserved about a tenth of the entitlement at the desk: had the
    releases of unserved calls not reached it, the calls after them would get 402."""
    m = small
    key = await m.key()
    clients = [sdk(m, key) for _ in range(3)]
    m.upstream.mode = Mode.ERROR_500
    for n in range(30):
        with pytest.raises(openai.APIStatusError) as failed:
            await clients[n % 3].completions.create(model=MODEL, prompt="x", max_tokens=60)
        assert failed.value.status_code == 502
    m.upstream.mode = Mode.OK
    await asyncio.sleep(0.5)  # the releases go at once, one request per gateway at a time
    for n in range(6):
        done = await clients[n % 3].completions.create(model=MODEL, prompt="x", max_tokens=60)
        assert done.usage is not None and done.usage.total_tokens == 61
    await m.settled()
    assert (await m.entitlement()).entitlement == 1_000 - 6 * 61
    assert sum(r["tokens"] for r in await receipts(db_url)) == 6 * 61
    for client in clients:
        await client.close()


class Stream:
    """One streaming call on a connection of its own, read to its end or its break."""

    def __init__(self, m: Market, key: str) -> None:
        self.m, self.key = m, key
        self.receipt_id = ""
        self.lines: list[str] = []
        self.broken = False
        self.started = asyncio.Event()

    async def run(self) -> None:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 60, "stream": True}
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.m.openai_url, headers=headers,
                                     timeout=20) as http:  # fmt: skip
            try:
                async with http.stream("POST", "/chat/completions", json=body) as r:
                    self.receipt_id = r.headers["x-tokex-receipt"]
                    self.started.set()
                    async for line in r.aiter_lines():
                        self.lines.append(line)
            except httpx.TransportError:
                self.broken = True
            finally:
                self.started.set()


async def open_calls(conn: asyncpg.Connection) -> dict[str, tuple[str, int]]:
    rows = await conn.fetch("SELECT receipt_id, instance_id, chunks FROM gateway_calls")
    return {r["receipt_id"]: (r["instance_id"], r["chunks"]) for r in rows}


async def test_a_gateway_killed_mid_stream_has_only_its_calls_closed_as_cut_by_a_crash_once(
    market: Market, db_url: str
) -> None:
    m = market
    key = await m.key()
    m.upstream.chunk_delay_s = 0.05  # 60 chunks: 3 s
    before = (await m.entitlement()).entitlement
    conn = await asyncpg.connect(db_url)
    try:
        streams: list[Stream] = []
        tasks: list[asyncio.Task[None]] = []
        marks: dict[str, tuple[str, int]] = {}
        for _ in range(4):  # until both gateways stream (the kernel picks per connection)
            batch = [Stream(m, key) for _ in range(6)]
            streams += batch
            for s in batch:  # one connection after another: a burst of them is often
                tasks.append(asyncio.create_task(s.run()))  # accepted by one gateway alone
                await s.started.wait()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                marks = await open_calls(conn)
                if all(marks.get(s.receipt_id, ("", 0))[1] >= 3 for s in streams):
                    break
                await asyncio.sleep(0.02)
            if len({owner for owner, _ in marks.values()}) == 2:
                break
        owners = {owner for owner, _ in marks.values()}
        assert len(owners) == 2, marks
        started = gateways(m.proc)
        victim = min(owners)
        slot, pid = started[victim]
        os.kill(pid, signal.SIGKILL)  # mid-stream, its calls' progress recorded
        cut = {s.receipt_id for s in streams if marks[s.receipt_id][0] == victim}
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 20
        while len([s for s, _ in gateways(m.proc).values() if s == slot]) < 2:
            assert time.monotonic() < deadline, m.proc.log()
            await asyncio.sleep(0.1)
        for _ in range(100):  # its calls are closed by the sequencer process
            rows = {r["receipt_id"]: r for r in await receipts(db_url)}
            if len(rows) == len(streams) and all(r["transaction_id"] for r in rows.values()):
                break
            await asyncio.sleep(0.2)
        assert len(rows) == len(streams)
        for s in streams:
            r = rows[s.receipt_id]
            if s.receipt_id in cut:  # broke off for its buyer; closed by its last mark
                assert s.broken or s.lines[-2:] != ["data: [DONE]", ""]
                assert r["ending"] == "crash" and r["transaction_id"] is not None
                assert r["prompt_tokens"] == 0 and r["tokens"] == r["completion_tokens"]
                assert marks[s.receipt_id][1] <= r["tokens"] <= 60
            else:  # the other gateway's calls went on to their end, untouched
                assert not s.broken and s.lines[-2:] == ["data: [DONE]", ""]
                assert r["ending"] == "seen" and r["tokens"] == 3 + 60
        assert Ending.CRASH.value == "crash"
        assert await conn.fetchval("SELECT count(*) FROM gateway_calls") == 0
        await m.settled()
        burned = before - (await m.entitlement()).entitlement
        assert burned == sum(r["tokens"] for r in rows.values())

        # a restart of the whole thing closes nothing more and charges nothing again
        await asyncio.to_thread(m.proc.stop)
        await asyncio.to_thread(m.proc.start)
        await m.settled()
        assert before - (await m.entitlement()).entitlement == burned
        assert len(await receipts(db_url)) == len(streams)
    finally:
        await conn.close()
