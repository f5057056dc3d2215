"""market.stream: the websocket /v1/stream over Litestar's test client.

The app is the real `create_app` (so the route and `app.state.market_data` are
the production wiring) with a stand-in pool: the stream needs no database. The
test client runs the app in its own thread and event loop, so events are
published through the client's portal, in the app's loop, as the sequencer
would publish them.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from litestar.testing.websocket_test_session import WebSocketTestSession

import market.stream
from ledger.errors import LedgerUnavailable
from market.auth import Authenticator, KeyRecord, now_ms, request_message
from market.feed import CLOSE_SLOW_CONSUMER, MarketData
from market.signing import sign_subscribe
from market.stream import KEY_RECHECK_S, MAX_MESSAGE_CHARS
from market.stream_cancels import OwedCancels
from ops.app import create_app
from ops.config import Settings
from schemas.accounts import Role
from schemas.market import Event, NewOrder, Side
from schemas.stream import book_checksum
from tests.market.feed_support import (
    LOT,
    SYM_A,
    SYM_B,
    ClientBook,
    engine,
    full_depth,
)

TIMEOUT = 5.0
ALICE_KEY = "key_" + "a" * 16
BOB_KEY = "key_" + "b" * 16


class _NoPool:
    """Stands in for the asyncpg pool: the stream never touches the database."""

    async def close(self) -> None:
        return None

    def terminate(self) -> None:
        return None


async def _no_pool(settings: Settings) -> Any:
    return _NoPool()


class Exchange:
    """The app, its hub, an engine feeding it, and signing keys of two accounts."""

    def __init__(self, client: TestClient[Litestar], app: Litestar) -> None:
        self.client = client
        self.app = app
        self.engine = engine()
        self.hub: MarketData = app.state.market_data
        self.hub.load([full_depth(self.engine, SYM_A), full_depth(self.engine, SYM_B)])
        self.keys = {ALICE_KEY: Ed25519PrivateKey.generate(), BOB_KEY: Ed25519PrivateKey.generate()}
        owners = {ALICE_KEY: "alice", BOB_KEY: "bob"}
        self.revoked: set[str] = set()  # as the database has them
        self.load_fault: Exception | None = None  # what loading a key raises (an outage)

        async def load_key(key_id: str) -> KeyRecord | None:
            if self.load_fault is not None:
                raise self.load_fault
            if key_id not in self.keys:
                return None
            return KeyRecord(key_id, owners[key_id], Role.BUYER, self.keys[key_id].public_key(),
                             revoked=key_id in self.revoked)  # fmt: skip

        app.state.authenticator = Authenticator(load_key)
        self.next_id = 1
        self.t = 1

    def order(self, owner: str, side: Side, price: int, lots: int = 1, **kw: Any) -> list[Event]:
        cmd = NewOrder(instrument=kw.pop("instrument", SYM_A), order_id=self.next_id,
                       owner=owner, side=side, quantity=lots * LOT, price=price, time=self.t,
                       **kw)  # fmt: skip
        self.next_id += 1
        self.t += 1
        return self.engine.process(cmd)

    def publish(self, events: list[Event]) -> None:
        """Publish in the app's event loop, like the sequencer after a commit."""
        self.client.blocking_portal.call(self.hub.publish, events)

    def signed(
        self, key_id: str, timestamp: int | None = None, *, cancel_on_disconnect: bool = False,
        instrument: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        ts = now_ms() if timestamp is None else timestamp
        return sign_subscribe(
            self.keys[key_id], key_id, ts, cancel_on_disconnect=cancel_on_disconnect,
            instrument=instrument,
        )  # fmt: skip


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    app = create_app(Settings(), pool_factory=_no_pool)
    with TestClient(app, timeout=TIMEOUT) as client:
        yield Exchange(client, app)


def recv(ws: WebSocketTestSession) -> dict[str, Any]:
    msg: dict[str, Any] = ws.receive_json(timeout=TIMEOUT)
    return msg


def subscribe(ws: WebSocketTestSession, channel: str, instrument: str = SYM_A) -> dict[str, Any]:
    """Subscribe and check the ack; return the snapshot for the book channel."""
    ws.send_json({"op": "subscribe", "channel": channel, "instrument": instrument})
    ack = recv(ws)
    assert ack["type"] == "subscribed", ack
    assert (ack["channel"], ack["instrument"]) == (channel, instrument)
    return recv(ws) if channel == "book" else ack


# --------------------------------------------------------------------------- book


def test_snapshot_then_deltas_rebuild_the_engine_book(exchange: Exchange) -> None:
    ex = exchange
    ex.publish(ex.order("alice", Side.SELL, 160, 2) + ex.order("bob", Side.BUY, 140))
    with ex.client.websocket_connect("/v1/stream") as ws:
        snap = subscribe(ws, "book")
        assert snap == {"type": "snapshot", "channel": "book", "instrument": SYM_A, "seq": 2,
                        "bids": [[140, LOT, 1]], "asks": [[160, 2 * LOT, 1]],
                        "checksum": book_checksum([(140, LOT)], [(160, 2 * LOT)])}  # fmt: skip
        book = ClientBook()
        book.on_message(snap)
        batches: list[Callable[[], list[Event]]] = [
            lambda: ex.order("carol", Side.BUY, 165, 1) + ex.order("bob", Side.BUY, 145, 3),
            lambda: ex.order("alice", Side.SELL, 140, 5, tif="ioc"),
            lambda: ex.order("bob", Side.BUY, 150, 1, instrument=SYM_B),  # another instrument
            lambda: ex.order("carol", Side.SELL, 155, 2) + ex.order("alice", Side.SELL, 155, 1),
        ]
        for make in batches:
            batch = make()
            ex.publish(batch)
            if all(e.instrument == SYM_B for e in batch):
                continue  # nothing on this channel
            delta = recv(ws)
            assert delta["type"] == "delta"
            book.on_message(delta)  # checks prev_seq == the last seq held
            assert book.depth(SYM_A) == full_depth(ex.engine, SYM_A)


def test_resubscribe_sends_a_fresh_snapshot(exchange: Exchange) -> None:
    ex = exchange
    with ex.client.websocket_connect("/v1/stream") as ws:
        subscribe(ws, "book")
        ex.publish(ex.order("alice", Side.SELL, 160))
        assert recv(ws)["seq"] == 1
        snap = subscribe(ws, "book")
        assert snap["type"] == "snapshot" and snap["seq"] == 1 and snap["asks"] == [[160, LOT, 1]]
        ws.send_json({"op": "unsubscribe", "channel": "book", "instrument": SYM_A})
        assert recv(ws) == {"type": "unsubscribed", "channel": "book", "instrument": SYM_A}
        ex.publish(ex.order("alice", Side.SELL, 165))
        subscribe(ws, "trades")  # the next frame is this ack, not a book delta


# --------------------------------------------------------------------------- trades


def test_trades_channel(exchange: Exchange) -> None:
    ex = exchange
    with ex.client.websocket_connect("/v1/stream") as ws:
        subscribe(ws, "trades")
        ex.publish(ex.order("alice", Side.SELL, 150, 2) + ex.order("bob", Side.BUY, 155, 1))
        trade = recv(ws)
        assert trade == {"type": "trade", "channel": "trades", "instrument": SYM_A, "seq": 3,
                         "time_ms": 2, "price": 150, "quantity": LOT,
                         "aggressor_side": "buy"}  # fmt: skip
    assert [t.seq for t in ex.hub.recent_trades(SYM_A, 5)] == [3]


# --------------------------------------------------------------------------- bad messages


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("not json", "invalid_message"),
        ('{"op": "dance"}', "invalid_message"),
        ('{"op": "subscribe", "channel": "gossip", "instrument": "x"}', "invalid_message"),
        ('{"op": "subscribe", "channel": "book"}', "invalid_message"),
        ('{"op": "unsubscribe", "channel": "trades"}', "invalid_message"),
        ('{"op": "subscribe", "channel": "book", "instrument": "nope/2026-12-01T00Z/1h"}',
         "unknown_instrument"),
        ('{"op": "subscribe", "channel": "trades", "instrument": "nope"}', "unknown_instrument"),
        ('{"op": "subscribe", "channel": "orders"}', "missing_signature"),
        ("[" * (MAX_MESSAGE_CHARS + 1), "message_too_large"),
    ],
)  # fmt: skip
def test_bad_messages_get_error_frames_and_the_connection_lives_on(
    exchange: Exchange, message: str, code: str
) -> None:
    with exchange.client.websocket_connect("/v1/stream") as ws:
        ws.send_text(message)
        error = recv(ws)
        assert error["type"] == "error" and error["code"] == code, error
        assert error["message"]
        subscribe(ws, "book")  # still serving


