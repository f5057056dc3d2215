"""End to end: a real `tokex serve` (uvicorn, the sequencer, PostgreSQL), orders over
REST with TokexClient, market data over a real websocket.

The acceptance check of the stream: the book over REST equals the book built
from the websocket snapshot plus deltas, at every step.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import Depth, DepthLevel, Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.market.feed_support import ClientBook
from tests.support.pg import PgServer
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"  # a window far ahead of the real clock
TIMEOUT = 10.0


async def recv(ws: ClientConnection) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return msg


def _signed_subscribe(client: TokexClient) -> dict[str, Any]:
    return client.orders_subscribe()


def _rest_depth(view: Any) -> Depth:
    return Depth(
        instrument=view.instrument,
        seq=view.seq,
        bids=[DepthLevel(lv.price, lv.quantity, lv.orders) for lv in view.bids],
        asks=[DepthLevel(lv.price, lv.quantity, lv.orders) for lv in view.asks],
    )


async def test_rest_book_equals_websocket_book(db_url: str, server_process: ServerProcess) -> None:
    operator = await operator_client(db_url, server_process.base_url)
    try:
        await operator.create_instrument(
            CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5,
                             price_max=100_000, maker_fee_bps=10, taker_fee_bps=20)
        )  # fmt: skip
        traders: list[TokexClient] = []
        for i in range(2):
            created = await operator.create_account(Role.PROVIDER, f"provider-{i}")
            provider = operator.as_account(created)
            await provider.list_capacity(f"cap-{i}", SYM, 1_000_000)
            traders.append(provider)
        for i in range(2):
            created = await operator.create_account(Role.BUYER, f"buyer-{i}")
            await operator.deposit(f"dep-{i}", created.account_id, 100_000_000)
            traders.append(operator.as_account(created))
        buyer = traders[2]
        buyer_id = (await buyer.me()).account_id

        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        async with connect(url) as ws, connect(url) as private:
            # an instrument with no order yet is already known to the stream
            await ws.send(json.dumps({"op": "subscribe", "channel": "book", "instrument": SYM}))
            assert (await recv(ws))["type"] == "subscribed"
            book = ClientBook()
            book.on_message(await recv(ws))
            assert book.seq == 0
            await ws.send(json.dumps({"op": "subscribe", "channel": "trades", "instrument": SYM}))
            assert (await recv(ws))["type"] == "subscribed"
            await private.send(json.dumps(_signed_subscribe(buyer)))
            ack = await recv(private)
            assert ack["type"] == "subscribed" and ack["account_id"] == buyer_id

            rng = random.Random(5)
            trades = 0
            placed: list[tuple[TokexClient, int]] = []
            for step in range(40):
                trader = rng.choice(traders)
                side = Side.SELL if trader in traders[:2] else Side.BUY
                action = rng.random()
                try:
                    if action < 0.2 and placed:
                        owner, order_id = placed.pop(rng.randrange(len(placed)))
                        await owner.cancel_order(order_id)
                    else:
                        mid = 5_000 if side is Side.SELL else 4_980
                        view = await trader.place_order(
                            PlaceOrder(
                                client_order_id=f"o{step}",
                                instrument=SYM,
                                side=side,
                                quantity=rng.randint(1, 5) * 1000,
                                price=mid + 5 * rng.randint(-10, 10),
                            )
                        )
                        if view.open_quantity:
                            placed.append((trader, view.order_id))
                except TokexApiError as exc:
                    assert exc.status in (404, 409, 422), exc  # e.g. cancel of a filled order
                rest = _rest_depth(await operator.book(SYM, levels=1000))
                while book.seq != rest.seq:
                    msg = await recv(ws)
                    if msg["type"] == "trade":
                        trades += 1
                    else:
                        book.on_message(msg)  # checks the prev_seq chain
                assert book.depth(SYM) == rest, f"step {step}"
            assert trades >= 5, "the scenario should trade"
            assert len(await operator.trades(SYM, 1000)) == trades  # REST trades agree
            # the buyer's private channel saw its own orders, and no one else's
            frames = []
            while True:
                try:
                    frames.append(json.loads(await asyncio.wait_for(private.recv(), 0.5)))
                except TimeoutError:
                    break
            fills = [m for m in frames if m["type"] == "fill"]
            assert fills, "the buyer traded"
            # a fill frame says the buyer's own client order id and the fee it paid
            assert all(m["client_order_id"].startswith("o") for m in fills)
            assert any(m["fee"] > 0 for m in fills)
            for msg in frames:
                if msg["type"] == "order":
                    assert msg["event"]["owner"] == buyer_id
            others = {(await t.me()).account_id for t in traders} - {buyer_id}
            assert not any(other in json.dumps(frames) for other in others)
    finally:
        await operator.aclose()


async def test_stream_errors_over_a_real_server(server: str) -> None:
    async with connect(server.replace("http://", "ws://") + "/v1/stream") as ws:
        await ws.send("hello")
        assert (await recv(ws))["code"] == "invalid_message"
        await ws.send(json.dumps({"op": "subscribe", "channel": "book", "instrument": SYM}))
        assert (await recv(ws))["code"] == "unknown_instrument"


async def _resting_buyer(db_url: str, base_url: str) -> tuple[TokexClient, TokexClient, int]:
    operator = await operator_client(db_url, base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=100_000)
    )
    created = await operator.create_account(Role.BUYER, "buyer")
    await operator.deposit("dep", created.account_id, 10_000_000)
    buyer = operator.as_account(created)
    order = PlaceOrder(client_order_id="rest", instrument=SYM, side=Side.BUY, quantity=1000,
                       price=4_000)  # fmt: skip
    return operator, buyer, (await buyer.place_order(order)).order_id


async def _status_soon(buyer: TokexClient, order_id: int, want: str) -> str:
    for _ in range(50):
        status = (await buyer.order(order_id)).status
        if status == want:
            break
        await asyncio.sleep(0.05)
    return status


async def test_cancel_on_disconnect_cancels_on_a_dropped_connection(
    db_url: str, server_process: ServerProcess
) -> None:
    operator, buyer, order_id = await _resting_buyer(db_url, server_process.base_url)
    try:
        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        ws = await connect(url)
        await ws.send(json.dumps(buyer.orders_subscribe(cancel_on_disconnect=True)))
        assert (await recv(ws))["type"] == "subscribed"
        ws.transport.abort()  # the connection drops: no close frame, no unsubscribe
        assert await _status_soon(buyer, order_id, "cancelled") == "cancelled"
    finally:
        await operator.aclose()


async def test_cancel_on_disconnect_of_one_instrument_spares_the_others(
    db_url: str, server_process: ServerProcess
) -> None:
    """Subscribed to the orders of SYM only: the order on another instrument gets no
    frame, and the dropped connection cancels the order on SYM, not the other."""
    operator, buyer, order_id = await _resting_buyer(db_url, server_process.base_url)
    other = "mistral-7b/2030-12-01T00Z/1h"
    try:
        await operator.create_instrument(CreateInstrument(
            symbol=other, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
        ))  # fmt: skip
        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        ws = await connect(url)
        await ws.send(json.dumps(buyer.orders_subscribe(cancel_on_disconnect=True, instrument=SYM)))
        assert (await recv(ws))["instrument"] == SYM
        kept = await buyer.place_order(PlaceOrder(
            client_order_id="other", instrument=other, side=Side.BUY, quantity=1000, price=4_000,
        ))  # fmt: skip
        await buyer.place_order(PlaceOrder(
            client_order_id="sym", instrument=SYM, side=Side.BUY, quantity=1000, price=4_005,
        ))  # fmt: skip
        assert (await recv(ws))["event"]["instrument"] == SYM  # the other's never came
        ws.transport.abort()
        assert await _status_soon(buyer, order_id, "cancelled") == "cancelled"
        assert (await buyer.order(kept.order_id)).status == "open"
    finally:
        await operator.aclose()


async def test_cancel_on_disconnect_spares_a_clean_unsubscribe(
    db_url: str, server_process: ServerProcess
) -> None:
    operator, buyer, order_id = await _resting_buyer(db_url, server_process.base_url)
    try:
        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        async with connect(url) as ws:
            await ws.send(json.dumps(buyer.orders_subscribe(cancel_on_disconnect=True)))
            assert (await recv(ws))["type"] == "subscribed"
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "orders"}))
            assert (await recv(ws))["type"] == "unsubscribed"
        await asyncio.sleep(0.5)
        assert (await buyer.order(order_id)).status == "open"
    finally:
        await operator.aclose()


async def test_a_subscribe_sent_again_with_cancel_on_disconnect_on_cancels_nothing(
    db_url: str, server_process: ServerProcess
) -> None:
    """Whoever sees the owner's signed subscribe (no cancel on disconnect) sends it with
    `cancel_on_disconnect: true` and drops the connection: refused (`bad_signature`), so
    nothing is armed and nothing cancelled. The owner's own subscribe works, and its
    dropped connection leaves the order open too."""
    operator, buyer, order_id = await _resting_buyer(db_url, server_process.base_url)
    try:
        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        honest = buyer.orders_subscribe()
        attacker = await connect(url)
        await attacker.send(json.dumps({**honest, "cancel_on_disconnect": True}))
        refused = await recv(attacker)
        assert (refused["type"], refused["code"]) == ("error", "bad_signature"), refused
        attacker.transport.abort()
        owner = await connect(url)
        await owner.send(json.dumps(honest))
        assert (await recv(owner))["type"] == "subscribed"
        owner.transport.abort()
        await asyncio.sleep(0.5)
        assert (await buyer.order(order_id)).status == "open"
    finally:
        await operator.aclose()


async def test_cancel_on_disconnect_during_a_database_outage_is_done_once_it_is_back(
    pg: PgServer, db_url: str, server_process: ServerProcess
) -> None:
    """The bot's connection drops while PostgreSQL is down: the sequencer refuses the
    cancel then, and it is retried until taken, not left for the orders to fill."""
    operator, buyer, order_id = await _resting_buyer(db_url, server_process.base_url)
    try:
        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        ws = await connect(url)
        await ws.send(json.dumps(buyer.orders_subscribe(cancel_on_disconnect=True)))
        assert (await recv(ws))["type"] == "subscribed"
        pg.stop(mode="immediate")  # skips where the test cannot stop the server
        try:
            await asyncio.sleep(1.0)  # the server has seen it go
            ws.transport.abort()
            await asyncio.sleep(2.0)  # the first cancel refused, and some retries
        finally:
            pg.start()
        async with httpx.AsyncClient(base_url=server_process.base_url) as http:
            for _ in range(300):
                if (await http.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        for _ in range(100):  # within the retries' 5 s at most, and then some
            if (await buyer.order(order_id)).status == "cancelled":
                break
            await asyncio.sleep(0.1)
        assert (await buyer.order(order_id)).status == "cancelled"
    finally:
        await operator.aclose()
