"""The state of one order book, its queries and its canonical snapshot, and
the checks on a snapshot before a book resumes from it.

`BookState` is the base of `market.book.OrderBook`: the book's storage (see the
layout notes in `market.book`), what it answers, and the checks that refuse a
new order before it meets the book (their order is the rules' in
`market.book`). The snapshot format is `schemas.market.BookSnapshot` (version
`SNAPSHOT_VERSION`): both sides in priority order, so it is the same whatever
queue structure holds the orders in memory (tombstones are never in it).
"""

from __future__ import annotations

import hashlib
from heapq import heappush
from typing import Final, Self

import msgspec

from market.book_order import Resting, from_wire, to_wire
from market.errors import InvalidSnapshot
from market.instruments import validate_instrument
from market.level import (
    COMPACT_MIN,
    LEVEL_COMPACT_MIN,
    SHORT,
    Level,
    compact,
    depth_side,
    drop_empty_top,
    fillable,
    in_priority_order,
    sweep_level,
)
from schemas.errors import DomainError
from schemas.market import (
    BookSnapshot,
    Depth,
    Instrument,
    NewOrder,
    OpenOrder,
    OrderType,
    RejectReason,
    RestingOrder,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
)

SNAPSHOT_VERSION: Final = 1
NO_EXPIRY: Final = 2**63  # `_next_expiry` while no GTD order rests (after any time)

_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
_GTD: Final = TimeInForce.GTD
_OPEN: Final = TradingState.OPEN
_CLOSED: Final = TradingState.CLOSED
_CANCEL_OLDEST: Final = StpMode.CANCEL_OLDEST
_R = RejectReason

_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(BookSnapshot)


def size_and_price_reason(instrument: Instrument, quantity: int, price: int | None) -> str | None:
    """The first of a new order's checks on its quantity and price that it fails, in the
    engine's order (`qty_invalid`, `qty_off_lot`, `price_required`, `price_off_tick`,
    `price_out_of_band`), or None. `price` is the one the book uses: a market order's
    is the band edge when it names none. The engine's own rule (`_new_reason`), also
    the sequencer's before its funds check, so a refused order gets the same reason
    whichever refuses it."""
    if quantity <= 0:
        return _R.QTY_INVALID
    if quantity % instrument.lot_size:
        return _R.QTY_OFF_LOT
    if price is None:
        return _R.PRICE_REQUIRED
    if price % instrument.tick_size:
        return _R.PRICE_OFF_TICK
    if price < instrument.price_min or price > instrument.price_max:
        return _R.PRICE_OUT_OF_BAND
    return None


def skips_own(stp: StpMode) -> bool:
    """Whether a taker with this self-trade prevention matches on past its own resting
    orders, cancelling them (`cancel_oldest`), rather than stopping at the first
    (`cancel_newest`, `cancel_both`) or taking its quantity off against them
    (`decrement_and_cancel`). What a FOK counts as fillable, and what the sequencer's
    walk of the asks counts as liquidity (`market.sequencer.protection`); the match
    (`OrderBook._match`) inlines the same test."""
    return stp is _CANCEL_OLDEST


