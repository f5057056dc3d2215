"""Connection limits of a real `tokex serve`: idle and half-sent connections are closed in
time, a busy server refuses a connection past its cap in words, and thousands of idle
sockets (loopback only) do not keep a new client from being served."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect_async
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from market.stream import MAX_MESSAGE_CHARS
from tests.support.server import ServerProcess

WAIT_S = 5.0  # how long a test waits for the server to close a connection


@contextmanager
def serving(
    db_url: str,
    tmp_path: Path,
    env: dict[str, int] | None = None,
    open_file_limit: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        env={k: str(v) for k, v in (env or {}).items()},
        open_file_limit=open_file_limit,
        extra_args=extra_args,
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def connect(proc: ServerProcess) -> socket.socket:
    return socket.create_connection((proc.host, proc.port), timeout=WAIT_S)


def read_until_closed(sock: socket.socket, timeout_s: float = WAIT_S) -> bytes | None:
    """Everything the server sends until it closes; None if it is still open after the wait."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_a_silent_connection_and_a_half_sent_request_are_closed(
    db_url: str, tmp_path: Path
) -> None:
    with serving(db_url, tmp_path, env={"TOKEX_HEADER_TIMEOUT_MS": 500}) as proc:
        silent = connect(proc)
        half = connect(proc)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        assert read_until_closed(silent) == b""
        answer = read_until_closed(half)
        assert time.monotonic() - started < 3.0
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 ")
        assert b'"code":"request_timeout"' in answer
        # A whole request in time is answered as ever.
        assert httpx.get(proc.base_url + "/health").status_code == 200


def test_a_request_head_past_the_cap_is_refused(db_url: str, tmp_path: Path) -> None:
    with serving(db_url, tmp_path, env={"TOKEX_MAX_HEADER_BYTES": 4096}) as proc:
        big = connect(proc)
        big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(10):  # 10 KiB of headers, never ending
                big.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                time.sleep(0.01)
        except OSError:
            pass  # closed on us: what we are here to see
        answer = read_until_closed(big)
        assert answer is not None and answer.startswith(b"HTTP/1.1 431 ")
        assert b'"code":"headers_too_large"' in answer
        fine = httpx.get(proc.base_url + "/health", headers={"X-Filler": "a" * 3000})
        assert fine.status_code == 200


def test_a_stalled_body_and_an_idle_keep_alive_connection_are_closed(
    db_url: str, tmp_path: Path
) -> None:
    env = {"TOKEX_BODY_TIMEOUT_MS": 500, "TOKEX_KEEP_ALIVE_TIMEOUT_MS": 500}
    with serving(db_url, tmp_path, env=env) as proc:
        stalled = connect(proc)
        stalled.sendall(
            b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"role":'
        )
        assert read_until_closed(stalled) is not None  # closed, not left waiting

        idle = connect(proc)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(idle)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")


def test_past_the_cap_idle_connections_make_room_and_a_busy_server_refuses(
    db_url: str, tmp_path: Path
) -> None:
    env = {"TOKEX_MAX_CONNECTIONS": 3, "TOKEX_BODY_TIMEOUT_MS": 20_000}
    with serving(db_url, tmp_path, env=env) as proc:
        idle = [connect(proc) for _ in range(3)]
        time.sleep(0.2)
        # The cap is full of idle connections: the longest-quiet one gives way.
        assert httpx.get(proc.base_url + "/health").status_code == 200
        assert read_until_closed(idle[0]) == b""
        # Three requests in the app (their bodies still coming): none can give way.
        busy = [connect(proc) for _ in range(3)]
        for sock in busy:
            sock.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        refused = read_until_closed(connect(proc))
        assert refused is not None and refused.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1\r\n" in refused
        assert b'"code":"too_many_connections"' in refused
        busy[0].close()
        time.sleep(0.2)
        assert httpx.get(proc.base_url + "/health").status_code == 200
        for sock in idle + busy:
            sock.close()


IDLE_SOCKETS = 5_000


