"""The gateway bench runs, with tiny numbers, and says what it measured."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from typing import Any

import aiohttp

from tests.support.server import free_port
from tests.support.upstream import Upstream


async def test_the_gateway_bench_runs(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    args = [sys.executable, "-m", "ops.bench.gateway", "--seconds", "0.5", "--clients", "2"]
    done = await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "streaming:" in out and "not streaming:" in out
    # closed loop and then paced at half its rate, each upstream directly and through
    assert len(re.findall(r"calls/s \(\d+ calls, 0 failed\)", out)) == 8
    assert "streaming, paced at" in out and "not streaming, paced at" in out
    assert "added by the gateway at p50" in out
    assert "group commits:" in out and "not in the server's log" not in out


async def test_the_lean_stand_in_answers_as_the_stand_in_does() -> None:
    """The bench's lean upstream sends the stand-in's answers: the same JSON body, the
    same SSE events in order (the usage chunk only when asked for), models listed."""
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream_lean", "--port", str(port),
         "--model", "m1"]
    )  # fmt: skip
    try:
        with Upstream(models=["m1"]) as reference:
            async with aiohttp.ClientSession() as http:
                lean = f"http://127.0.0.1:{port}/v1"
                await _wait(http, f"{lean}/models")
                for path in ("/models", "/chat/completions", "/completions"):
                    for body in _BODIES[path]:
                        got = await _answer(http, lean + path, body)
                        want = await _answer(http, reference.base_url + path, body)
                        assert got == want, (path, body)
    finally:
        proc.terminate()
        proc.wait(10)


_CHAT = {"model": "m1", "messages": [{"role": "user", "content": "one two three"}],
         "max_tokens": 5}  # fmt: skip
_BODIES: dict[str, list[dict[str, Any] | None]] = {
    "/models": [None],
    "/chat/completions": [
        _CHAT, {**_CHAT, "stream": True},
        {**_CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ],
    "/completions": [{"model": "m1", "prompt": "a b", "max_tokens": 3, "stream": True}],
}  # fmt: skip


async def _answer(http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None) -> Any:
    """The answer without what differs by call (`created`, `id`): JSON, or the events."""
    method = http.get(url) if body is None else http.post(url, json=body)
    async with method as response:
        assert response.status == 200
        raw = await response.read()
    if response.content_type != "text/event-stream":
        return _same(json.loads(raw))
    events = [e for e in raw.split(b"\n\n") if e]
    return [e if e == b"data: [DONE]" else _same(json.loads(e[len(b"data: ") :])) for e in events]


def _same(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("created", "id")}


async def _wait(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the lean stand-in did not start")