class BookState:
    """What one instrument's book holds (levels, indexes, counters), what it
    answers (best prices, depth, open orders, snapshot, state hash) and the
    checks that refuse a new order. `market.book.OrderBook` adds the commands;
    the layout is described there."""

    __slots__ = (
        "_ask_heap",
        "_asks",
        "_bid_heap",
        "_bids",
        "_compact_at",
        "_compact_min",
        "_dead",
        "_gtd",
        "_lot",
        "_next_expiry",
        "_orders",
        "_owner_limit",
        "_owners",
        "_pmax",
        "_pmin",
        "_seq",
        "_state",
        "_sweep",
        "_symbol",
        "_tick",
        "instrument",
    )

    def __init__(self, instrument: Instrument, compact_min: int = COMPACT_MIN) -> None:
        validate_instrument(instrument)
        self.instrument = instrument
        self._symbol = instrument.symbol
        self._state = instrument.state
        self._lot = instrument.lot_size
        self._tick = instrument.tick_size
        self._pmin = instrument.price_min
        self._pmax = instrument.price_max
        self._seq = 1  # the seq of the next event
        self._bids: dict[int, Level] = {}  # key = -price
        self._bid_heap: list[int] = []
        self._asks: dict[int, Level] = {}  # key = price
        self._ask_heap: list[int] = []
        self._dead: dict[int, int] = {}  # level key -> its tombstones counted (market.level)
        self._sweep: dict[int, int] = {}  # level key -> where its next sweep starts (a hint)
        self._orders: dict[int, Resting] = {}
        # owner -> (client order ids it used in this book, the orders it rested);
        # orders gone (open 0) are pruned when the list reaches `_owner_limit`
        self._owners: dict[str, tuple[set[str], list[Resting]]] = {}
        self._owner_limit: dict[str, int] = {}
        self._gtd: list[tuple[int, int]] = []  # (expire_at, order_id), lazy
        self._next_expiry = NO_EXPIRY  # the top of `_gtd` (stale or not), or NO_EXPIRY
        self._compact_min = compact_min
        self._compact_at = compact_min  # heap size that triggers compaction (market.level)

    # ------------------------------------------------------------------ checks

    def _taker_reason(self, cmd: NewOrder, crosses: bool, lim_key: int) -> str | None:
        """For a post-only or FOK order that passed `_new_reason`'s checks:
        `post_only_would_take` or `fok_unfillable`, or None."""
        if not crosses:
            return None if cmd.post_only else _R.FOK_UNFILLABLE
        if cmd.post_only:
            return _R.POST_ONLY_WOULD_TAKE
        if cmd.side is _BUY:
            opp, opp_heap = self._asks, self._ask_heap
        else:
            opp, opp_heap = self._bids, self._bid_heap
        if fillable(opp, opp_heap, cmd.owner, skips_own(cmd.stp), cmd.quantity, lim_key):
            return None
        return _R.FOK_UNFILLABLE

    def _new_reason(self, cmd: NewOrder, price: int | None, tif: TimeInForce) -> str:
        """Why a new order is refused before it meets the book (the order of the
        checks is the module notes'); called only when one of them fails."""
        state = self._state
        qty = cmd.quantity
        expire_at = cmd.expire_at
        if state is not _OPEN:
            return _R.INSTRUMENT_CLOSED if state is _CLOSED else _R.INSTRUMENT_HALTED
        if cmd.order_id in self._orders:
            return _R.DUPLICATE_ORDER_ID
        if reason := size_and_price_reason(self.instrument, qty, price):
            return reason
        if cmd.order_type is _MARKET and (tif is _GTC or tif is _GTD):
            return _R.INVALID_TIME_IN_FORCE
        if (tif is _GTD) is (expire_at is None):
            return _R.INVALID_EXPIRE_AT
        if expire_at is not None and expire_at <= cmd.time:
            return _R.EXPIRE_AT_IN_PAST
        if cmd.post_only and (cmd.order_type is _MARKET or tif is _IOC or tif is _FOK):
            return _R.POST_ONLY_NOT_ALLOWED
        assert cmd.client_order_id is not None  # the only check left
        return _R.DUPLICATE_CLIENT_ORDER_ID

    # ------------------------------------------------------------------ owners

    def _owner(self, owner: str) -> tuple[set[str], list[Resting]]:
        rec = self._owners.get(owner)
        if rec is None:
            rec = self._owners[owner] = (set(), [])
        return rec

    def _prune_owner(self, owner: str, rested: list[Resting]) -> None:
        """Drop the orders that are gone (open 0: filled, cancelled, expired, or the
        old place of an amended order) from an owner's list, once it has reached four
        times what was live at the last pruning: amortised O(1) (each pruning visits
        at most 4/3 orders per order appended since the last). The list holds the
        orders themselves, not their ids: a pruning then reads each order once, where
        an id cost a look-up in `_orders` besides (measured: the pruning was a tenth
        of a deep book's time)."""
        if len(rested) < self._owner_limit.get(owner, 64):
            return
        rested[:] = [o for o in rested if o.open]
        self._owner_limit[owner] = max(64, 4 * len(rested))

    def _owned(self, owner: str) -> list[int]:
        """Ids of `owner`'s resting orders, ascending (a live order has open > 0 and
        is in its owner's list once)."""
        return sorted([o.order_id for o in self._owners.get(owner, ((), ()))[1] if o.open])

    # ------------------------------------------------------------------ storage

    def _unlink(self, order: Resting) -> bool:
        """Take a resting order out of the order index and its level, in O(1). At
        the front of its level: pop it and any tombstones behind it. In a short
        level (`SHORT` entries or fewer, where a scan is cheaper than the
        bookkeeping): remove it. Else leave it as a tombstone (open 0, set here if
        it is not yet) and count it in `dead`, compacting the level when they could
        be half of it (see `market.level`). True if the object left the level, so
        that an amend may reuse it; a caller whose order is gone sets its open to 0
        before (an owner's list tells a gone order by it). `cancel_order` inlines
        this."""
        if order.side is _BUY:
            levels, heap, key = self._bids, self._bid_heap, -order.price
        else:
            levels, heap, key = self._asks, self._ask_heap, order.price
        del self._orders[order.order_id]
        level = levels[key]
        if level[0] is order:
            level.popleft()
            while level and not level[0].open:
                level.popleft()
                self._dead[key] -= 1
            if not level and heap[0] == key:
                drop_empty_top(levels, heap, self._dead)
            return True
        if len(level) <= SHORT:
            level.remove(order)
            return True
        if order.open:  # (a load is cheap, a store into a Struct is not)
            order.open = 0
        dead = self._dead
        n = dead[key] + 1
        if n > LEVEL_COMPACT_MIN and 2 * n > len(level):
            n -= sweep_level(level, key, self._sweep)
        dead[key] = n
        return False

    def _append(self, order: Resting, requeued: bool = False) -> None:
        """Put an order at the back of its price level and into the indexes
        (`requeued`: an amended order whose object is already in its owner's list)."""
        if order.side is _BUY:
            levels, key = self._bids, -order.price
        else:
            levels, key = self._asks, order.price
        level = levels.get(key)
        if level is None:
            level = self._new_level(order.side, key)
        level.append(order)
        oid = order.order_id
        self._orders[oid] = order
        if requeued:
            return
        rested = self._owner(order.owner)[1]
        rested.append(order)
        if not len(rested) & 63:
            self._prune_owner(order.owner, rested)

    def _new_level(self, side: Side, key: int) -> Level:
        """An empty level at `key`, in the side's dict and heap."""
        if side is _BUY:
            levels, heap = self._bids, self._bid_heap
        else:
            levels, heap = self._asks, self._ask_heap
        if len(heap) >= self._compact_at:
            sides = ((self._bids, self._bid_heap), (self._asks, self._ask_heap))
            self._compact_at = compact(sides, self._dead, self._sweep, self._compact_min)
        level = levels[key] = Level()
        self._dead[key] = 0
        heappush(heap, key)
        return level

    # ------------------------------------------------------------------ state

    # ------------------------------------------------------------------ queries

    @property
    def symbol(self) -> str:
        return self._symbol

    @property
    def trading_state(self) -> TradingState:
        return self._state

    @property
    def next_seq(self) -> int:
        return self._seq

    def best_bid(self) -> int | None:
        return -self._bid_heap[0] if self._bid_heap else None

    def best_ask(self) -> int | None:
        return self._ask_heap[0] if self._ask_heap else None

    def depth(self, levels: int = 10) -> Depth:
        """Aggregated price levels, best first, at most `levels` per side."""
        return Depth(
            instrument=self._symbol,
            seq=self._seq - 1,
            bids=depth_side(self._bids, levels, -1),
            asks=depth_side(self._asks, levels, 1),
        )

    def open_orders(self, owner: str | None = None) -> list[OpenOrder]:
        """Open orders of `owner` (None: everyone), in order id order."""
        orders = self._orders
        ids = sorted(orders) if owner is None else self._owned(owner)
        return [self._open_order(orders[oid]) for oid in ids]

    def get_order(self, order_id: int) -> OpenOrder | None:
        order = self._orders.get(order_id)
        return None if order is None else self._open_order(order)

    def _open_order(self, o: Resting) -> OpenOrder:
        return OpenOrder(
            instrument=self._symbol,
            order_id=o.order_id,
            owner=o.owner,
            client_order_id=o.client_order_id,
            side=o.side,
            price=o.price,
            quantity=o.quantity,
            open_quantity=o.open,
            filled_quantity=o.filled,
            cancelled_quantity=o.cancelled,
            tif=o.tif,
            expire_at=o.expire_at,
        )

    def __len__(self) -> int:
        """Number of resting orders."""
        return len(self._orders)

    # ------------------------------------------------------------------ state

    def to_snapshot(self) -> BookSnapshot:
        """The canonical state: queue order of both sides, next seq, instrument
        (with its trading state), used client order ids."""
        return BookSnapshot(
            version=SNAPSHOT_VERSION,
            instrument=self.instrument,
            next_seq=self._seq,
            bids=to_wire(in_priority_order(self._bids)),
            asks=to_wire(in_priority_order(self._asks)),
            client_order_ids=sorted(
                (owner, coid) for owner, (used, _) in self._owners.items() for coid in used
            ),
        )

    def snapshot(self) -> bytes:
        """Serialize the book (msgpack); `OrderBook.restore` rebuilds it exactly."""
        return _encoder.encode(self.to_snapshot())

    def state_hash(self) -> bytes:
        """SHA-256 of the canonical snapshot: equal for books in the same state
        (same queue order, orders, seq, trading state, used client ids)."""
        return hashlib.sha256(self.snapshot()).digest()

    @classmethod
    def restore(cls, data: bytes) -> Self:
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidSnapshot(f"cannot decode book snapshot: {exc}") from exc
        return cls.from_snapshot(snap)

    @classmethod
    def from_snapshot(cls, snap: BookSnapshot) -> Self:
        """Rebuild a book; refuse (`InvalidSnapshot`) anything the book itself
        could not have produced, rather than resume from a broken state."""
        if snap.version != SNAPSHOT_VERSION:
            raise InvalidSnapshot(f"unsupported book snapshot version {snap.version}")
        try:
            book = cls(snap.instrument)
        except DomainError as exc:
            raise InvalidSnapshot(f"snapshot instrument: {exc.message}") from exc
        if snap.next_seq < 1:
            raise InvalidSnapshot(f"next seq {snap.next_seq} < 1")
        book._seq = snap.next_seq
        for side, orders in ((_BUY, snap.bids), (_SELL, snap.asks)):
            last: int | None = None
            for order in orders:
                problem = snapshot_order_problem(
                    snap.instrument, order, side, last, order.order_id in book._orders
                )
                if problem is not None:
                    raise InvalidSnapshot(f"order {order.order_id} in snapshot: {problem}")
                last = order.price
                book._append(from_wire(order))
                if order.expire_at is not None:
                    heappush(book._gtd, (order.expire_at, order.order_id))
        if book._gtd:
            book._next_expiry = book._gtd[0][0]
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            raise InvalidSnapshot(f"crossed book in snapshot: bid {bid} >= ask {ask}")
        for owner, coid in snap.client_order_ids:
            book._owner(owner)[0].add(coid)
        return book


def snapshot_order_problem(
    instrument: Instrument,
    order: RestingOrder,
    side: Side,
    last_price: int | None,
    seen: bool,
) -> str | None:
    """What makes `order` impossible at its place in a snapshot of `instrument`'s
    book (after an order of `last_price` on `side`; `seen`: its id came earlier),
    or None."""
    if order.side is not side:
        return "on the wrong side"
    if seen:
        return "appears twice"
    if order.open <= 0 or order.filled < 0 or order.cancelled < 0:
        return "bad quantities"
    if order.filled + order.open + order.cancelled != order.quantity:
        return "quantity not conserved"
    if order.open % instrument.lot_size:
        return "open quantity off the lot"
    price = order.price
    if price % instrument.tick_size or not instrument.price_min <= price <= instrument.price_max:
        return "price off the tick or out of the band"
    if last_price is not None and (price > last_price if side is Side.BUY else price < last_price):
        return "out of priority order"
    if order.tif is not TimeInForce.GTC and order.tif is not TimeInForce.GTD:
        return "time in force cannot rest"
    if (order.tif is TimeInForce.GTD) is (order.expire_at is None):
        return "expire_at does not match the time in force"
    return None
