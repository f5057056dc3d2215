"""The market data websocket, `/v1/stream` (protocol: `schemas.stream`).

The hub (`market.feed.MarketData`) is `app.state.market_data`, created by
`ops.app.create_app` with the app itself, so it exists before any lifespan
runs: the sequencer's lifespan finds it there, calls `load(depths)` after
recovery and `publish(events)` after each commit.

Per connection, two tasks: the receiver decodes client messages and acts on
the hub synchronously (a subscribe queues the ack and snapshot and registers
the subscriber in one step); the sender moves the subscriber's queued frames
to the socket. Every reply goes through the same queue, so the client sees
frames in the order the hub produced them. When the hub drops a slow
subscriber, the sender closes the socket with `CLOSE_SLOW_CONSUMER`.

A bad message gets an `error` frame and the connection stays open. The
private `orders` subscribe is signed like `GET /v1/stream` whose body is the
subscribe's own parameters (`market.signing.subscribe_body`: channel,
instrument, `cancel_on_disconnect`), and checked by `app.state.authenticator`
(`market.auth`); its failures come back as `error` frames with the auth codes
(`missing_signature`, `stale_timestamp`, `unknown_key`, `bad_signature`,
`replayed_signature`), and `auth_unavailable` while the database is away. A failed
message is logged by channel and key id, never with its signature: one refused before
the replay window saw it could be sent again by whoever reads the log.

Signing the parameters is what keeps whoever sees a signed subscribe from sending it
again with `cancel_on_disconnect: true` and hanging up (which would cancel every open
order of the account): the changed subscribe is `bad_signature`, and so is one signed
the old way (empty body).

The upgrade request itself needs no signature (public market data): the
HTTP auth middleware does not see websocket scopes.

An `orders` subscribe with an `instrument` gets the account's updates of that
instrument only (`Subscriber.orders_instrument`), and its cancel on disconnect is
scoped the same way.

Cancel on disconnect: an `orders` subscribe with `cancel_on_disconnect: true` arms it
for that account on this connection; an unsubscribe from `orders` disarms it. When the
connection ends while armed (dropped, closed, or the server dropped a slow consumer),
every open order of the account (of the subscribe's instrument, if it named one) is
cancelled through the sequencer (`CancelAllOp`), as `POST /v1/orders/cancel-all` would.
If the sequencer does not take it then (the database is away), the cancel is owed and
retried until it does
(`market.stream_cancels.OwedCancels`, `app.state.owed_cancels`); a process that crashes
loses what it owes. A bot that wants its orders to outlive a
dropped connection leaves it off; one that wants a timeout rather than a connection
uses the dead-man switch (`POST /v1/orders/cancel-after`).

A revoked key: the `orders` subscription is authenticated once, so every `KEY_RECHECK_S`
the connection asks the authenticator whether its key is still active (`key_active`,
through its cache: the process that revoked it knows at once, another process of
`serve --workers N` within `cache_ttl_s`, 30 s). Once revoked, the connection is closed
with `CLOSE_KEY_REVOKED` (4001) and its reason, and cancel on disconnect is NOT fired for
that account: a revocation is what an owner or operator does about a leaked key, and the
owner's orders are the owner's, not the leaker's; whoever revoked it cancels them if they
want (`POST /v1/orders/cancel-all`, with another key). The client reconnects and
subscribes with an active key.

The re-check loop alone would leave a gap (a leaker who hangs up within `KEY_RECHECK_S`
of the revocation), and it watches only the current subscription's key, while an account
armed earlier under another key stays armed. So each armed account keeps the key that
armed it, and when the connection ends that key is looked up afresh (`forget`, then
`key_active`: the database, not the cache): an account whose arming key is no longer
active is not cancelled. If the look-up fails (the database is away), the key stands as
it was last seen, active, and the account is cancelled as armed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from ledger.outage import CLIENT_FAULTS, DATABASE_DOWN
from market.auth import PUBLIC, Authenticator, AuthError, Principal, now_ms
from market.feed import MarketData, encode
from market.feed_queue import Subscriber
from market.sequencer.port import Exchange
from market.sequencer.queries import UntradedQuery
from market.signing import STREAM_PATH, subscribe_body
from market.stream_cancels import OwedCancels, cancel_orders
from market.stream_claims import claim
from schemas.errors import DomainError
from schemas.market import Depth
from schemas.stream import (
    Channel,
    ClientMessage,
    StreamError,
    StreamErrorCode,
    Subscribe,
    Unsubscribe,
)

log = logging.getLogger(__name__)

#: What loading a key or claiming a signature raises while the database is away: the
#: subscribe is `auth_unavailable` (try again), not `internal_error`.
DATABASE_AWAY: Final = (*DATABASE_DOWN, asyncpg.PostgresError)

MAX_MESSAGE_CHARS: Final = 4096  # client messages are small; anything larger is refused
#: How often a connection re-checks the key of its `orders` subscription (a cache look-up).
KEY_RECHECK_S: Final = 1.0
CLOSE_KEY_REVOKED: Final = 4001
CLOSE_KEY_REVOKED_REASON: Final = "key revoked: subscribe again with an active key"

_decoder = msgspec.json.Decoder(ClientMessage)


class _Armed(NamedTuple):
    """What an account's cancel on disconnect cancels, and the key that armed it."""

    key_id: str
    instrument: str | None  # of the subscribe that armed it: its orders only (None: all)


