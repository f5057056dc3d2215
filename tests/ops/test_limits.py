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


def read_for(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends within `seconds` (or until it closes)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def head_of(size: int) -> bytes:
    """A request whose line and headers are `size` bytes."""
    start, end = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def test_a_request_head_past_the_cap_in_one_read_is_refused(db_url: str, tmp_path: Path) -> None:
    """The cap held only for heads that came in pieces: one of 66,000 to 100,000 bytes
    sent at once was answered 200 (the parser had reached the end of the headers, and
    reset the count, before the size was checked)."""
    with serving(db_url, tmp_path, env={"TOKEX_MAX_HEADER_BYTES": 4096}) as proc:
        for size, status in ((4096, b"200"), (4097, b"431"), (6000, b"431"), (4000, b"200")):
            sock = connect(proc)
            sock.sendall(head_of(size))
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), (size, answer[:100])
            if status == b"431":
                assert b'"code":"headers_too_large"' in answer
                assert read_until_closed(sock) is not None  # and closed
            sock.close()
        # Right behind a request's body, in the same read: counted from its first byte.
        for size, status in ((4096, b"200"), (4097, b"431")):
            sock = connect(proc)
            body = b'{"x": 1}'
            first = b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n" + body
            sock.sendall(first + head_of(size))
            answer = read_for(sock, 1.0)
            second = answer[answer.index(b"HTTP/1.1 ", 1) :]
            assert second.startswith(b"HTTP/1.1 " + status + b" "), (size, answer[:300])
            sock.close()


def test_a_pipelined_request_head_past_the_cap_is_refused_after_the_answers_before_it(
    db_url: str, tmp_path: Path
) -> None:
    """The head of a request pipelined behind one in the app went uncounted: the server took
    953 MB of headers on one socket in 6 s (until the header deadline). Now it reads no more
    than the cap of it, answers what came before, then 431 and closes."""
    env = {"TOKEX_MAX_HEADER_BYTES": 4096}
    with serving(db_url, tmp_path, env=env) as proc:
        sock = stuck(proc)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(1.0)
        sent, line = 0, b"X-Pad: " + b"a" * 8000 + b"\r\n"
        try:
            while sent < 256 << 20:
                sock.sendall(line)
                sent += len(line)
        except TimeoutError:
            pass  # the server stopped reading: what we are here to see
        assert sent < 64 << 20, f"the server read {sent >> 20} MiB of one request's headers"
        answer = read_until_closed(sock)
        assert answer is not None, "not closed"
        assert answer.count(b"HTTP/1.1 200 OK\r\n") == STALLED_ANSWERS
        last = answer[answer.rindex(b"HTTP/1.1 ") :]
        assert last.startswith(b"HTTP/1.1 431 ") and b'"code":"headers_too_large"' in last
        assert httpx.get(proc.base_url + "/health").status_code == 200


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


def connect_from(proc: ServerProcess, address: str) -> socket.socket:
    """A connection from another loopback address (127.0.0.2, ...): another client."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.bind((address, 0))
    sock.connect((proc.host, proc.port))
    return sock


#: Pipelined requests for the OpenAPI document (279 KB each) that a client does not read.
STALLED_ANSWERS = 40
OPENAPI = b"GET /schema/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"


def in_the_app(sock: socket.socket) -> socket.socket:
    """`sock` with a request in the app for as long as it reads nothing: answers it does not
    read fill the server's buffers, so a later one waits to write (uvicorn's flow control)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(OPENAPI * STALLED_ANSWERS)
    time.sleep(1.0)
    return sock


