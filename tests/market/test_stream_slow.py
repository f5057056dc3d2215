"""market.stream over a real uvicorn (in this process, the production options of
`ops.limits`): a client that stops reading is closed with 4008 at once, as README says.

The listening socket has a small send buffer (accepted sockets inherit it) and the client
a small receive buffer, so a few hundred frames fill what lies between them and the
server's writes block, as they would for a client far away that stopped reading.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from market.feed import CLOSE_SLOW_CONSUMER, MarketData
from ops.app import create_app
from ops.config import ConnectionLimits, Settings
from ops.limits import uvicorn_options
from schemas.market import NewOrder, Side
from tests.market.feed_support import LOT, SYM_A, SYM_B, engine, full_depth

#: The server's keep-alive ping: a client that does not answer is closed 1011 after
#: about twice this; the slow consumer's 4008 must not wait for it.
PING_S = 0.5


class _NoPool:
    async def close(self) -> None:
        return None

    def terminate(self) -> None:
        return None


async def _no_pool(settings: Settings) -> Any:
    return _NoPool()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MarketData]]:
    app = create_app(Settings(), pool_factory=_no_pool)
    hub: MarketData = app.state.market_data
    hub.queue_limit = 200  # the connection's queue: dropped past 200 frames
    eng = engine()
    hub.load([full_depth(eng, SYM_A), full_depth(eng, SYM_B)])
    limits = ConnectionLimits(ws_ping_interval_ms=int(PING_S * 1000),
                              ws_ping_timeout_ms=int(PING_S * 1000))  # fmt: skip
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, access_log=False, **uvicorn_options(limits))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)
    port = listener.getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/v1/stream", hub
    finally:
        server.should_exit = True
        await task
        listener.close()


async def _slow_client(url: str) -> ClientConnection:
    """A client whose socket takes little and that reads nothing until told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    sock.connect(("127.0.0.1", port))
    return await connect(url, sock=sock, max_queue=1, ping_interval=None)


async def test_a_client_that_stops_reading_is_closed_with_4008_at_once(
    served: tuple[str, MarketData],
) -> None:
    """The client reads nothing while the book moves: the server's writes block, its
    queue fills, and the hub drops it. It is closed 4008 then, not 1011 by the keep-alive
    ping long after: reading again after several ping timeouts, the client gets what was
    already on its way and then the 4008 close."""
    url, hub = served
    ws = await _slow_client(url)
    await ws.send(json.dumps({"op": "subscribe", "channel": "trades", "instrument": SYM_A}))
    eng = engine()
    for n in range(1, 3001):  # a sell resting, a buy taking it: a trade frame each pair
        side, owner = (Side.SELL, "a") if n % 2 else (Side.BUY, "b")
        hub.publish(eng.process(NewOrder(instrument=SYM_A, order_id=n, owner=owner, side=side,
                                         quantity=LOT, price=150, time=n)))  # fmt: skip
        if n % 50 == 0:
            await asyncio.sleep(0.01)  # the sender writes between batches
    await asyncio.sleep(PING_S * 6)  # well past the keep-alive's 1011
    frames = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
            frames += 1
    assert closed.value.rcvd is not None, f"no close frame after {frames} frames"
    assert closed.value.rcvd.code == CLOSE_SLOW_CONSUMER, (closed.value.rcvd, frames)