def test_binary_frames_are_refused(exchange: Exchange) -> None:
    with exchange.client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b'{"op": "subscribe"}')
        assert recv(ws)["code"] == "invalid_message"
        subscribe(ws, "trades")


# --------------------------------------------------------------------------- slow consumer


def test_a_client_that_falls_behind_is_disconnected(exchange: Exchange) -> None:
    ex = exchange
    ex.hub.queue_limit = 3  # applies to connections made from now on
    with ex.client.websocket_connect("/v1/stream") as ws:
        subscribe(ws, "book")
        # one portal call: the hub queues everything before the sender can run
        events = [ex.order("alice", Side.SELL, 150 + 5 * i) for i in range(6)]

        def publish_all() -> None:
            for batch in events:
                ex.hub.publish(batch)

        ex.client.blocking_portal.call(publish_all)
        with pytest.raises(WebSocketDisconnect) as info:
            for _ in range(10):
                recv(ws)
        assert info.value.code == CLOSE_SLOW_CONSUMER
    with ex.client.websocket_connect("/v1/stream") as ws:  # and may come back
        snap = subscribe(ws, "book")
        assert len(snap["asks"]) == 6


# --------------------------------------------------------------------------- private channel


def test_private_channel_shows_only_the_accounts_own_orders_and_fills(exchange: Exchange) -> None:
    ex = exchange
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(ex.signed(ALICE_KEY))
        assert recv(ws) == {"type": "subscribed", "channel": "orders", "instrument": None,
                            "account_id": "alice"}  # fmt: skip
        ex.publish(ex.order("bob", Side.BUY, 140))  # not alice's: nothing
        ex.publish(ex.order("alice", Side.SELL, 150, 2, client_order_id="a-1"))
        accepted = recv(ws)
        assert accepted["type"] == "order" and accepted["event"]["type"] == "accepted"
        assert accepted["event"]["client_order_id"] == "a-1"
        assert accepted["event"]["order_id"] == 2
        ex.publish(ex.order("bob", Side.BUY, 150, 1))
        fill = recv(ws)
        assert fill == {"type": "fill", "channel": "orders", "instrument": SYM_A, "seq": 4,
                        "time_ms": 3, "order_id": 2, "side": "sell", "liquidity": "maker",
                        "price": 150, "quantity": LOT, "open_quantity": LOT,
                        # the engine's events alone (no sequencer here) carry no fee or client id
                        "fee": 0, "client_order_id": ""}  # fmt: skip
        ex.publish(ex.order("alice", Side.BUY, 100, 1, client_order_id="a-1"))  # duplicate
        rejected = recv(ws)
        assert rejected["event"]["type"] == "rejected"
        assert rejected["event"]["reason"] == "duplicate_client_order_id"
        ws.send_json({"op": "unsubscribe", "channel": "orders"})
        assert recv(ws)["type"] == "unsubscribed"
        ex.publish(ex.order("alice", Side.SELL, 190))
        subscribe(ws, "trades")  # next frame: the ack, not alice's order