def stuck(proc: ServerProcess, address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    sock.settimeout(WAIT_S)
    sock.bind((address, 0))
    sock.connect((proc.host, proc.port))
    return in_the_app(sock)


#: One address may take every place: these tests count the server's cap, not a share of it.
WHOLE_CAP = {"TOKEX_CLIENT_SHARE_PERCENT": 100}


def test_past_the_cap_idle_and_stalled_connections_make_room_and_a_busy_server_refuses(
    db_url: str, tmp_path: Path
) -> None:
    """A connection whose request's body is still coming gives way too: 4,200 sockets that
    each sent headers announcing 60,000 bytes and one byte of body made every new client's
    `/health` 503 for the body deadline (30 s), over and over."""
    env = {"TOKEX_MAX_CONNECTIONS": 3, "TOKEX_BODY_TIMEOUT_MS": 20_000, **WHOLE_CAP}
    with serving(db_url, tmp_path, env=env) as proc:
        idle = [connect(proc) for _ in range(3)]
        time.sleep(0.2)
        # The cap is full of idle connections: the longest-quiet one gives way.
        assert httpx.get(proc.base_url + "/health").status_code == 200
        assert read_until_closed(idle[0]) == b""
        stalled = [connect(proc) for _ in range(3)]
        for sock in stalled:  # signature headers that pass until the body is there to check
            sock.sendall(
                b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
                b"X-Tokex-Key: key_0123456789abcdef\r\nX-Tokex-Signature: x\r\n"
                b"X-Tokex-Timestamp: %d\r\n\r\n{" % (time.time() * 1000)
            )
        time.sleep(0.2)
        # Their bodies still coming, nothing answered: the longest-quiet one gives way.
        assert httpx.get(proc.base_url + "/health").status_code == 200
        assert read_until_closed(stalled[0]) == b""
        # Three requests in the app, answering: none can give way.
        busy = [stuck(proc) for _ in range(3)]
        refused = read_until_closed(connect(proc))
        assert refused is not None and refused.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1\r\n" in refused
        assert b'"code":"too_many_connections"' in refused
        busy[0].close()
        time.sleep(0.2)
        assert httpx.get(proc.base_url + "/health").status_code == 200
        for sock in idle + stalled + busy:
            sock.close()


def test_one_address_holds_at_most_its_share_of_the_connections(
    db_url: str, tmp_path: Path
) -> None:
    """By default an address may hold half of `max_connections`: past it its own
    longest-quiet idle connection gives way (not another client's), and if all of its
    connections are in the app it is refused while other clients are served."""
    with serving(db_url, tmp_path, env={"TOKEX_MAX_CONNECTIONS": 4}) as proc:
        other = connect(proc)  # the longest-quiet connection of the server
        time.sleep(0.1)
        mine = [connect_from(proc, "127.0.0.2") for _ in range(3)]
        assert read_until_closed(mine[0]) == b""  # its own gave way
        assert read_until_closed(other, 0.5) is None  # still open
        busy = [stuck(proc, "127.0.0.2") for _ in range(2)]
        refused = read_until_closed(connect_from(proc, "127.0.0.2"))
        assert refused is not None and b'"code":"too_many_connections"' in refused
        assert httpx.get(proc.base_url + "/health").status_code == 200
        for sock in [other, *mine, *busy]:
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
    env = {"TOKEX_MAX_WEBSOCKETS": 3, **WHOLE_CAP}
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
    with serving(
        db_url, tmp_path, env=WHOLE_CAP, open_file_limit=600, extra_args=ONE_PROCESS
    ) as proc:
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


def test_one_address_holds_at_most_its_share_of_the_websockets(db_url: str, tmp_path: Path) -> None:
    """4,096 idle upgrades of the public stream from one client made every other client's
    upgrade 503 `too_many_websockets`: an address may hold half of the cap by default."""
    env = {"TOKEX_MAX_WEBSOCKETS": 4}
    with serving(db_url, tmp_path, env=env, extra_args=ONE_PROCESS) as proc:
        url = proc.base_url.replace("http://", "ws://") + "/v1/stream"
        with ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(ws_connect(url, sock=connect_from(proc, "127.0.0.2")))
            with pytest.raises(InvalidStatus) as refused:
                ws_connect(url, sock=connect_from(proc, "127.0.0.2"))
            assert refused.value.response.status_code == 503
            assert b'"code":"too_many_websockets"' in refused.value.response.body
            stack.enter_context(ws_connect(url))  # another address: room
            stack.enter_context(ws_connect(url))
