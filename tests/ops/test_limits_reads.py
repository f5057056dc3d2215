"""How `ops.limits.GuardedProtocol` feeds its reads to the parser, on an in-process server
with a small app: a run of bare CRLFs and a large read of pipelined requests in linear
time, a client that never reads its answers held to a short queue, the head cap exact
whatever the reads, and a body behind an upgrade the server does not take (h2c) handed
to the app as plain HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ops.config import ConnectionLimits
from ops.limits import PIPELINE_CAP, GuardedProtocol, guarded_protocol

GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers `<path> got <body length>`."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = scope["path"].encode() + b" got %d" % len(body)
    headers = [(b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


class Watch:
    """What the server's protocols did: parser feeds, the longest queue, the longest call."""

    def __init__(self) -> None:
        self.feeds = 0
        self.longest_pipeline = 0
        self.longest_call_s = 0.0
        self.protocols: list[GuardedProtocol] = []


@asynccontextmanager
async def serving(
    monkeypatch: pytest.MonkeyPatch, limits: ConnectionLimits | None = None
) -> AsyncIterator[tuple[int, Watch]]:
    watch = Watch()
    feed = HttpToolsProtocol.data_received

    def counted_feed(self: HttpToolsProtocol, data: bytes) -> None:
        watch.feeds += 1
        feed(self, data)
        watch.longest_pipeline = max(watch.longest_pipeline, len(self.pipeline))

    monkeypatch.setattr(HttpToolsProtocol, "data_received", counted_feed)
    cls = guarded_protocol(limits or ConnectionLimits())
    received = cls.data_received

    def timed(self: GuardedProtocol, data: bytes) -> None:
        started = time.perf_counter()
        received(self, data)
        watch.longest_call_s = max(watch.longest_call_s, time.perf_counter() - started)

    monkeypatch.setattr(cls, "data_received", timed)
    config = uvicorn.Config(app, http=cls, ws="none", log_level="warning", lifespan="off")
    config.load()
    state, loop = ServerState(), asyncio.get_running_loop()

    def factory() -> GuardedProtocol:
        protocol = cls(config=config, server_state=state, app_state={}, _loop=loop)
        watch.protocols.append(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], watch
    finally:
        server.close()
        for protocol in watch.protocols:
            protocol.close()


async def exchange(port: int, request: bytes, answers: int, chunk: int = 0) -> bytes:
    """Send `request` (in reads of `chunk` bytes if given) and read `answers` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for at in range(0, len(request), chunk or len(request)):
        writer.write(request[at : at + (chunk or len(request))])
        await writer.drain()
    data = b""
    try:
        while data.count(b"HTTP/1.1 ") < answers or not data.endswith((b"}", b"got 0", b"got 5")):
            more = await asyncio.wait_for(reader.read(65536), 5)
            if not more:
                break
            data += more
    finally:
        writer.close()
    return data


def bodies(data: bytes) -> list[bytes]:
    return [answer.split(b"\r\n\r\n", 1)[1] for answer in data.split(b"HTTP/1.1 ")[1:]]


async def test_a_run_of_bare_crlfs_before_each_request_line_is_read_in_linear_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was fed to the parser two bytes at a time with the rest of the read copied each
    time: four such requests in one send blocked the loop 0.3 to 0.5 s."""
    one = b"\r\n" * 32_000 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serving(monkeypatch) as (port, watch):
        answer = await exchange(port, one * 4, 4)
        assert answer.count(b"HTTP/1.1 200 ") == 4
        assert watch.feeds <= 4 * 2, watch.feeds  # a piece per head, not per empty line
        assert watch.longest_call_s < 0.1, watch.longest_call_s


async def test_a_large_read_of_pipelined_requests_is_answered_in_order_and_in_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests = b"".join(GET % n for n in range(10_000))  # 280 KB, several reads
    async with serving(monkeypatch) as (port, watch):
        answer = await exchange(port, requests, 10_000)
        assert bodies(answer) == [b"/%d got 0" % n for n in range(10_000)]
        assert watch.longest_pipeline <= PIPELINE_CAP
        assert watch.longest_call_s < 0.1, watch.longest_call_s


def send_never_reading(port: int, total: int) -> int:
    """Send pipelined requests on a socket that reads nothing; how much was taken."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(1.0)
    chunk, sent = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000, 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except TimeoutError:
        pass  # the server stopped reading: what we are here to see
    finally:
        sock.close()
    return sent


async def test_a_client_that_never_reads_its_answers_gets_a_short_queue_on_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every parsed request was queued, and each answer read on: one such client took a
    server from 91 MB to 1,369 MB."""
    async with serving(monkeypatch) as (port, watch):
        sent = await asyncio.to_thread(send_never_reading, port, 256 << 20)
        assert sent < 32 << 20, f"the server took {sent >> 20} MiB"
        assert watch.longest_pipeline <= PIPELINE_CAP
        unfed = max(len(protocol._unfed) for protocol in watch.protocols)
        assert unfed < 4 << 20
        # And an ordinary client is served meanwhile.
        assert bodies(await exchange(port, GET % 7, 1)) == [b"/7 got 0"]


@pytest.mark.parametrize("chunk", [0, 1000, 7])
async def test_the_head_cap_is_exact_with_empty_lines_before_it_whatever_the_reads(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    cap = 4096
    limits = ConnectionLimits(max_header_bytes=cap)
    request: Callable[[int], bytes] = lambda size: (  # noqa: E731
        b"\r\n" * 1000 + b"GET /h HTTP/1.1\r\nX: " + b"a" * (size - 2000 - 24) + b"\r\n\r\n"
    )
    assert len(request(cap)) == cap
    async with serving(monkeypatch, limits) as (port, _):
        assert (await exchange(port, request(cap), 1, chunk)).startswith(b"HTTP/1.1 200 ")
        refused = await exchange(port, request(cap + 1), 1, chunk)
        assert refused.startswith(b"HTTP/1.1 431 "), refused[:80]


async def test_a_body_behind_an_h2c_upgrade_reaches_the_app_as_plain_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body was fed apart from its head to a parser paused for the upgrade: 400."""
    upgrade = (
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    )
    post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + upgrade + b"\r\nhello"
    async with serving(monkeypatch) as (port, _):
        assert bodies(await exchange(port, post, 1)) == [b"/p got 5"]
        both = await exchange(port, post + GET % 2, 2)
        assert bodies(both) == [b"/p got 5", b"/2 got 0"]
        assert bodies(await exchange(port, post, 1, chunk=len(post) - 5)) == [b"/p got 5"]


async def test_pipelined_requests_with_bodies_past_the_queues_cap_get_their_bodies_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    post = b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    requests = b"".join(post % n if n % 2 else GET % n for n in range(300))
    async with serving(monkeypatch) as (port, watch):
        answer = await exchange(port, requests, 300)
        assert bodies(answer) == [b"/%d got %d" % (n, 5 * (n % 2)) for n in range(300)]
        assert watch.longest_pipeline <= PIPELINE_CAP
