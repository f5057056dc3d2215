"""The stand-in upstream's answers (`tests.support.upstream`, mode OK), served by a bare
asyncio server: for benchmarks only.

`ops.bench.gateway` runs the stand-in on the same 2 cores as the gateway, its database
and the load. Served by Litestar on uvicorn, the stand-in spent ~0.5 ms of CPU a
streamed call and ~0.13 ms a plain one (measured by that bench): a third of the machine
at the gateway's rate, and more than the ~0.5 ms a call that 2,000 calls/s on 2 cores
leave for everything. In production the upstream is the provider's own inference server
on its own machine. This one answers with the same bytes (`Upstream.reply`: the same
chunks, one write each, a turn of the event loop between them, then `[DONE]`), with
HTTP/1.1 keep-alive and a chunked body for a stream, as uvicorn sends it, but parses
only what a client of the bench sends (a request line, headers, a `Content-Length`
body); no failure modes (the tests use `tests.support.upstream`).

    python -m tests.support.upstream_lean --port N [--model M ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from tests.support.upstream import Upstream

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD_BYTES = 64 * 1024


def _head(status: str, content_type: bytes, length: int | None) -> bytes:
    size = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type + b"\r\n"
        + size + b"\r\n\r\n"
    )  # fmt: skip


class LeanUpstream:
    def __init__(self, models: list[str]) -> None:
        self.answers = Upstream(models=models)
        self.answers.keep_requests = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False once the client is gone or asked to close."""
        head = await reader.readuntil(_HEAD_END)
        lines = head[: -len(_HEAD_END)].split(b"\r\n")
        method, path, _ = lines[0].split(b" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        raw = await reader.readexactly(length) if length else b""
        if method == b"GET" and path == b"/v1/models":
            self._send(writer, "200 OK", json.dumps(self.answers.models_body()).encode())
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            body: dict[str, Any] = json.loads(raw)
            out = self.answers.reply(body, chat=path == b"/v1/chat/completions")
            if isinstance(out, dict):
                self._send(writer, "200 OK", json.dumps(out).encode())
            else:
                writer.write(_head("200 OK", b"text/event-stream", None))
                async for event in out:
                    writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
        else:
            self._send(writer, "404 Not Found", b'{"error": {"message": "not found"}}')
        await writer.drain()
        return headers.get(b"connection", b"").lower() != b"close"

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: str, content: bytes) -> None:
        writer.write(_head(status, b"application/json", len(content)) + content)


async def serve(port: int, models: list[str], host: str = "127.0.0.1") -> None:
    upstream = LeanUpstream(models)
    server = await asyncio.start_server(upstream.serve, host, port, limit=_MAX_HEAD_BYTES)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="the stand-in upstream, lean (benchmarks)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", default=None)
    args = parser.parse_args()
    served = serve(args.port, args.model or ["llama-3.1-70b"])
    try:
        import uvloop
    except ImportError:  # uvloop is not on every platform
        asyncio.run(served)
    else:
        uvloop.run(served)


if __name__ == "__main__":
    main()
