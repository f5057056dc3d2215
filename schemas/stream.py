"""Market data stream wire forms: the JSON text frames of the websocket `/v1/stream`.

Client -> server messages are tagged by `op`; server -> client messages by
`type`. Times are Unix milliseconds named `..._ms` (`schemas.wire_time`). Book
levels are `[price, quantity, orders]` arrays (`DepthLevel`).

Book channel (`"book"`, per instrument): one `snapshot`, then a `delta` per
committed batch that touched the instrument. Each book message carries `seq`,
the instrument's last event seq the book reflects; a delta also carries
`prev_seq`, the `seq` of the message before it on this channel (the snapshot
or the previous delta). A client that sees `prev_seq` differ from the last
`seq` it holds has missed something and subscribes again (a repeated
`subscribe` just sends a fresh snapshot). A delta lists only changed levels,
with their new totals; quantity 0 means the level is gone. A delta may list
no level at all (the batch only rejected or changed the trading state): it
still advances `seq`.

Every book message carries `checksum`: Kraken's rule, for integers. Take the 10 best
asks (lowest price first), then the 10 best bids (highest first); for each level write
its price then its quantity in decimal digits; the checksum is the CRC32 (as zlib
computes it, unsigned) of all of that as ASCII. `book_checksum` computes it: a client
that rebuilt its book from the snapshot and the deltas compares it with each message's
and subscribes again when they differ.

Trades channel (`"trades"`, per instrument): one `trade` per fill, without
owners or order ids.

Orders channel (`"orders"`, private, per account): `order` messages wrap the
engine's event (accepted, rejected, cancelled, expired, amended) about one of the
account's orders, as the API names times (`OrderEventView`: `time_ms`, `expire_at_ms`;
the engine's own event, which the journal keeps, says `time` and `expire_at`); `fill`
messages tell the account its side of a trade (its order id, side, maker or taker) and
nothing about the counterparty.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from enum import StrEnum

import msgspec

from schemas.market import (
    DepthLevel,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)
from schemas.wire_time import take_alias


class Channel(StrEnum):
    BOOK = "book"
    TRADES = "trades"
    ORDERS = "orders"


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


class StreamErrorCode:
    """Stable codes of `StreamError` frames (auth failures use the auth codes)."""

    INVALID_MESSAGE = "invalid_message"
    MESSAGE_TOO_LARGE = "message_too_large"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    BOOK_UNAVAILABLE = "book_unavailable"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    AUTH_UNAVAILABLE = "auth_unavailable"
    #: The server's feed was resynced (a reconnect, a rebuild): `trades` or `orders`
    #: updates may have been missed; reconcile through REST. The subscription stays.
    STREAM_INTERRUPTED = "stream_interrupted"
    #: A re-subscribe to a book whose previous snapshot is still queued for this
    #: connection: refused (that snapshot resyncs the book); read it, then try again.
    SNAPSHOT_PENDING = "snapshot_pending"


# --------------------------------------------------------------------------- client -> server


class Subscribe(msgspec.Struct, kw_only=True, frozen=True, tag="subscribe", tag_field="op"):
    """Subscribe to a channel. `instrument` is required for book and trades; for orders
    it is optional: given, only the account's updates of that instrument come, and
    `cancel_on_disconnect` cancels only its orders of that instrument.

    The private `orders` channel needs `key_id`, `timestamp_ms` (Unix ms) and
    `signature` (base64 Ed25519), signed like an HTTP request `GET /v1/stream`
    whose body is the subscribe's parameters as compact JSON with sorted keys,
    `{"cancel_on_disconnect":false,"channel":"orders","instrument":null,"op":"subscribe"}`
    (`market.signing.subscribe_body`), so none of them can be changed after
    signing. `timestamp` is its deprecated name (one version).
    """

    channel: Channel
    instrument: str | None = None
    key_id: str | None = None
    timestamp_ms: int | None = None
    signature: str | None = None
    #: `orders` only: when this connection drops (not after an unsubscribe from the
    #: orders channel), cancel every open order of the account (of `instrument`, if given).
    cancel_on_disconnect: bool = False
    timestamp: int | None = None  # deprecated name of `timestamp_ms`

    def __post_init__(self) -> None:
        take_alias(self, "timestamp", "timestamp_ms")


class Unsubscribe(msgspec.Struct, kw_only=True, frozen=True, tag="unsubscribe", tag_field="op"):
    channel: Channel
    instrument: str | None = None


ClientMessage = Subscribe | Unsubscribe


# --------------------------------------------------------------------------- server -> client


class Subscribed(msgspec.Struct, kw_only=True, frozen=True, tag="subscribed"):
    channel: Channel
    instrument: str | None = None
    account_id: str | None = None


class Unsubscribed(msgspec.Struct, kw_only=True, frozen=True, tag="unsubscribed"):
    channel: Channel
    instrument: str | None = None


class BookSnapshotMessage(msgspec.Struct, kw_only=True, frozen=True, tag="snapshot"):
    """The whole book (every level, best first) as of `seq`."""

    channel: Channel = Channel.BOOK
    instrument: str
    seq: int
    bids: list[DepthLevel]
    asks: list[DepthLevel]
    checksum: int = 0  # `book_checksum` of the book as of `seq`


class BookDeltaMessage(msgspec.Struct, kw_only=True, frozen=True, tag="delta"):
    """Changed levels (new totals; quantity 0 removes the level) from `prev_seq` to `seq`."""

    channel: Channel = Channel.BOOK
    instrument: str
    seq: int
    prev_seq: int
    bids: list[DepthLevel]
    asks: list[DepthLevel]
    checksum: int = 0  # `book_checksum` of the whole book after this delta


class TradeMessage(msgspec.Struct, kw_only=True, frozen=True, tag="trade"):
    """One fill, as the public sees it. `seq` is the fill's event seq."""

    channel: Channel = Channel.TRADES
    instrument: str
    seq: int
    time_ms: int
    price: int
    quantity: int
    aggressor_side: Side


