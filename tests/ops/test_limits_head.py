"""A response's head and body leave in one write (`ops.limits.HeadWithBody`), a head
alone by the loop's next turn, and nothing is lost or reordered on the way."""

from __future__ import annotations

import asyncio

import httpx

from ops.limits import HeadWithBody


class RecordingTransport(asyncio.Transport):
    """Records what is written, as the socket would see it (one entry per send)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_head_and_body_go_out_as_one_write_and_later_chunks_as_they_come() -> None:
    transport = RecordingTransport()
    writer = HeadWithBody(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == []
    writer.write(b"ok")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    writer.write(b"more")  # a streamed response's next chunk: straight out
    assert transport.writes[-1] == b"more"
    await asyncio.sleep(0)  # the turn's flush finds nothing held
    assert len(transport.writes) == 2
    assert writer.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_a_head_alone_leaves_by_the_next_turn_and_a_close_sends_it_first() -> None:
    transport = RecordingTransport()
    writer = HeadWithBody(transport, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]

    closing = RecordingTransport()
    writer = HeadWithBody(closing, asyncio.get_running_loop())
    writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
    writer.close()
    assert closing.writes == [b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"]
    assert closing.closed and writer.is_closing()
    await asyncio.sleep(0)
    assert len(closing.writes) == 1  # not sent twice


def test_a_real_server_answers_on_one_connection_a_head_request_too(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as client:
        for _ in range(3):  # keep-alive: one response after another on one connection
            health = client.get("/health")
            assert health.status_code == 200 and health.json()
        head = client.head("/health")  # no body write: the head leaves at the next turn
        assert head.status_code in (200, 405) and head.content == b""
        assert client.get("/health").status_code == 200