def test_an_orders_subscribe_of_one_instrument_gets_only_that_instruments_updates(
    exchange: Exchange,
) -> None:
    """The instrument a subscribe signed is the filter: alice's order and fill on B never
    come; her order on A does. An instrument the exchange does not know is refused."""
    ex = exchange
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(ex.signed(ALICE_KEY, instrument="nope/2026-12-01T00Z/1h"))
        assert recv(ws)["code"] == "unknown_instrument"
        ws.send_json(ex.signed(ALICE_KEY, instrument=SYM_A))
        assert recv(ws) == {"type": "subscribed", "channel": "orders", "instrument": SYM_A,
                            "account_id": "alice"}  # fmt: skip
        ex.publish(ex.order("alice", Side.SELL, 150, instrument=SYM_B))
        ex.publish(ex.order("bob", Side.BUY, 150, instrument=SYM_B))  # alice's fill on B
        ex.publish(ex.order("alice", Side.SELL, 160))
        got = recv(ws)
        assert (got["type"], got["event"]["instrument"]) == ("order", SYM_A), got


def test_a_subscribe_with_the_deprecated_timestamp_name_still_signs_in(exchange: Exchange) -> None:
    ex = exchange
    msg = ex.signed(ALICE_KEY)
    msg["timestamp"] = msg.pop("timestamp_ms")  # the name before `_ms`, kept for a version
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(msg)
        assert recv(ws)["type"] == "subscribed"
        ws.send_json({**ex.signed(BOB_KEY), "timestamp": 1})  # both names: refused
        error = recv(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_message"), error


@pytest.mark.parametrize("fault", ["bad_signature", "stale_timestamp", "unknown_key", "replay"])
def test_private_subscribe_must_be_signed(exchange: Exchange, fault: str) -> None:
    ex = exchange
    msg = ex.signed(ALICE_KEY)
    if fault == "bad_signature":
        msg["signature"] = ex.signed(BOB_KEY)["signature"]
    elif fault == "stale_timestamp":
        msg = ex.signed(ALICE_KEY, timestamp=now_ms() - 120_000)
    elif fault == "unknown_key":
        msg["key_id"] = "key_" + "c" * 16
    with ex.client.websocket_connect("/v1/stream") as ws:
        if fault == "replay":
            ws.send_json(msg)
            assert recv(ws)["type"] == "subscribed"
            ws.send_json({"op": "unsubscribe", "channel": "orders"})
            recv(ws)
        ws.send_json(msg)
        error = recv(ws)
        code = "replayed_signature" if fault == "replay" else fault
        assert error["type"] == "error" and error["code"] == code, error
        ex.publish(ex.order("alice", Side.SELL, 150))
        subscribe(ws, "trades")  # no private frame came: not subscribed


@pytest.mark.parametrize(
    "fault", [ConnectionRefusedError(111, "refused"), asyncpg.CannotConnectNowError("starting")]
)
def test_a_subscribe_while_the_database_is_away_is_auth_unavailable_and_its_signature_unlogged(
    exchange: Exchange, fault: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """Not `internal_error` with the whole subscribe logged: its signature never reached
    the replay window, so a reader of the log could send it again within 30 s (and with
    `cancel_on_disconnect`, hang up to cancel the account's orders)."""
    ex = exchange
    ex.load_fault = fault
    msg = ex.signed(ALICE_KEY, cancel_on_disconnect=True)
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(msg)
        error = recv(ws)
        assert (error["type"], error["code"]) == ("error", "auth_unavailable"), error
        ex.load_fault = None
        ws.send_json(msg)  # the database is back: the same subscribe goes through
        assert recv(ws)["type"] == "subscribed"
    assert msg["signature"] not in caplog.text


def test_an_unexpected_failure_logs_the_subscribes_key_never_its_signature(
    exchange: Exchange, caplog: pytest.LogCaptureFixture
) -> None:
    ex = exchange
    ex.load_fault = RuntimeError("a bug")
    msg = ex.signed(ALICE_KEY)
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(msg)
        assert recv(ws)["code"] == "internal_error"
        subscribe(ws, "trades")  # the connection lives on
    logged = [r for r in caplog.records if r.name == "market.stream"]
    assert logged and ALICE_KEY in logged[0].getMessage()
    assert msg["signature"] not in caplog.text


def test_a_connection_logs_a_failing_key_recheck_once_per_outage_without_a_traceback(
    exchange: Exchange, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every private connection re-checks its key each second: once the key cache expires
    in an outage, a warning with a traceback each time flooded the log."""
    ex = exchange
    monkeypatch.setattr(market.stream, "KEY_RECHECK_S", 0.02)
    ex.app.state.authenticator.cache_ttl_s = 0  # every re-check loads the key

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "cannot re-check key" in r.getMessage()]

    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(ex.signed(ALICE_KEY))
        assert recv(ws)["type"] == "subscribed"
        for outage in (1, 2):
            ex.load_fault = ConnectionRefusedError(111, "refused")
            time.sleep(0.4)  # some twenty re-checks fail
            assert len(warnings()) == outage
            ex.load_fault = None
            time.sleep(0.2)  # and succeed again: the next failure is a new outage
        subscribe(ws, "trades")  # still open
    assert all(r.exc_info is None for r in warnings())


@pytest.mark.parametrize("cancel_on_disconnect", [False, True])
def test_a_subscribe_sent_again_with_cancel_on_disconnect_flipped_is_refused(
    exchange: Exchange, cancel_on_disconnect: bool
) -> None:
    """The signature covers the subscribe's parameters: whoever saw a signed subscribe
    cannot send it with `cancel_on_disconnect` the other way (to cancel the account's
    orders by hanging up, or to disarm the owner's). The refused copy takes nothing
    from the honest one, which still subscribes."""
    ex = exchange
    honest = ex.signed(ALICE_KEY, cancel_on_disconnect=cancel_on_disconnect)
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json({**honest, "cancel_on_disconnect": not cancel_on_disconnect})
        error = recv(ws)
        assert (error["type"], error["code"]) == ("error", "bad_signature"), error
        assert '"cancel_on_disconnect":' in error["message"]  # it says what to sign
        ex.publish(ex.order("alice", Side.SELL, 150))
        subscribe(ws, "trades")  # no private frame came: not subscribed
        ws.send_json(honest)
        assert recv(ws) == {"type": "subscribed", "channel": "orders", "instrument": None,
                            "account_id": "alice"}  # fmt: skip
        ex.publish(ex.order("alice", Side.SELL, 155))
        assert recv(ws)["type"] == "order"


def test_a_subscribe_signed_over_an_empty_body_is_refused(exchange: Exchange) -> None:
    """The old signing (`GET /v1/stream`, empty body) covers no parameter: refused."""
    ex = exchange
    ts = now_ms()
    sig = ex.keys[ALICE_KEY].sign(request_message(ts, "GET", "/v1/stream", b""))
    old = {"op": "subscribe", "channel": "orders", "key_id": ALICE_KEY, "timestamp_ms": ts,
           "signature": base64.b64encode(sig).decode()}  # fmt: skip
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(old)
        error = recv(ws)
        assert (error["type"], error["code"]) == ("error", "bad_signature"), error
        subscribe(ws, "book")  # public channels need no signature, as before


# --------------------------------------------------------------------------- cancel on disconnect


class RecordingSequencer:
    """Takes the `CancelAllOp`s of cancel on disconnect (it cancels nothing), after
    refusing the first `refusals` submits as in a database outage (503)."""

    def __init__(self, refusals: int = 0) -> None:
        self.ops: list[Any] = []
        self.refusals = refusals

    async def submit(self, op: Any) -> Any:
        if self.refusals:
            self.refusals -= 1
            raise LedgerUnavailable("the ledger's database is unreachable")
        self.ops.append(op)
        return type("Result", (), {"cancelled": []})()


def cancelled_accounts(sequencer: RecordingSequencer, n: int) -> list[str]:
    """The accounts of the first `n` cancels on disconnect (waiting for them)."""
    deadline = time.monotonic() + TIMEOUT
    while len(sequencer.ops) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # and no more came
    return [op.account_id for op in sequencer.ops]


def recording(ex: Exchange) -> RecordingSequencer:
    sequencer = RecordingSequencer()
    ex.app.state.sequencer = sequencer
    return sequencer


def arm(ex: Exchange, ws: Any, key: str, account: str) -> None:
    """Subscribe with `key`, cancel on disconnect on: `account` is armed."""
    ws.send_json(ex.signed(key, cancel_on_disconnect=True))
    assert recv(ws)["account_id"] == account


def test_a_revoked_keys_orders_stay_when_the_client_hangs_up_before_the_key_recheck(
    exchange: Exchange,
) -> None:
    """A leaker who hangs up right after the revocation (which it sees at once on REST),
    before the connection's next key re-check, does not cancel the owner's orders. Bob's
    account, armed on the same connection with his own (active) key, is cancelled: the
    disconnect did run (and alice's account comes first, so it was passed over)."""
    ex = exchange
    sequencer = recording(ex)
    with ex.client.websocket_connect("/v1/stream") as ws:
        arm(ex, ws, BOB_KEY, "bob")
        arm(ex, ws, ALICE_KEY, "alice")
        ex.revoked.add(ALICE_KEY)  # revoked in the database; this process not yet told
    assert cancelled_accounts(sequencer, 1) == ["bob"]


def test_an_account_armed_under_an_earlier_key_is_spared_once_that_key_is_revoked(
    exchange: Exchange,
) -> None:
    """Armed for alice with her key, then subscribed with bob's: the connection watches
    bob's key only, yet alice's account stays armed by her key, and that key is checked
    when the connection ends."""
    ex = exchange
    sequencer = recording(ex)
    with ex.client.websocket_connect("/v1/stream") as ws:
        arm(ex, ws, ALICE_KEY, "alice")
        arm(ex, ws, BOB_KEY, "bob")
        ex.revoked.add(ALICE_KEY)
        ex.app.state.authenticator.forget(ALICE_KEY)  # this process knows at once
        time.sleep(KEY_RECHECK_S * 1.5)  # a re-check of bob's key: still active
        subscribe(ws, "trades")  # still open
    assert cancelled_accounts(sequencer, 1) == ["bob"]


def test_cancel_on_disconnect_fires_for_each_account_armed_with_an_active_key(
    exchange: Exchange,
) -> None:
    ex = exchange
    sequencer = recording(ex)
    with ex.client.websocket_connect("/v1/stream") as ws:
        arm(ex, ws, ALICE_KEY, "alice")
        arm(ex, ws, BOB_KEY, "bob")
    assert cancelled_accounts(sequencer, 2) == ["alice", "bob"]


def test_a_cancel_on_disconnect_refused_in_an_outage_is_retried_until_taken(
    exchange: Exchange,
) -> None:
    """The bot is gone: its orders must not stay open, to fill once the database is back."""
    ex = exchange
    ex.app.state.owed_cancels = OwedCancels(first_delay_s=0.02, max_delay_s=0.1)
    sequencer = RecordingSequencer(refusals=3)
    ex.app.state.sequencer = sequencer
    with ex.client.websocket_connect("/v1/stream") as ws:
        arm(ex, ws, ALICE_KEY, "alice")
    assert cancelled_accounts(sequencer, 1) == ["alice"]


def test_cancel_on_disconnect_of_one_instruments_orders_cancels_only_those(
    exchange: Exchange,
) -> None:
    """Armed by a subscribe to alice's orders of A: the disconnect cancels her orders of A
    (`POST /v1/orders/cancel-all` with that instrument), not those of B."""
    ex = exchange
    sequencer = recording(ex)
    with ex.client.websocket_connect("/v1/stream") as ws:
        ws.send_json(ex.signed(ALICE_KEY, cancel_on_disconnect=True, instrument=SYM_A))
        assert recv(ws)["instrument"] == SYM_A
    assert cancelled_accounts(sequencer, 1) == ["alice"]
    assert sequencer.ops[0].instrument == SYM_A