@dataclass
class _Private:
    """A connection's private side: whose orders go with it, and the key it subscribed with."""

    #: The accounts cancelled on disconnect, each with the key and scope that armed it.
    guarded: dict[str, _Armed] = field(default_factory=dict)
    key_id: str | None = None  # of the current `orders` subscription
    account_id: str | None = None
    #: Set while there is an `orders` subscription: only then is its key re-checked.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)


@websocket(STREAM_PATH, opt=PUBLIC, name="market_stream")
async def market_stream(socket: WebSocket[Any, Any, Any]) -> None:
    """Market data: public book and trades channels, private order updates."""
    hub: MarketData = socket.app.state.market_data
    await socket.accept()
    sub = hub.connect()
    private = _Private()
    receiver = asyncio.create_task(_receive(socket, hub, sub, private))
    sender = asyncio.create_task(_send(socket, sub))
    watcher = asyncio.create_task(_watch_key(socket, sub, private))
    try:
        await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.disconnect(sub)
        sub.close(1000, "")
        for task in (receiver, sender, watcher):
            task.cancel()
        for task in (receiver, sender, watcher):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await _cancel_on_disconnect(socket, private.guarded)


async def _watch_key(socket: WebSocket[Any, Any, Any], sub: Subscriber, private: _Private) -> None:
    """End the connection once the key of its `orders` subscription is revoked, without
    cancelling that account's orders (see the module's docstring)."""
    authenticator: Authenticator | None = getattr(socket.app.state, "authenticator", None)
    if authenticator is None:
        return
    failing = False  # the re-checks fail (an outage): said once, until one succeeds
    while True:
        await private.subscribed.wait()  # a public-only connection never wakes here
        await asyncio.sleep(KEY_RECHECK_S)
        key_id = private.key_id
        if key_id is None:
            continue
        try:
            active = await authenticator.key_active(key_id)
        except Exception as exc:  # the database is away: check again later
            if not failing:  # once per outage: a traceback a second per connection flooded
                log.warning("stream: cannot re-check key %s: %s: %s", key_id,
                            type(exc).__name__, exc)  # fmt: skip
            failing = True
            continue
        failing = False
        if not active and private.key_id == key_id:
            for account_id in [a for a, k in private.guarded.items() if k.key_id == key_id]:
                del private.guarded[account_id]
            log.info("stream: key %s revoked; closing its orders subscription", key_id)
            sub.close(CLOSE_KEY_REVOKED, CLOSE_KEY_REVOKED_REASON)
            return


async def _cancel_on_disconnect(
    socket: WebSocket[Any, Any, Any], guarded: dict[str, _Armed]
) -> None:
    """Cancel the orders of every armed account whose arming key is still active (of the
    instrument it armed for, if any); one the sequencer does not take now (an outage) is
    owed, retried (`market.stream_cancels`)."""
    state = socket.app.state
    authenticator: Authenticator | None = getattr(state, "authenticator", None)
    owed: OwedCancels | None = getattr(state, "owed_cancels", None)

    def sequencer() -> Exchange | None:  # asked at each try: an outage replaces it
        current: Exchange | None = state.get("sequencer")
        return current

    for account_id in sorted(guarded):
        key_id, instrument = guarded[account_id]
        if authenticator is not None and not await _still_active(authenticator, key_id):
            log.info("stream: key %s revoked; %s's orders stay", key_id, account_id)
            continue
        if await cancel_orders(sequencer(), account_id, instrument):
            continue
        if owed is None:
            log.error("stream: cancel on disconnect of %s not taken, and not retried", account_id)
        else:
            owed.owe(sequencer, account_id, instrument)