OrderEvent = OrderAccepted | OrderRejected | OrderCancelled | OrderExpired | OrderAmended

# The engine's order events as the websocket sends them: the same fields in the same
# order (so `order_event_view` builds one from the other's values), times named `_ms`.


class OrderAcceptedView(msgspec.Struct, frozen=True, gc=False, tag="accepted"):
    seq: int
    time_ms: int
    instrument: str
    order_id: int
    owner: str
    client_order_id: str | None
    side: Side
    order_type: OrderType
    price: int
    quantity: int
    tif: TimeInForce
    expire_at_ms: int | None
    post_only: bool
    stp: StpMode


class OrderRejectedView(msgspec.Struct, frozen=True, gc=False, tag="rejected"):
    seq: int
    time_ms: int
    instrument: str
    command: str
    order_id: int | None
    owner: str | None
    client_order_id: str | None
    reason: str


class OrderCancelledView(msgspec.Struct, frozen=True, gc=False, tag="cancelled"):
    seq: int
    time_ms: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    price: int
    cancelled_quantity: int
    open_quantity: int
    reason: str


class OrderExpiredView(msgspec.Struct, frozen=True, gc=False, tag="expired"):
    seq: int
    time_ms: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    price: int
    expired_quantity: int


class OrderAmendedView(msgspec.Struct, frozen=True, gc=False, tag="amended"):
    seq: int
    time_ms: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    old_price: int
    new_price: int
    old_open_quantity: int
    new_open_quantity: int
    priority_kept: bool


OrderEventView = (
    OrderAcceptedView | OrderRejectedView | OrderCancelledView | OrderExpiredView
    | OrderAmendedView
)  # fmt: skip

#: The engine's event type -> its wire view (field by field, times renamed).
EVENT_VIEWS: dict[type[OrderEvent], type[OrderEventView]] = {
    OrderAccepted: OrderAcceptedView,
    OrderRejected: OrderRejectedView,
    OrderCancelled: OrderCancelledView,
    OrderExpired: OrderExpiredView,
    OrderAmended: OrderAmendedView,
}


def order_event_view(event: OrderEvent) -> OrderEventView:
    """The engine's `event` as the websocket sends it."""
    return EVENT_VIEWS[type(event)](*msgspec.structs.astuple(event))


class OrderMessage(msgspec.Struct, kw_only=True, frozen=True, tag="order"):
    """An engine event about one of the account's orders (`order_event_view`)."""

    channel: Channel = Channel.ORDERS
    event: OrderEventView


class FillMessage(msgspec.Struct, kw_only=True, frozen=True, tag="fill"):
    """The account's side of a fill: its order, its side, whether it made or took
    liquidity, and what is left open of its order."""

    channel: Channel = Channel.ORDERS
    instrument: str
    seq: int
    time_ms: int
    order_id: int
    side: Side
    liquidity: Liquidity
    price: int
    quantity: int
    open_quantity: int
    fee: int = 0  # what this account paid in fees on this fill (the buyer's side)
    client_order_id: str = ""  # the client id of this account's order


CHECKSUM_LEVELS = 10


def book_checksum(bids: Iterable[tuple[int, int]], asks: Iterable[tuple[int, int]]) -> int:
    """CRC32 of the top levels: `bids` best (highest) first and `asks` best (lowest)
    first, each as (price, quantity); only the first `CHECKSUM_LEVELS` of each count."""
    parts: list[str] = []
    for levels in (asks, bids):
        for n, (price, quantity) in enumerate(levels):
            if n == CHECKSUM_LEVELS:
                break
            parts.append(f"{price}{quantity}")
    return zlib.crc32("".join(parts).encode("ascii"))


class StreamError(msgspec.Struct, kw_only=True, frozen=True, tag="error", omit_defaults=True):
    """An error frame; `channel` and `instrument` name the subscription it is about
    (`stream_interrupted`, `snapshot_pending`), absent otherwise."""

    code: str
    message: str
    channel: Channel | None = None
    instrument: str | None = None


ServerMessage = (
    Subscribed
    | Unsubscribed
    | BookSnapshotMessage
    | BookDeltaMessage
    | TradeMessage
    | OrderMessage
    | FillMessage
    | StreamError
)
