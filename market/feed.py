"""Market data: books rebuilt from engine events, and the hub that fans them out.

`DepthBook` is pure: aggregated price levels of one instrument, built only
from the engine's events, equal at every command boundary to the engine's own
`OrderBook.depth()` (a property test holds it to that). It starts empty or
from a `Depth` (recovery), so it cannot rely on knowing every resting order;
it does not need to: every event names the side, price and quantity it moves,
except a `Fill`, which gives the maker's price but not the taker's. An
accepted order is counted as resting at its limit price with its quantity
(it may trade at once; its fills and its IOC/STP cancel then take it out again
within the same command), so the taker's price is looked up in the orders it
saw accepted. Inside a batch the levels may look crossed; only the state after
a batch is published.

`MarketData` (the hub) lives on `app.state.market_data` (created by
`ops.app.create_app`). The sequencer calls `load(depths)` after recovery and
`publish(events)` after each committed batch, in seq order. Both are
synchronous and never block: each subscriber has a queue bounded in frames
and in bytes (`market.feed_queue`), and one that falls behind is dropped (its
connection is closed with `CLOSE_SLOW_CONSUMER`) rather than slowing the
sequencer. The websocket handler (`market.stream`) only moves the queued
frames to the socket.

Messages are encoded once per publish and shared by every subscriber; a book's
snapshot once per seq, shared by every subscribe at that seq. A re-subscribe to a
book whose snapshot this subscriber has not yet taken is refused (`snapshot_pending`):
the queued snapshot resyncs it, and a client re-subscribing without reading cannot
pile up copies.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import msgspec

from market.errors import UnknownInstrument
from market.feed_queue import CLOSE_SLOW_CONSUMER as CLOSE_SLOW_CONSUMER
from market.feed_queue import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LIMIT
from market.feed_queue import Subscriber as Subscriber
from schemas.errors import DomainError, ErrorKind
from schemas.market import (
    Depth,
    DepthLevel,
    Event,
    Fill,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    Side,
    TradingStateChanged,
)
from schemas.stream import (
    CHECKSUM_LEVELS,
    BookDeltaMessage,
    BookSnapshotMessage,
    Channel,
    FillMessage,
    Liquidity,
    OrderMessage,
    ServerMessage,
    StreamError,
    StreamErrorCode,
    Subscribed,
    TradeMessage,
    Unsubscribed,
    book_checksum,
    order_event_view,
)
from schemas.trading import FillView

log = logging.getLogger(__name__)

DEFAULT_TRADES_KEPT: Final = 1000  # recent trades kept per instrument
DEFAULT_MAX_SUBSCRIPTIONS: Final = 256  # per connection

_encoder = msgspec.json.Encoder()
_BUY: Final = Side.BUY
_SELL: Final = Side.SELL


class FeedError(DomainError):
    """The events do not fit the book (a gap in seq, or an impossible level)."""

    code = "feed_error"
    kind = ErrorKind.UNAVAILABLE


class BookUnavailable(DomainError):
    code = StreamErrorCode.BOOK_UNAVAILABLE
    kind = ErrorKind.UNAVAILABLE


class TooManySubscriptions(DomainError):
    code = StreamErrorCode.TOO_MANY_SUBSCRIPTIONS
    kind = ErrorKind.RATE_LIMITED


def encode(message: ServerMessage) -> str:
    """A JSON text frame (decoded once, shared by every subscriber)."""
    return _encoder.encode(message).decode()


# --------------------------------------------------------------------------- DepthBook


_NO_FILLS: Mapping[int, Sequence[FillView]] = {}


def _view_of(views: Mapping[int, Sequence[FillView]], order_id: int, seq: int) -> FillView | None:
    """The sequencer's view of this fill for this order (an order fills at most a few
    times in one batch, so a scan of its list)."""
    for view in views.get(order_id, ()):
        if view.seq == seq:
            return view
    return None


class BookChanges(msgspec.Struct, frozen=True):
    """Levels changed since the previous `take_changes` (new totals; quantity 0: gone)."""

    prev_seq: int
    seq: int
    bids: list[DepthLevel]
    asks: list[DepthLevel]


class _Order:
    """What the book keeps of an order it saw accepted (and still open)."""

    __slots__ = ("open", "price", "side")

    def __init__(self, side: Side, price: int, open_quantity: int) -> None:
        self.side = side
        self.price = price
        self.open = open_quantity


class DepthBook:
    """Aggregated levels of one instrument, maintained from engine events only."""

    __slots__ = ("_asks", "_before", "_bids", "_orders", "_published_seq", "instrument", "seq")

    def __init__(self, instrument: str, seq: int = 0) -> None:
        self.instrument = instrument
        self.seq = seq  # the last event seq applied
        self._published_seq = seq  # seq at the last take_changes
        # price -> [quantity, orders]
        self._bids: dict[int, list[int]] = {}
        self._asks: dict[int, list[int]] = {}
        # (is_buy, price) -> (quantity, orders) before the first change since take_changes
        self._before: dict[tuple[bool, int], tuple[int, int]] = {}
        # orders seen accepted and still open (for a taker's price)
        self._orders: dict[int, _Order] = {}

    @classmethod
    def from_depth(cls, depth: Depth) -> DepthBook:
        """A book as the engine's full-depth view shows it (orders before it are unknown)."""
        book = cls(depth.instrument, depth.seq)
        for levels, side in ((book._bids, depth.bids), (book._asks, depth.asks)):
            for level in side:
                if level.quantity <= 0 or level.orders <= 0 or level.price in levels:
                    raise FeedError(f"bad level {level} in depth of {depth.instrument}")
                levels[level.price] = [level.quantity, level.orders]
        return book

    # ------------------------------------------------------------------ events

    def apply(self, event: Event) -> None:
        """Apply one event of this instrument.

        An event at or below `seq` is already reflected and is ignored (seq 0:
        a reject outside any book). One beyond `seq + 1` means events were
        missed: `FeedError`, and the book is no longer trustworthy.
        """
        seq = event.seq
        if seq <= self.seq:
            return
        if event.instrument != self.instrument:
            raise FeedError(f"event for {event.instrument} applied to {self.instrument}")
        if seq != self.seq + 1:
            raise FeedError(f"{self.instrument}: expected seq {self.seq + 1}, got {seq}")
        kind = type(event)
        if kind is Fill:
            assert isinstance(event, Fill)
            self._fill(event)
        elif kind is OrderAccepted:
            assert isinstance(event, OrderAccepted)
            self._add(event.side, event.price, event.quantity)
            self._orders[event.order_id] = _Order(event.side, event.price, event.quantity)
        elif kind is OrderCancelled:
            assert isinstance(event, OrderCancelled)
            done = event.open_quantity == 0
            self._sub(event.side, event.price, event.cancelled_quantity, done)
            self._set_open(event.order_id, event.open_quantity)
        elif kind is OrderExpired:
            assert isinstance(event, OrderExpired)
            self._sub(event.side, event.price, event.expired_quantity, True)
            self._orders.pop(event.order_id, None)
        elif kind is OrderAmended:
            assert isinstance(event, OrderAmended)
            self._sub(event.side, event.old_price, event.old_open_quantity, True)
            self._add(event.side, event.new_price, event.new_open_quantity)
            order = self._orders.get(event.order_id)
            if order is not None:
                order.price = event.new_price
                order.open = event.new_open_quantity
        elif kind is not OrderRejected and kind is not TradingStateChanged:
            raise FeedError(f"not a market event: {kind.__name__}")
        self.seq = seq

    def _fill(self, fill: Fill) -> None:
        taker = self._orders.get(fill.taker_order_id)
        if taker is None:
            raise FeedError(f"{self.instrument}: fill for unseen taker {fill.taker_order_id}")
        taker_side = fill.aggressor_side
        maker_side = _SELL if taker_side is _BUY else _BUY
        self._sub(maker_side, fill.price, fill.quantity, fill.maker_open == 0)
        self._set_open(fill.maker_order_id, fill.maker_open)
        self._sub(taker_side, taker.price, fill.quantity, fill.taker_open == 0)
        self._set_open(fill.taker_order_id, fill.taker_open)

    def _set_open(self, order_id: int, open_quantity: int) -> None:
        if open_quantity == 0:
            self._orders.pop(order_id, None)
        else:
            order = self._orders.get(order_id)
            if order is not None:
                order.open = open_quantity

    def _touch(self, side: Side, price: int) -> dict[int, list[int]]:
        is_buy = side is _BUY
        levels = self._bids if is_buy else self._asks
        key = (is_buy, price)
        if key not in self._before:
            level = levels.get(price)
            self._before[key] = (level[0], level[1]) if level else (0, 0)
        return levels

    def _add(self, side: Side, price: int, quantity: int) -> None:
        levels = self._touch(side, price)
        level = levels.get(price)
        if level is None:
            levels[price] = [quantity, 1]
        else:
            level[0] += quantity
            level[1] += 1

    def _sub(self, side: Side, price: int, quantity: int, order_done: bool) -> None:
        levels = self._touch(side, price)
        level = levels.get(price)
        if level is None:
            raise FeedError(f"{self.instrument}: no {side} level at {price}")
        level[0] -= quantity
        if order_done:
            level[1] -= 1
        if level[1] == 0 and level[0] == 0:
            del levels[price]
        elif level[0] <= 0 or level[1] <= 0:
            raise FeedError(f"{self.instrument}: {side} level {price} went to {level}")

    # ------------------------------------------------------------------ views

    def levels(self) -> Depth:
        """Every level, best first on each side, as of `seq`."""
        return Depth(
            instrument=self.instrument,
            seq=self.seq,
            bids=[DepthLevel(p, *self._bids[p]) for p in sorted(self._bids, reverse=True)],
            asks=[DepthLevel(p, *self._asks[p]) for p in sorted(self._asks)],
        )

    def checksum(self) -> int:
        """`schemas.stream.book_checksum` of the top levels now."""
        bids = heapq.nlargest(CHECKSUM_LEVELS, self._bids)
        asks = heapq.nsmallest(CHECKSUM_LEVELS, self._asks)
        return book_checksum(
            ((p, self._bids[p][0]) for p in bids), ((p, self._asks[p][0]) for p in asks)
        )

    def take_changes(self) -> BookChanges:
        """The levels whose (quantity, orders) differ from the last call, and reset."""
        bids: list[DepthLevel] = []
        asks: list[DepthLevel] = []
        for (is_buy, price), old in self._before.items():
            level = (self._bids if is_buy else self._asks).get(price)
            new = (level[0], level[1]) if level else (0, 0)
            if new != old:
                (bids if is_buy else asks).append(DepthLevel(price, *new))
        bids.sort(key=lambda lv: -lv.price)
        asks.sort(key=lambda lv: lv.price)
        self._before.clear()
        changes = BookChanges(self._published_seq, self.seq, bids, asks)
        self._published_seq = self.seq
        return changes


