"""Connection limits uvicorn lacks: header and body read deadlines, a cap on connections.

uvicorn (read in its `protocols/http/httptools_impl.py`, 0.30 to 0.54) arms its
keep-alive timeout only once a response is complete: a connection that sends
nothing, or half a request, is never closed (a slowloris holds a file descriptor
forever). It has no header-read or body-read timeout at all. `limit_concurrency`
counts every open connection, idle ones included, and answers 503 to the
*request* that exceeds it: 5,000 idle sockets would turn every real request into
a 503. And at the process's open-file limit the accept loop fails, so every new
client (`/health` too) gets a reset.

`guarded_protocol(limits)` is uvicorn's httptools protocol with:

* a header deadline: from the connection's opening (for its first request) or a
  later request's first byte (an idle connection between requests is uvicorn's
  keep-alive timeout's) to the end of the request's headers, `header_timeout_ms`; past it
  the client gets 408 (if it began a request) and the connection is closed;
* a cap on the size of a request's head (request line and headers),
  `max_header_bytes`: past it 431 `headers_too_large`, then closed (what
  `h11_max_incomplete_event_size` does for h11; httptools has no such cap). The parser
  is fed at most what is left of the cap at a time outside bodies, a head up to its
  first empty line, a body of declared length up to its end, so the count holds whatever
  the reads (`GuardedProtocol.data_received`): a whole head in one read was counted
  only after the parser had reached its end (and reset the count), and a head pipelined
  behind a request in the app was not counted at all (953 MB of headers on one socket).
  Behind a request in the app, reading stops and the 431 follows the answers before it.
  A run of empty lines before a request line (llhttp skips them) counts toward the cap,
  and the read is walked with an offset, never copied piece by piece (linear in the read);
* at most `PIPELINE_CAP` parsed requests waiting behind the one in the app: past it the
  rest of the read waits unparsed and reading stays paused until answers make room
  (uvicorn queues every pipelined request of every read, and reads on at each answer);
* a request asking for an upgrade other than a websocket (`Upgrade: h2c`) is plain HTTP:
  its body reaches the app and what follows is parsed as the next request (llhttp stops
  at its head; uvicorn gives the app an empty body and drops the rest);
* a body deadline: the request's body must have arrived `body_timeout_ms` after
  its headers, else the connection is closed (the handler sees a disconnect);
* a cap of `max_connections` (further lowered to fit the open-file limit): a new
  connection past the cap closes the longest-quiet reclaimable connection (idle, still
  sending its headers, or still sending its body with nothing answered: 4,200 sockets
  announcing a body and sending one byte of it held every place for the body deadline);
  only when every connection is being answered is the new one refused, with 503
  `too_many_connections` and `Retry-After`, then closed;
* a share of both caps per client address, `client_share_percent`: past it a new
  connection closes that address's own longest-quiet reclaimable one (503 if none), a
  new websocket is refused, so one address cannot take every place.

Websocket connections leave the cap and these deadlines when they upgrade, for a cap
of their own, `max_websockets`, lowered to half of the client sockets' share of the
open-file limit (`fd_budget`): past it the upgrade is refused before the handshake with
503 `too_many_websockets` and `Retry-After`, so plain HTTP (`/health` too) always keeps
the other half; HTTP connections and websockets together stay within `fd_budget` (a new
HTTP connection past it closes an idle one, as past `max_connections`). Without it,
579 websockets against an open-file limit of 600 left `/health` getting resets. They
keep uvicorn's own ping interval and timeout (`ws_ping_interval_ms`,
`ws_ping_timeout_ms`), a message of at most `WS_MAX_BYTES` (past it, closed with 1009)
and no permessage-deflate (a deflated frame costs the server up to a thousand times
its size on the wire; the stream's messages are small). Their close is let through
uvicorn's write flow control (`_close_at_once`), so a client that stopped reading gets
the stream's 4008 behind what is on its way, not the keep-alive's 1011 40 s on. The
settings are `ops.config.ConnectionLimits`.

And one write a response, where uvicorn makes two: it writes a response's head when the
app sends `http.response.start` and its body at `http.response.body`, each a send on the
socket (a system call, and on loopback the kernel's receive work for the client too).
A request's cycle writes through `HeadWithBody`, which holds the head until the first
body write and sends both as one; a head with no body write in the same turn of the
loop (a streamed response's first chunk is still coming) goes out at the loop's next
turn, and one whose response is complete without a body write (HEAD) when it completes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections import Counter, OrderedDict
from typing import Any

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ops.config import ConnectionLimits
from ops.errors import ErrorBody

log = logging.getLogger(__name__)

#: File descriptors kept for everything but client sockets (database, files, helper).
FD_RESERVE = 256
#: The largest websocket message uvicorn reads, in bytes: the stream takes messages of at
#: most 4,096 characters (`market.stream.MAX_MESSAGE_CHARS`), 16 KiB of UTF-8 at worst.
#: uvicorn's default (16 MiB, deflated: 16 KiB on the wire) let 100 connections grow the
#: server by gigabytes before the stream could refuse a message. Larger: closed with 1009.
WS_MAX_BYTES = 16 * 1024


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %s: %s", target, exc)
    return soft


def fd_budget(open_file_limit: int) -> int:
    """The file descriptors client sockets (HTTP connections and websockets) may hold."""
    return max(2, open_file_limit - FD_RESERVE)


def effective_max_connections(limits: ConnectionLimits, open_file_limit: int) -> int:
    """The cap, lowered so that client sockets can never use up the open-file limit."""
    return max(1, min(limits.max_connections, fd_budget(open_file_limit)))


def effective_max_websockets(limits: ConnectionLimits, open_file_limit: int) -> int:
    """The websockets' cap: at most half of the client sockets' budget, so that HTTP
    (`/health` included) always has the other half."""
    return max(1, min(limits.max_websockets, fd_budget(open_file_limit) // 2))


def _raw_response(status: bytes, body: ErrorBody, extra: bytes = b"") -> bytes:
    payload = msgspec.json.encode(body)
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\n" + extra +
        b"connection: close\r\n\r\n" + payload
    )  # fmt: skip


REFUSED = _raw_response(
    b"503 Service Unavailable",
    ErrorBody(
        code="too_many_connections",
        message="the server holds as many connections as it may; try again shortly",
    ),
    b"retry-after: 1\r\n",
)
WEBSOCKETS_REFUSED = _raw_response(
    b"503 Service Unavailable",
    ErrorBody(
        code="too_many_websockets",
        message="the server holds as many websockets as it may; try again shortly",
    ),
    b"retry-after: 1\r\n",
)
HEADERS_TOO_LARGE = _raw_response(
    b"431 Request Header Fields Too Large",
    ErrorBody(code="headers_too_large", message="the request's headers are too large"),
)
HEADER_TIMEOUT = _raw_response(
    b"408 Request Timeout",
    ErrorBody(code="request_timeout", message="the request's headers took too long to arrive"),
)


def share_of(cap: int, percent: int) -> int:
    """What one client address may hold of `cap`: `percent` of it, at least one."""
    return max(1, cap * percent // 100)


class ConnectionRegistry:
    """The open HTTP connections of one server, longest-quiet first, and its websockets.

    HTTP connections and websockets together stay within `fd_budget` (when given): a new
    HTTP connection past it makes room as one past `max_connections` does. One client
    address holds at most `client_share_percent` of either cap (`share_of`)."""

    def __init__(
        self, max_connections: int, max_websockets: int | None = None,
        fd_budget: int | None = None, client_share_percent: int = 100,
    ) -> None:  # fmt: skip
        self.max_connections = max_connections
        self.max_websockets = max_connections if max_websockets is None else max_websockets
        self.fd_budget = fd_budget
        self.client_max_connections = share_of(max_connections, client_share_percent)
        self.client_max_websockets = share_of(self.max_websockets, client_share_percent)
        self._open: OrderedDict[GuardedProtocol, None] = OrderedDict()
        self._by_client: Counter[str] = Counter()
        self._websockets: dict[asyncio.BaseProtocol, str] = {}
        self._websockets_by_client: Counter[str] = Counter()
        self.evicted = 0
        self.refused = 0
        self.websockets_refused = 0

    def __len__(self) -> int:
        return len(self._open)

    @property
    def websockets(self) -> int:
        return len(self._websockets)

    def _full(self) -> bool:
        held = len(self._open)
        if held >= self.max_connections:
            return True
        return self.fd_budget is not None and held + len(self._websockets) >= self.fd_budget

    def websocket_room(self, client: str) -> bool:
        """Whether one more websocket may open, from `client` (counted as refused if not)."""
        if (
            len(self._websockets) >= self.max_websockets
            or self._websockets_by_client[client] >= self.client_max_websockets
        ):
            self.websockets_refused += 1
            return False
        return True

    def websocket_opened(self, protocol: asyncio.BaseProtocol, client: str) -> None:
        self._websockets[protocol] = client
        self._websockets_by_client[client] += 1

    def websocket_closed(self, protocol: asyncio.BaseProtocol) -> None:
        client = self._websockets.pop(protocol, None)
        if client is not None:
            _decrement(self._websockets_by_client, client)

    def admit(self, protocol: GuardedProtocol) -> bool:
        """Make room for `protocol` and add it; False if there is none to make.

        Past its address's share, that address's longest-quiet reclaimable connection is
        closed; past the server's cap, the longest-quiet reclaimable one of anyone's."""
        client = protocol.client_address
        own = self._by_client[client] >= self.client_max_connections
        if own or self._full():
            victim = self._victim(client if own else None)
            if victim is None:
                self.refused += 1
                return False
            self.evicted += 1
            self.drop(victim)
            victim.close()
        self._open[protocol] = None
        self._by_client[client] += 1
        return True

    def _victim(self, client: str | None) -> GuardedProtocol | None:
        """The longest-quiet reclaimable connection (of `client` alone, if given)."""
        for protocol in self._open:
            if protocol.reclaimable and (client is None or protocol.client_address == client):
                return protocol
        return None

    def touch(self, protocol: GuardedProtocol) -> None:
        if protocol in self._open:
            self._open.move_to_end(protocol)

    def drop(self, protocol: GuardedProtocol) -> None:
        if protocol in self._open:
            del self._open[protocol]
            _decrement(self._by_client, protocol.client_address)


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


class HeadWithBody:
    """The transport a request's response cycle writes to (see the module docstring):
    the first write (the head) is held until the next write, or the loop's next turn,
    or a close, whichever comes first; everything else is the transport's."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._first = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif self._first:  # the head: held
            self._first = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and a connection cap (module docstring)."""

    limits: ConnectionLimits
    registry: ConnectionRegistry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._in_body = False  # from the end of a request's headers to the end of its body
        self._head_bytes = 0  # bytes read since the last head's end, outside bodies
        self._body_left: int | None = None  # of a body of declared length, still to come
        self._tail = b""  # the last two bytes fed of the head so far
        self._head_too_large = False  # 431 once the requests before it are answered
        self._unfed = b""  # the read being fed, from `_at` on (`_feed`)
        self._at = 0
        self._raw_body = False  # a body llhttp does not parse, handed over as it comes
        self.client_address = ""

    @property
    def evictable(self) -> bool:
        """No request of this connection is in the app (idle, or its headers still coming)."""
        return self.cycle is None or self.cycle.response_complete

    @property
    def reclaimable(self) -> bool:
        """Closing it loses no answer: no request in the app, or one still waiting for its
        body with nothing answered (a client that announces a body and sends one byte of
        it must not hold its place for the whole body deadline)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        return cycle.more_body and not cycle.response_started and not self.pipeline

    def close(self) -> None:
        self._cancel_deadline()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self, delay_ms: int, on_expiry: Any) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(delay_ms / 1000, on_expiry)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        # A request begun gets 408; a connection that never sent a byte is just closed.
        begun = self._in_headers and self.evictable
        if begun and self.transport is not None and not self.transport.is_closing():
            self.transport.write(HEADER_TIMEOUT)
        self.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        log.info("closing a connection whose request body stalled (%s)", self.client)
        self.close()

    def _refuse_head(self) -> None:
        """431 and closed; with a request in the app, once it and those before this one are
        answered (`on_response_complete`), reading nothing more meanwhile."""
        if self.evictable:
            if not self.transport.is_closing():
                self.transport.write(HEADERS_TOO_LARGE)
            self.close()
            return
        self._head_too_large = True
        self.flow.pause_reading()

    # -- uvicorn's protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.client_address = self.client[0] if self.client else ""
        if not self.registry.admit(self):
            transport.write(REFUSED)
            transport.close()
            return
        # Nothing sent yet: it has as long as a request's headers take.
        self._arm(self.limits.header_timeout_ms, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.registry.drop(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser at most what is left of the head cap at a time, outside bodies,
        so that a head is counted whatever the reads (one read holding a whole head too
        large, a head pipelined behind a request in the app) and refused at its cap. The
        parser tells no offsets, so pieces end where the parser's state may change: a head
        at its first empty line, a body of declared length at its end; the head after it in
        the same read is then counted from its first byte (after a chunked body, from at
        most the cap's worth of bytes on). The read is walked with an offset (`_feed`):
        copying its rest at every piece was quadratic (a run of bare CRLFs, which llhttp
        skips before a request line, made 2-byte pieces: 0.4 s of a blocked loop)."""
        self.registry.touch(self)
        self._unfed = self._unfed[self._at :] + data if self._unfed else data
        self._at = 0
        self._feed()

    def _feed(self) -> None:
        """Feed what is unfed, piece by piece (`data_received`), until it is all fed, the
        connection is closed or a websocket, or `PIPELINE_CAP` requests wait behind the one
        in the app: then reading stays paused, and `on_response_complete` feeds the rest.
        uvicorn queues every pipelined request of a read and reads on at each answer: one
        client that never read its answers held 1.3 GB of queued requests."""
        data, cap = self._unfed, self.limits.max_header_bytes
        view, end = memoryview(data), len(data)
        while self._at < end and not self._head_too_large:
            # Checked outside bodies: a queued request's body is fed, its deadline running.
            if not self._in_body and len(self.pipeline) >= PIPELINE_CAP:
                self.flow.pause_reading()
                return
            if not self._in_body and self._head_bytes >= cap:
                self._refuse_head()
                break
            at = self._at
            if not self._in_body and not self._in_headers:  # before a request line
                self._at = min(_empty_run_end(data, at), at + cap - self._head_bytes)
                self._head_bytes += self._at - at  # skipped: llhttp skips them too
                if self._at > at:
                    continue
            self._at = stop = min(end, at + self._room(data, at, cap))
            if self._feed_piece(view[at:stop]):
                break
        self._unfed, self._at = b"", 0

    def _room(self, data: bytes, at: int, cap: int) -> int:
        if self._in_body:
            return max(1, self._body_left or cap)
        return self._head_piece(data, at, cap - self._head_bytes)

    def _feed_piece(self, piece: memoryview) -> bool:
        """Feed one piece; True if the connection is done with this protocol."""
        if not self._in_body:
            self._head_bytes += len(piece)  # on_headers_complete resets it
            self._tail = (self._tail + bytes(piece[-2:]))[-2:]
        elif self._body_left is not None:
            self._body_left -= len(piece)
        if self._raw_body:  # behind an upgrade not taken, see on_message_complete
            self.on_body(bytes(piece))
            if not self._body_left:
                self.on_message_complete()
        else:
            super().data_received(piece)  # type: ignore[arg-type]  # llhttp takes a buffer
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return True  # refused (400), or a websocket now
        if not self._in_headers and self._plain_upgrade():
            # llhttp stopped for an upgrade this server does not take (h2c): what follows
            # is plain HTTP, for a parser of its own (the paused one takes nothing more).
            self.parser = _new_parser(self)
        return False

    def _plain_upgrade(self) -> bool:
        """Whether the parser's request asks for an upgrade other than a websocket."""
        return bool(self.parser.should_upgrade()) and not self._should_upgrade()

    def _head_piece(self, data: bytes, start: int, room: int) -> int:
        """How much of `data[start:]` to feed outside a body: up to the first empty line
        (where the head may end: the parser then stops at its end, and what follows is a
        body or the next head) and at most `room`."""
        best = min(len(data) - start, room)
        straddling = self._tail + data[start : start + 2]  # an empty line begun before
        for separator in _EMPTY_LINES:
            if (at := straddling.find(separator)) >= 0:
                best = min(best, max(1, at + len(separator) - len(self._tail)))
            if (at := data.find(separator, start, start + best)) >= 0:
                best = min(best, at - start + len(separator))
        return best

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:
            self._in_headers = True
            self._arm(self.limits.header_timeout_ms, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._in_body = True
        self._head_bytes = 0
        self._tail = b""
        self._body_left = _declared_length(self.headers)
        self._arm(self.limits.body_timeout_ms, self._body_too_slow)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        if self._body_left and self._plain_upgrade():
            # llhttp stops at the head of a request asking for an upgrade not taken (h2c)
            # and calls its message complete with its body unread: the body is handed to
            # the app as plain HTTP's (`_feed_piece`), and the message completes after it.
            self._raw_body = True
            return
        self._raw_body = False
        self._in_body = False
        self._cancel_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.registry.touch(self)
        writer = self.cycle.transport if self.cycle is not None else None
        if isinstance(writer, HeadWithBody):  # a head with no body write (HEAD): out now,
            writer.flush()  # before anything of the protocol's may close the connection
        if self._head_too_large and not self.pipeline and not self.transport.is_closing():
            self.transport.write(HEADERS_TOO_LARGE)  # every request before it answered
            self.close()
        super().on_response_complete()  # arms uvicorn's keep-alive timeout, reads on
        if self._unfed and not self.transport.is_closing():
            self._feed()  # what waited for room in the pipeline

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()
        self.registry.drop(self)  # a websocket keeps its own ping and timeout
        if not self.registry.websocket_room(self.client_address):
            if not self.transport.is_closing():  # before the handshake: a plain answer
                self.transport.write(WEBSOCKETS_REFUSED)
            self.close()
            return
        super().handle_websocket_upgrade()
        _count_websocket(self.registry, self.transport.get_protocol(), self.client_address)


#: How many parsed requests may wait behind the one in the app before reading stops.
PIPELINE_CAP = 32
#: Empty lines before a request line, which llhttp skips (counted toward the head cap).
_EMPTY_RUN = re.compile(rb"[\r\n]*")


def _empty_run_end(data: bytes, at: int) -> int:
    """Where the run of CRs and LFs at `data[at:]` ends (`at` if there is none)."""
    run = _EMPTY_RUN.match(data, at)
    return run.end() if run else at


def _new_parser(protocol: GuardedProtocol) -> httptools.HttpRequestParser:
    """A parser as uvicorn makes one (its leniency lets a pipelined request after a
    `Connection: close` one be answered)."""
    parser = httptools.HttpRequestParser(protocol)
    leniencies = getattr(parser, "set_dangerous_leniencies", None)  # httptools 0.6.3 on
    if leniencies is not None:
        leniencies(lenient_data_after_close=True)
    return parser


#: The empty line that ends a request's head (llhttp may take a bare LF for CRLF).
_EMPTY_LINES = (b"\n\r\n", b"\n\n")


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's Content-Length (llhttp has checked it), None if chunked or not given."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length" and value.isdigit():
            length = int(value)
    return length


def _count_websocket(registry: ConnectionRegistry, ws: asyncio.BaseProtocol, client: str) -> None:
    """Count `ws` (uvicorn's websocket protocol, now the transport's) until its connection
    is lost: its own `connection_lost` is wrapped, uvicorn's protocol classes being picked
    at run time (`ws="auto"`). And its close is not held back (`_close_at_once`)."""
    registry.websocket_opened(ws, client)
    lost = ws.connection_lost

    def connection_lost(exc: Exception | None) -> None:
        registry.websocket_closed(ws)
        lost(exc)

    ws.connection_lost = connection_lost  # type: ignore[method-assign]
    _close_at_once(ws)


def _close_at_once(ws: asyncio.BaseProtocol) -> None:
    """Let the app's `websocket.close` through uvicorn's write flow control.

    uvicorn's websockets-sansio protocol (0.52.1 on) makes every ASGI send wait until the
    transport's buffer drains (`writable`), the close too: for a client that stopped
    reading, the stream's 4008 (`market.stream`) would wait until the keep-alive ping
    failed and closed it 1011 instead, 40 s on. The close is the last frame: it goes into
    the buffer behind what is there (the client reads that first), and nothing is sent
    after it. The ASGI `send` the app is called with is wrapped before the app runs
    (uvicorn looks it up when its task starts); a protocol with no `writable` is left be.
    """
    writable = getattr(ws, "writable", None)
    send = getattr(ws, "send", None)
    if not isinstance(writable, asyncio.Event) or send is None:
        return

    async def send_close_at_once(message: Any) -> None:
        if message.get("type") == "websocket.close":
            writable.set()
        await send(message)

    ws.send = send_close_at_once  # type: ignore[attr-defined]


def guarded_protocol(
    limits: ConnectionLimits, max_connections: int | None = None,
    max_websockets: int | None = None, fd_budget: int | None = None,
) -> type[GuardedProtocol]:  # fmt: skip
    """A protocol class for `uvicorn.run(http=...)`, with its own connection registry."""
    registry = ConnectionRegistry(
        max_connections or limits.max_connections,
        max_websockets or limits.max_websockets,
        fd_budget,
        limits.client_share_percent,
    )
    return type("GuardedHttpProtocol", (GuardedProtocol,), {"limits": limits, "registry": registry})


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """Everything `uvicorn.run` needs for these limits (raises the open-file limit)."""
    open_files = raise_open_file_limit()
    cap = effective_max_connections(limits, open_files)
    if cap < limits.max_connections:
        log.warning("at most %d connections: the open-file limit leaves no room for more", cap)
    ws_cap = effective_max_websockets(limits, open_files)
    if ws_cap < limits.max_websockets:
        log.warning("at most %d websockets: half of what the open-file limit leaves", ws_cap)
    return {
        "http": guarded_protocol(limits, cap, ws_cap, fd_budget(open_files)),
        "timeout_keep_alive": limits.keep_alive_timeout_ms / 1000,  # call_later takes a float
        "ws_ping_interval": limits.ws_ping_interval_ms / 1000,
        "ws_ping_timeout": limits.ws_ping_timeout_ms / 1000,
        "ws_max_size": WS_MAX_BYTES,
        "ws_per_message_deflate": False,
    }