async def _still_active(authenticator: Authenticator, key_id: str) -> bool:
    """Whether `key_id` is active now, asked of the database rather than the cache."""
    authenticator.forget(key_id)
    try:
        return await authenticator.key_active(key_id)
    except Exception:  # the database is away: the key as last seen (active)
        log.warning("stream: cannot re-check key %s on disconnect", key_id, exc_info=True)
        return True


async def _send(socket: WebSocket[Any, Any, Any], sub: Subscriber) -> None:
    """Move the subscriber's frames to the socket, then close it with the subscriber's code.

    A client that stops reading blocks a write (the server waits for its transport to
    drain) while the hub goes on queueing, until it drops the subscriber. That write is
    then cancelled (nothing of its frame was written: it waits before writing) and the
    rest of the frames taken with it are not sent: the close (`CLOSE_SLOW_CONSUMER`) goes
    at once, not after the keep-alive ping fails (1011) or behind stale frames.
    """
    pump = asyncio.create_task(_pump(socket, sub))
    closed = asyncio.create_task(sub.wait_closed())
    try:
        await asyncio.wait((pump, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, closed):
            task.cancel()
        for task in (pump, closed):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if pump.done() and not pump.cancelled() and not pump.result():
        return  # the client went away
    assert sub.close_code is not None
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await socket.close(code=sub.close_code, reason=sub.close_reason)


async def _pump(socket: WebSocket[Any, Any, Any], sub: Subscriber) -> bool:
    """Send the frames until the subscriber is closed (True) or the client went away."""
    try:
        while frames := await sub.next_frames():
            for frame in frames:
                if sub.dropped:  # its queue is discarded: so is the rest of this batch
                    return True
                await socket.send_text(frame)
    except (WebSocketDisconnect, OSError, RuntimeError):
        return False
    return True


async def _receive(
    socket: WebSocket[Any, Any, Any], hub: MarketData, sub: Subscriber, private: _Private
) -> None:
    while True:
        event = await socket.receive()
        if event["type"] == "websocket.disconnect":
            return
        text = event.get("text")
        if not isinstance(text, str):
            _error(sub, StreamErrorCode.INVALID_MESSAGE, "send JSON text frames, not binary")
            continue
        if len(text) > MAX_MESSAGE_CHARS:
            _error(
                sub,
                StreamErrorCode.MESSAGE_TOO_LARGE,
                f"a message may have at most {MAX_MESSAGE_CHARS} characters",
            )
            continue
        try:
            message = _decoder.decode(text)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            _error(sub, StreamErrorCode.INVALID_MESSAGE, str(exc))
            continue
        try:
            await _handle(socket, hub, sub, message, private)
        except DomainError as exc:
            _error(sub, exc.code, exc.message)
        except Exception:  # never let one message kill the connection
            log.exception("stream: cannot handle %s", _describe(message))
            _error(sub, "internal_error", "internal error; it has been logged")


async def _handle(
    socket: WebSocket[Any, Any, Any], hub: MarketData, sub: Subscriber, message: ClientMessage,
    private: _Private,
) -> None:  # fmt: skip
    guarded = private.guarded
    if isinstance(message, Unsubscribe):
        if message.channel is not Channel.ORDERS and message.instrument is None:
            raise _invalid(f"unsubscribe from {message.channel} needs an instrument")
        hub.unsubscribe(sub, message.channel, message.instrument)
        if message.channel is Channel.ORDERS:
            guarded.clear()  # a clean unsubscribe: the orders stay
            private.key_id = private.account_id = None
            private.subscribed.clear()
        return
    assert isinstance(message, Subscribe)
    if message.channel is Channel.ORDERS:
        await _subscribe_orders(socket, hub, sub, message, private)
        return
    if message.cancel_on_disconnect:
        raise _invalid("cancel_on_disconnect is for the orders channel")
    instrument = message.instrument
    if instrument is None:
        raise _invalid(f"subscribe to {message.channel} needs an instrument")
    if instrument not in hub:
        await _discover(socket, hub, instrument)
    if message.channel is Channel.BOOK:
        hub.subscribe_book(sub, instrument)
    else:
        hub.subscribe_trades(sub, instrument)


async def _subscribe_orders(
    socket: WebSocket[Any, Any, Any], hub: MarketData, sub: Subscriber, message: Subscribe,
    private: _Private,
) -> None:  # fmt: skip
    """The private channel, of every instrument or of the one signed; cancel on disconnect
    armed for the same scope (disarmed by a subscribe without it)."""
    instrument = message.instrument
    if instrument is not None and instrument not in hub:
        await _discover(socket, hub, instrument)
    principal = await _authenticate(socket, message)
    account_id = principal.account_id
    hub.subscribe_orders(sub, account_id, instrument)  # UnknownInstrument: an error frame
    private.key_id, private.account_id = principal.key_id, account_id
    private.subscribed.set()
    if message.cancel_on_disconnect:
        private.guarded[account_id] = _Armed(principal.key_id, instrument)
    else:
        private.guarded.pop(account_id, None)


async def _discover(socket: WebSocket[Any, Any, Any], hub: MarketData, instrument: str) -> None:
    """Tell the hub of an instrument listed since start-up that has had no event yet.

    The hub learns of instruments from `load` and from their first event; one
    listed later, with an empty book, would otherwise be unknown until its
    first order. Only a book with no event at all is taken from the sequencer
    (`UntradedQuery`, in this process or over NATS): its state is then certainly
    the committed one (empty, seq 0); any other unknown book is in a batch not yet
    published, and the hub will learn of it from its events. If its first events
    reached the hub while the answer came, the hub knows it already.
    """
    sequencer = getattr(socket.app.state, "sequencer", None)
    if sequencer is None or not await sequencer.ask(UntradedQuery(instrument)):
        return
    if instrument not in hub:
        hub.load([Depth(instrument=instrument, seq=0, bids=[], asks=[])])


async def _authenticate(socket: WebSocket[Any, Any, Any], message: Subscribe) -> Principal:
    """The principal of a signed subscribe: signed as `GET /v1/stream` with its parameters
    as the body (`subscribe_body`)."""
    authenticator: Authenticator | None = getattr(socket.app.state, "authenticator", None)
    if authenticator is None:
        raise DomainError(
            "private channels are not available (no authenticator)",
            code=StreamErrorCode.AUTH_UNAVAILABLE,
        )
    missing = [
        name
        for name, value in (
            ("key_id", message.key_id),
            ("timestamp_ms", message.timestamp_ms),
            ("signature", message.signature),
        )
        if not value
    ]
    if missing:  # said here in the message's own words, not the HTTP headers'
        raise AuthError(
            f"the orders channel needs a signed subscribe: missing {', '.join(missing)}",
            code="missing_signature",
        )
    body = subscribe_body(message.channel, message.instrument, message.cancel_on_disconnect)
    try:  # AuthError: an error frame with its code
        principal = await authenticator.authenticate(
            message.key_id, str(message.timestamp_ms), message.signature, "GET", STREAM_PATH,
            body, now_ms(),
        )  # fmt: skip
    except AuthError as exc:
        if exc.code != "bad_signature":
            raise
        raise AuthError(_not_this_subscribe(body), code="bad_signature") from exc
    except CLIENT_FAULTS:
        raise  # a bug, not the database: internal_error
    except DATABASE_AWAY as exc:  # loading the key: as the claim below
        raise _auth_unavailable() from exc
    # In a gateway process of `serve --workers N` (ops.gateway_process sets the flag), the
    # signature is claimed for every gateway, not only in this process's replay window.
    pool: asyncpg.Pool | None = getattr(socket.app.state, "pool", None)
    if pool is not None and socket.app.state.get("stream_claims"):
        try:
            await claim(pool, principal.signature, message.timestamp_ms or 0, now_ms())
        except DATABASE_AWAY as exc:
            raise _auth_unavailable() from exc
    return principal


def _auth_unavailable() -> DomainError:
    return DomainError(
        "private channels are not available now (the database): try again",
        code=StreamErrorCode.AUTH_UNAVAILABLE,
    )


def _describe(message: ClientMessage) -> str:
    """A message as the log shows it: never its signature, which a reader of the log could
    send again while it is fresh (a signature refused before the replay window saw it)."""
    if isinstance(message, Subscribe):
        return f"subscribe channel={message.channel} key_id={message.key_id!r}"
    return f"unsubscribe channel={message.channel}"


def _not_this_subscribe(body: bytes) -> str:
    """Why a subscribe's signature failed, saying what it must sign: its parameters were
    changed after signing, or it was signed the old way (empty body), or by another key."""
    return (
        "the signature does not match this subscribe under this key: sign GET "
        f"{STREAM_PATH} with the timestamp and, as the body, {body.decode()}"
    )


def _invalid(text: str) -> DomainError:
    return DomainError(text, code=StreamErrorCode.INVALID_MESSAGE)


def _error(sub: Subscriber, code: str, text: str) -> None:
    sub.push(encode(StreamError(code=code, message=text)))