# --------------------------------------------------------------------------- the hub


class MarketData:
    """Channels per instrument (book, trades) and per account (orders)."""

    def __init__(
        self,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        trades_kept: int = DEFAULT_TRADES_KEPT,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
    ) -> None:
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.max_subscriptions = max_subscriptions
        self._trades_kept = trades_kept
        self._books: dict[str, DepthBook] = {}
        self._unavailable: set[str] = set()  # known instruments whose book broke
        #: The feeder's "load me again" (the sequencer's `resync_soon`, a gateway's
        #: `FeedRelay.reload`): called when a book breaks, so that it heals by itself.
        self.reloader: Callable[[], None] | None = None
        self._trades: dict[str, deque[TradeMessage]] = {}
        #: The encoded snapshot last made of each book: (the book, its seq, the frame).
        self._snapshot_frames: dict[str, tuple[DepthBook, int, str]] = {}
        # channel -> key (instrument or account id) -> subscribers (insertion ordered)
        self._channels: dict[Channel, dict[str, dict[Subscriber, None]]] = {
            Channel.BOOK: {},
            Channel.TRADES: {},
            Channel.ORDERS: {},
        }

    # ------------------------------------------------------------------ sequencer side

    def load(self, depths: Iterable[Depth]) -> None:
        """Set books from the engine's full-depth views (start-up, or a resync).

        Current book subscribers of a reloaded instrument get a fresh snapshot,
        which restarts their seq chain. If a book was behind (or unavailable), events
        may have been missed that this hub never fanned out: its trades subscribers and
        every orders subscriber get a `stream_interrupted` error frame (reconcile through
        REST; they stay subscribed).
        """
        moved: list[str] = []
        for depth in depths:
            sym = depth.instrument
            old = self._books.get(sym)
            if depth.seq != (0 if old is None else old.seq) or sym in self._unavailable:
                moved.append(sym)  # (a book new to the hub at seq 0 missed nothing)
            try:
                book = DepthBook.from_depth(depth)
            except FeedError:
                log.exception("market data: cannot load %s", sym)
                self._mark_unavailable(sym, reload=False)  # the depth itself is bad
                continue
            self._books[sym] = book
            self._unavailable.discard(sym)
            self._trades.setdefault(sym, deque(maxlen=self._trades_kept))
            subs = self._channels[Channel.BOOK].get(sym)
            if subs:
                self._fanout(subs, encode(self._snapshot(book)))
        if moved:
            self._interrupted(moved)

    def _interrupted(self, instruments: Sequence[str]) -> None:
        """Tell trades and orders subscribers that updates may have been missed."""
        code = StreamErrorCode.STREAM_INTERRUPTED
        for sym in instruments:
            subs = self._channels[Channel.TRADES].get(sym)
            if subs:
                message = f"trades of {sym} may have been missed; see GET /v1/trades"
                self._fanout(
                    subs,
                    encode(
                        StreamError(
                            code=code, message=message, channel=Channel.TRADES, instrument=sym
                        )
                    ),
                )
        frame = encode(
            StreamError(
                code=code,
                channel=Channel.ORDERS,
                message="order and fill updates may have been missed; "
                "reconcile via REST (GET /v1/orders, GET /v1/fills)",
            )
        )
        for subs in list(self._channels[Channel.ORDERS].values()):
            self._fanout(subs, frame)

    def publish(
        self, events: Sequence[Event], fills: Mapping[int, Sequence[FillView]] = _NO_FILLS
    ) -> None:
        """Fan out one committed batch (its events in order; `fills`: the batch's fill
        views by order id, for the fee and client order id of the private fill messages).
        Never raises, never blocks."""
        touched: dict[str, DepthBook] = {}
        for event in events:
            try:
                self._event(event, touched, fills)
            except Exception:  # a bug here must not take down the sequencer
                log.exception("market data: cannot publish %r", event)
        for sym, book in touched.items():
            if self._books.get(sym) is not book:
                continue  # became unavailable during the batch
            changes = book.take_changes()
            if changes.prev_seq == changes.seq:
                continue  # only events the book already held (a batch held during a load)
            subs = self._channels[Channel.BOOK].get(sym)
            if subs:
                frame = encode(
                    BookDeltaMessage(
                        instrument=sym,
                        seq=changes.seq,
                        prev_seq=changes.prev_seq,
                        bids=changes.bids,
                        asks=changes.asks,
                        checksum=book.checksum(),
                    )
                )
                self._fanout(subs, frame)

    def _event(
        self, event: Event, touched: dict[str, DepthBook], fills: Mapping[int, Sequence[FillView]]
    ) -> None:
        sym = event.instrument
        if event.seq > 0:
            book = self._books.get(sym)
            if book is None and sym not in self._unavailable:
                if event.seq == 1:  # a new instrument's first event
                    book = self._books[sym] = DepthBook(sym)
                    self._trades.setdefault(sym, deque(maxlen=self._trades_kept))
                else:
                    log.error("market data: %s event seq %d for an unloaded book", sym, event.seq)
                    self._mark_unavailable(sym)
            if book is not None:
                try:
                    book.apply(event)
                    touched[sym] = book
                except FeedError:
                    log.exception("market data: book %s broken", sym)
                    self._mark_unavailable(sym)
        if type(event) is Fill:
            assert isinstance(event, Fill)
            self._fill(event, fills)
        elif type(event) is not TradingStateChanged:
            owner = event.owner  # type: ignore[union-attr]
            if owner is not None:
                subs = self._channels[Channel.ORDERS].get(owner)
                if subs:
                    frame = encode(OrderMessage(event=order_event_view(event)))  # type: ignore[arg-type]
                    self._fanout_private(subs, sym, frame)

    def _fill(self, fill: Fill, views: Mapping[int, Sequence[FillView]]) -> None:
        trade = TradeMessage(
            instrument=fill.instrument,
            seq=fill.seq,
            time_ms=fill.time,
            price=fill.price,
            quantity=fill.quantity,
            aggressor_side=fill.aggressor_side,
        )
        trades = self._trades.get(fill.instrument)
        if trades is None:
            trades = self._trades[fill.instrument] = deque(maxlen=self._trades_kept)
        trades.append(trade)
        subs = self._channels[Channel.TRADES].get(fill.instrument)
        if subs:
            self._fanout(subs, encode(trade))
        orders = self._channels[Channel.ORDERS]
        maker_side = _SELL if fill.aggressor_side is _BUY else _BUY
        for owner, order_id, side, liquidity, open_qty in (
            (fill.maker_owner, fill.maker_order_id, maker_side, Liquidity.MAKER, fill.maker_open),
            (fill.taker_owner, fill.taker_order_id, fill.aggressor_side, Liquidity.TAKER,
             fill.taker_open),
        ):  # fmt: skip
            subs = orders.get(owner)
            if subs:
                view = _view_of(views, order_id, fill.seq)
                msg = FillMessage(
                    instrument=fill.instrument,
                    seq=fill.seq,
                    time_ms=fill.time,
                    order_id=order_id,
                    side=side,
                    liquidity=liquidity,
                    price=fill.price,
                    quantity=fill.quantity,
                    open_quantity=open_qty,
                    fee=0 if view is None else view.fee,
                    client_order_id="" if view is None else view.client_order_id,
                )
                self._fanout_private(subs, fill.instrument, encode(msg))

    def _mark_unavailable(self, sym: str, *, reload: bool = True) -> None:
        """Forget a book that no longer matches the events; its subscribers are told
        and unsubscribed until `load` brings a fresh depth, which the feeder is asked
        for (`reloader`)."""
        self._books.pop(sym, None)
        self._unavailable.add(sym)
        subs = self._channels[Channel.BOOK].pop(sym, None)
        if subs:
            frame = encode(
                StreamError(
                    code=StreamErrorCode.BOOK_UNAVAILABLE,
                    message=f"book of {sym} is unavailable; subscribe again later",
                )
            )
            for sub in subs:
                sub.subs.discard((Channel.BOOK, sym))
            self._fanout(subs, frame)
        if reload and self.reloader is not None:
            try:
                self.reloader()
            except Exception:  # must not take down the sequencer's publish
                log.exception("market data: cannot ask for a reload of %s", sym)

    def _fanout(self, subs: dict[Subscriber, None], frame: str) -> None:
        dropped = [sub for sub in subs if not sub.push(frame)]
        for sub in dropped:
            self.disconnect(sub)

    def _fanout_private(self, subs: dict[Subscriber, None], instrument: str, frame: str) -> None:
        """An account's update of `instrument`, to its subscribers of every instrument or
        of that one."""
        dropped = [
            sub
            for sub in subs
            if sub.orders_instrument in (None, instrument) and not sub.push(frame)
        ]
        for sub in dropped:
            self.disconnect(sub)

    # ------------------------------------------------------------------ connection side

    def connect(self) -> Subscriber:
        return Subscriber(self.queue_limit, self.queue_bytes)

    def disconnect(self, sub: Subscriber) -> None:
        """Remove a subscriber from every channel (idempotent)."""
        for channel, key in list(sub.subs):
            self._remove(sub, channel, key)

    def __contains__(self, instrument: object) -> bool:
        """Whether the hub knows `instrument` (its book may still be unavailable)."""
        return instrument in self._books or instrument in self._unavailable

    def instruments(self) -> list[str]:
        return sorted(self._books.keys() | self._unavailable)

    def depth(self, instrument: str) -> Depth:
        """The book as the stream shows it now."""
        return self._book(instrument).levels()

    def recent_trades(self, instrument: str, limit: int = 100) -> list[TradeMessage]:
        """The last `limit` trades of `instrument` seen since start-up, newest first."""
        if instrument not in self:
            raise UnknownInstrument(f"unknown instrument {instrument!r}")
        trades = self._trades.get(instrument, ())
        n = max(0, min(limit, len(trades)))
        return [trades[-1 - i] for i in range(n)]

    def subscribe_book(self, sub: Subscriber, instrument: str) -> None:
        """Queue the ack and a snapshot and register, in one step (no delta missed
        or repeated). Subscribing again sends a fresh snapshot (a resync), unless the
        previous one is still queued: then a `snapshot_pending` error frame."""
        book = self._book(instrument)
        if instrument in sub.snapshots_queued and (Channel.BOOK, instrument) in sub.subs:
            message = f"the snapshot of {instrument} is still queued: read it, then its deltas"
            sub.push(encode(StreamError(code=StreamErrorCode.SNAPSHOT_PENDING, message=message,
                                        channel=Channel.BOOK, instrument=instrument)))  # fmt: skip
            return
        self._add(sub, Channel.BOOK, instrument)
        sub.push(encode(Subscribed(channel=Channel.BOOK, instrument=instrument)))
        if not sub.push(self._snapshot_frame(book)):
            self.disconnect(sub)
            return
        sub.snapshots_queued.add(instrument)

    def subscribe_trades(self, sub: Subscriber, instrument: str) -> None:
        if instrument not in self:
            raise UnknownInstrument(f"unknown instrument {instrument!r}")
        self._add(sub, Channel.TRADES, instrument)
        if not sub.push(encode(Subscribed(channel=Channel.TRADES, instrument=instrument))):
            self.disconnect(sub)

    def subscribe_orders(
        self, sub: Subscriber, account_id: str, instrument: str | None = None
    ) -> None:
        """Private channel of an authenticated account, of every instrument or only of
        `instrument` (one per connection: a subscribe replaces the previous one)."""
        if instrument is not None and instrument not in self:
            raise UnknownInstrument(f"unknown instrument {instrument!r}")
        if sub.account_id is not None and sub.account_id != account_id:
            self._remove(sub, Channel.ORDERS, sub.account_id)
        self._add(sub, Channel.ORDERS, account_id)
        sub.account_id, sub.orders_instrument = account_id, instrument
        ack = Subscribed(channel=Channel.ORDERS, instrument=instrument, account_id=account_id)
        if not sub.push(encode(ack)):
            self.disconnect(sub)

    def unsubscribe(self, sub: Subscriber, channel: Channel, key: str | None) -> None:
        """Leave a channel (`key`: the instrument; ignored for orders). Idempotent."""
        if channel is Channel.ORDERS:
            key, sub.account_id, sub.orders_instrument = sub.account_id, None, None
        if key is not None:
            self._remove(sub, channel, key)
            sub.snapshots_queued.discard(key)
        instrument = None if channel is Channel.ORDERS else key
        sub.push(encode(Unsubscribed(channel=channel, instrument=instrument)))

    def _book(self, instrument: str) -> DepthBook:
        book = self._books.get(instrument)
        if book is None:
            if instrument in self._unavailable:
                raise BookUnavailable(f"book of {instrument} is unavailable; try again later")
            raise UnknownInstrument(f"unknown instrument {instrument!r}")
        return book

    def _snapshot_frame(self, book: DepthBook) -> str:
        """The encoded snapshot of `book` now (made once per book and seq)."""
        cached = self._snapshot_frames.get(book.instrument)
        if cached is not None and cached[0] is book and cached[1] == book.seq:
            return cached[2]
        frame = encode(self._snapshot(book))
        self._snapshot_frames[book.instrument] = (book, book.seq, frame)
        return frame

    @staticmethod
    def _snapshot(book: DepthBook) -> BookSnapshotMessage:
        depth = book.levels()
        return BookSnapshotMessage(
            instrument=depth.instrument, seq=depth.seq, bids=depth.bids, asks=depth.asks,
            checksum=book.checksum(),
        )  # fmt: skip

    def _add(self, sub: Subscriber, channel: Channel, key: str) -> None:
        if (channel, key) not in sub.subs and len(sub.subs) >= self.max_subscriptions:
            raise TooManySubscriptions(
                f"at most {self.max_subscriptions} subscriptions per connection"
            )
        self._channels[channel].setdefault(key, {})[sub] = None
        sub.subs.add((channel, key))

    def _remove(self, sub: Subscriber, channel: Channel, key: str) -> None:
        sub.subs.discard((channel, key))
        subs = self._channels[channel].get(key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._channels[channel][key]
