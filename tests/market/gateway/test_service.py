"""The gateway's client to providers' endpoints (`upstream_session`): a connection idle
for the upstream's own timeout is never sent a call.

The stand-in here is an HTTP/1.1 server with keep-alive that, like uvicorn when its idle
timeout fires just as a request arrives, resets a connection that idled for `IDLE_S`
and more instead of answering on it. The race is made certain: it closes only when the
next request comes, so a client that reuses such a connection always sees the reset."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from market.gateway.errors import UnsupportedParameter
from market.gateway.service import parse_body, upstream_session

IDLE_S = 0.5  # the stand-in's idle timeout
BODY = b'{"ok": true}'


@dataclass
class IdleClosingServer:
    url: str
    connections: int = 0
    resets: int = 0


async def _serve(server: IdleClosingServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
    server.connections += 1
    answered_at: float | None = None
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if answered_at is not None and time.monotonic() - answered_at >= IDLE_S:
                server.resets += 1  # closed with the request unread: a reset (RST)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )
            await writer.drain()
            answered_at = time.monotonic()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


@pytest.fixture
async def idle_closing() -> AsyncIterator[IdleClosingServer]:
    state = IdleClosingServer(url="")
    server = await asyncio.start_server(lambda r, w: _serve(state, r, w), "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"
    async with server:
        yield state


async def _call(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url, data=b'{"model": "m"}') as response:
        await response.read()
        return response.status


async def test_a_connection_idle_for_the_upstreams_timeout_is_not_sent_a_call(
    idle_closing: IdleClosingServer,
) -> None:
    http = upstream_session(timeout_s=5, idle_s=IDLE_S / 2)
    try:
        assert await _call(http, idle_closing.url) == 200
        assert await _call(http, idle_closing.url) == 200  # at once: the same connection
        assert idle_closing.connections == 1
        await asyncio.sleep(IDLE_S * 1.5)
        assert await _call(http, idle_closing.url) == 200  # a new connection, not a reset
        assert (idle_closing.connections, idle_closing.resets) == (2, 0)
    finally:
        await http.close()


async def test_the_stand_in_resets_a_call_on_a_connection_idle_too_long(
    idle_closing: IdleClosingServer,
) -> None:
    """What the setting prevents: a client that reuses connections idle for longer than
    the upstream's timeout has its call reset unanswered (a 502 at the gateway)."""
    http = upstream_session(timeout_s=5, idle_s=IDLE_S * 10)
    try:
        assert await _call(http, idle_closing.url) == 200
        await asyncio.sleep(IDLE_S * 1.5)
        with pytest.raises(aiohttp.ClientError):
            await _call(http, idle_closing.url)
        assert idle_closing.resets == 1
    finally:
        await http.close()


def test_a_legacy_completion_takes_one_prompt_and_16_tokens_when_it_names_no_cap() -> None:
    """Found in review: a list of prompts was completed each and paid as one, and a
    completion naming no `max_tokens` went upstream with 4,096 (OpenAI's is 16)."""
    with pytest.raises(UnsupportedParameter):
        parse_body(b'{"model": "m", "prompt": ["a", "b"]}', "/completions")
    with pytest.raises(UnsupportedParameter):
        parse_body(b'{"model": "m", "prompt": [[1, 2], [3]]}', "/completions")
    one = parse_body(b'{"model": "m", "prompt": [1, 2, 3]}', "/completions")  # token ids
    assert one["max_tokens"] == 16
    assert parse_body(b'{"model": "m", "prompt": "a", "max_tokens": 40}', "/completions")[
        "max_tokens"] == 40  # fmt: skip
    chat = parse_body(b'{"model": "m", "messages": []}', "/chat/completions")
    assert "max_tokens" not in chat  # chat: the gateway's own default, as before


def test_a_content_part_the_gateway_cannot_bound_is_a_400() -> None:
    pdf = {"type": "file", "file": {"file_id": "file-1"}}
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": [pdf]}]})
    with pytest.raises(UnsupportedParameter, match="`file`"):
        parse_body(raw.encode())
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    ok = json.dumps({"model": "m", "messages": [{"role": "user", "content": [image]}]})
    assert parse_body(ok.encode())["messages"][0]["content"] == [image]


def test_a_content_part_whose_type_is_a_list_or_an_object_is_a_400() -> None:
    """Found in review: such a `type` raised TypeError (unhashable) in the gateway: a 500."""
    for kind in (["text"], {"a": 1}):
        part = {"type": kind, "text": "hi"}
        raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]})
        with pytest.raises(UnsupportedParameter) as info:
            parse_body(raw.encode())
        assert info.value.code == "unsupported_parameter"


def test_a_body_nested_too_deeply_is_a_400_not_a_recursion_error() -> None:
    """Found in review: msgspec raises RecursionError (not DecodeError) on it: a 500."""
    deep = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for raw in (deep, b"[" * 100_000):
        with pytest.raises(UnsupportedParameter) as info:
            parse_body(raw)
        assert info.value.code == "invalid_request"