@pytest.fixture
def many_files() -> Iterator[None]:
    """Raise this process's soft open-file limit so that it can hold the idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = IDLE_SOCKETS + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the open-file hard limit ({hard}) is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_5000_idle_sockets_do_not_stop_a_new_client(
    db_url: str, tmp_path: Path, many_files: None
) -> None:
    """The server's open-file limit is 4,096 (as where 4,296 idle sockets made every new
    client get a reset): it caps itself below that and closes idle connections for new ones."""
    with serving(db_url, tmp_path, open_file_limit=4_096) as proc:
        sockets: list[socket.socket] = []
        try:
            for _ in range(IDLE_SOCKETS):
                sockets.append(connect(proc))
            started = time.monotonic()
            response = httpx.get(proc.base_url + "/health", timeout=10.0)
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 5.0
            # Some idle ones were closed to make room: the oldest.
            assert read_until_closed(sockets[0]) == b""
        finally:
            for sock in sockets:
                sock.close()
        assert httpx.get(proc.base_url + "/health").status_code == 200


def test_a_websocket_frame_past_the_streams_limit_is_closed_1009_and_the_server_serves_on(
    db_url: str, tmp_path: Path
) -> None:
    """uvicorn's default took 16 MiB frames (16 KiB on the wire, deflated) before the
    stream refused them: 100 such connections grew the server by gigabytes. The largest
    message the stream reads (4,096 characters, 4 bytes each in UTF-8) still reaches it,
    one longer still gets its `message_too_large` frame; 20 KiB closes the connection
    with 1009, and nothing is deflated."""
    with serving(db_url, tmp_path) as proc:
        url = proc.base_url.replace("http://", "ws://") + "/v1/stream"
        with ws_connect(url, compression="deflate", max_size=None) as ws:
            assert "sec-websocket-extensions" not in ws.response.headers  # no deflate
            ws.send("\U0001f600" * MAX_MESSAGE_CHARS)  # 16 KiB of UTF-8: read (not JSON)
            assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "invalid_message"
            ws.send("z" * (MAX_MESSAGE_CHARS + 1))
            assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "message_too_large"
            ws.send("z" * 20 * 1024)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert httpx.get(proc.base_url + "/health").status_code == 200
        with ws_connect(url) as ws:  # and the stream takes new connections
            ws.send(json.dumps({"op": "subscribe", "channel": "trades", "instrument": "x"}))
            assert json.loads(ws.recv(timeout=WAIT_S))["type"] in ("subscribed", "error")


#: The websocket cap is per process (each gateway process of `serve --workers N` has its
#: own, as its own file descriptors): these tests count one process's.
ONE_PROCESS = ("--workers", "0")


def test_websockets_past_their_cap_are_refused_503_and_http_is_served(
    db_url: str, tmp_path: Path
) -> None:
    """Websockets leave the connection cap when they upgrade, so without a cap of their
    own they took every file descriptor (and `/health` got resets)."""
    env = {"TOKEX_MAX_WEBSOCKETS": 3}
    with serving(db_url, tmp_path, env=env, extra_args=ONE_PROCESS) as proc:
        url = proc.base_url.replace("http://", "ws://") + "/v1/stream"
        with ExitStack() as stack:
            first, *_ = [stack.enter_context(ws_connect(url)) for _ in range(3)]
            with pytest.raises(InvalidStatus) as refused, ws_connect(url):
                pass
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["retry-after"] == "1"
            assert b'"code":"too_many_websockets"' in refused.value.response.body
            assert httpx.get(proc.base_url + "/health").status_code == 200
            first.close()
            time.sleep(0.2)
            stack.enter_context(ws_connect(url))  # a place came free


async def test_websockets_by_default_take_only_a_share_of_the_open_file_limit(
    db_url: str, tmp_path: Path
) -> None:
    """At an open-file limit of 600, 579 websockets made `/health` fail with a reset. The
    default cap is half of what the limit leaves for client sockets (172 of 344)."""
    with serving(db_url, tmp_path, open_file_limit=600, extra_args=ONE_PROCESS) as proc:
        url = proc.base_url.replace("http://", "ws://") + "/v1/stream"
        opened: list[Any] = []
        refused = 0
        for _ in range(400):
            try:
                opened.append(await asyncio.wait_for(ws_connect_async(url), WAIT_S))
            except InvalidStatus as exc:
                assert exc.response.status_code == 503
                refused += 1
        try:
            assert len(opened) == 172 and refused == 400 - 172
            idle = [connect(proc) for _ in range(300)]  # and HTTP keeps its room
            async with httpx.AsyncClient() as client:
                assert (await client.get(proc.base_url + "/health")).status_code == 200
            for sock in idle:
                sock.close()
        finally:
            await asyncio.gather(*(ws.close() for ws in opened))
