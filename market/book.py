"""The order book of one instrument: pure price-time matching.

No I/O, no clock, no randomness: the output (events) and the state depend only
on the starting state and the commands, so a replay gives the same events and
the same `state_hash()`.

Layout, chosen so that no command's cost grows with the depth of the book
(see `market.level` for the queue of one price):

- each side is a dict `key -> Level` and a binary heap of keys; the key is the
  price for asks and minus the price for bids, so on both sides the best level
  is the smallest key (`heap[0]`) and "crosses a limit" is `key <= limit_key`
  with `limit_key = +/- limit`. A `Level` is FIFO by arrival and removes any
  order by id in O(1), so cancel, amend and expiry cost the same at the front
  of a queue of thousands as at its back;
- a key is in the dict exactly when it is in the heap (once). A level emptied
  by a fill leaves both at once (it is at the top); one emptied deeper in the
  book (cancel, amend, expiry) stays as an empty level until it reaches the top
  or gets a new order, so nothing is ever removed from the middle of a heap.
  The top of each heap is always a non-empty level (restored after every
  change), so the best price is `heap[0]`. Empty levels are dropped by
  snapshot/restore and by `compact` when a heap reaches twice the live levels
  (at least 1,024 keys);
- `orders` maps order id -> the resting order (mutable `RestingOrder`),
  `by_owner` owner -> the ids of the orders it rested, pruned lazily (mass
  cancel and an owner's open orders visit only that owner's orders), `gtd` is a heap of
  (expire_at, order id) with stale entries skipped (expiry visits only what
  expires).

Rules as built (see also `schemas.market`):

- Validation order for a new order (first failure wins): trading state,
  duplicate order id (among open orders), quantity (`qty_invalid`,
  `qty_off_lot`), price (`price_required`, `price_off_tick`,
  `price_out_of_band`), time in force (a market order must be IOC or FOK),
  `expire_at` (required exactly for GTD; `expire_at_in_past` if not after the
  command time), post-only (only GTC/GTD limit), duplicate client order id,
  then `post_only_would_take`, then `fok_unfillable`.
- A client order id may be used once per owner per instrument (ever, not only
  while open), so a retried submission cannot create a second order.
- FOK is checked before any fill: the fillable quantity is the open quantity of
  other owners' orders within the limit, in priority order, counted up to the
  first order of the taker's own owner, except with STP cancel_oldest, where
  own orders are skipped (they would be cancelled, not traded). So an FOK
  either fills entirely or is rejected, and never meets its own order before
  it is done.
- STP applies to the taker's mode (see `schemas.market.StpMode`) and is checked
  at each resting order in priority order; a self-trade never happens. The
  taker's STP cancels and decrements come as `OrderCancelled` events.
- Amend sets the new *open* quantity. A decrease at the same price keeps time
  priority; a price change or an increase re-queues at the back; a new price
  crossing the opposite best is rejected (`amend_would_cross`).
- GTD: before any command with time `t`, resting GTD orders with
  `expire_at <= t` expire (ordered by expire_at, then order id).
- Expired quantity counts as cancelled in `filled + open + cancelled == quantity`.
- Mass cancel and close cancel in order id order (not arrival order), so the
  event order does not depend on how the book was built (e.g. from a snapshot).
"""

from __future__ import annotations

import hashlib
from heapq import heappop, heappush
from typing import Final

import msgspec

from market.book_state import SNAPSHOT_VERSION, snapshot_order_problem
from market.errors import InvalidSnapshot
from market.instruments import validate_instrument
from market.level import (
    Level,
    bury,
    compact,
    depth_side,
    drop_empty_top,
    fillable,
    in_priority_order,
    new_level,
)
from schemas.errors import DomainError
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    BookSnapshot,
    CancelOrder,
    CancelReason,
    Command,
    CommandKind,
    Depth,
    Event,
    Fill,
    Instrument,
    MassCancel,
    NewOrder,
    OpenOrder,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    RejectReason,
    RestingOrder,
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)

__all__ = ["SNAPSHOT_VERSION", "OrderBook", "default_tif"]

# Module-level aliases: a global lookup is cheaper than an Enum attribute lookup.
_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_LIMIT: Final = OrderType.LIMIT
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
_GTD: Final = TimeInForce.GTD
_OPEN: Final = TradingState.OPEN
_HALTED: Final = TradingState.HALTED
_CLOSED: Final = TradingState.CLOSED
_CANCEL_NEWEST: Final = StpMode.CANCEL_NEWEST
_CANCEL_OLDEST: Final = StpMode.CANCEL_OLDEST
_CANCEL_BOTH: Final = StpMode.CANCEL_BOTH
_DECREMENT: Final = StpMode.DECREMENT_AND_CANCEL

_R = RejectReason
_C = CancelReason
_STP: Final = CancelReason.SELF_TRADE

_COMPACT_MIN: Final = 1_024  # smallest heap size that triggers compaction

_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(BookSnapshot)


def default_tif(order_type: OrderType) -> TimeInForce:
    """The time in force of an order that names none: IOC for a market order,
    GTC for a limit order. The one place this default lives."""
    return _IOC if order_type is _MARKET else _GTC


class OrderBook:
    """One instrument's book. Feed it commands with `process` (or the per-command
    methods); each returns the ordered events it caused."""

    __slots__ = (
        "_ask_heap",
        "_asks",
        "_bid_heap",
        "_bids",
        "_by_owner",
        "_client_ids",
        "_compact_at",
        "_gtd",
        "_lot",
        "_orders",
        "_owner_limit",
        "_pmax",
        "_pmin",
        "_seq",
        "_state",
        "_symbol",
        "_tick",
        "instrument",
    )

    def __init__(self, instrument: Instrument) -> None:
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
        self._orders: dict[int, RestingOrder] = {}
        # owner -> ids of orders it rested; gone ones are pruned when the list
        # reaches `_owner_limit` (twice what was live at the last pruning)
        self._by_owner: dict[str, list[int]] = {}
        self._owner_limit: dict[str, int] = {}
        # owner -> client order ids used in this book (strings: no GC-tracked keys)
        self._client_ids: dict[str, set[str]] = {}
        self._gtd: list[tuple[int, int]] = []  # (expire_at, order_id), lazy
        self._compact_at = _COMPACT_MIN  # heap size that triggers compaction

    # ------------------------------------------------------------------ dispatch

    def process(self, cmd: Command) -> list[Event]:
        """Apply one command; return its events in order.

        The caller routes by instrument (`MatchingEngine` does): the book does
        not look at `cmd.instrument`. Command times should not go backwards (the
        sequencer stamps them); the book only compares them with `expire_at`.
        """
        if type(cmd) is NewOrder:
            return self.new_order(cmd)
        if type(cmd) is CancelOrder:
            return self.cancel_order(cmd)
        if type(cmd) is AmendOrder:
            return self.amend_order(cmd)
        if isinstance(cmd, MassCancel):
            return self.mass_cancel(cmd.time, cmd.owner)
        if isinstance(cmd, SetTradingState):
            return self.set_trading_state(cmd.state, cmd.time)
        if isinstance(cmd, AdvanceTime):
            return self.advance_time(cmd.time)
        raise TypeError(f"not a market command: {type(cmd).__name__}")

    # ------------------------------------------------------------------ new order

    def new_order(self, cmd: NewOrder) -> list[Event]:
        t = cmd.time
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= t:
            self._expire(t, events)
        side = cmd.side
        price = cmd.price
        tif = cmd.tif
        if cmd.order_type is _MARKET:
            if tif is None:
                tif = _IOC
            if price is None:
                price = self._pmax if side is _BUY else self._pmin  # protection: the band edge
        elif tif is None:
            tif = _GTC
        reason = self._new_reason(cmd, price, tif)
        if reason is not None:
            return self._reject_new(cmd, reason, events)
        assert price is not None

        owner = cmd.owner
        if side is _BUY:
            opp_heap = self._ask_heap
            lim_key = price
        else:
            opp_heap = self._bid_heap
            lim_key = -price
        crosses = bool(opp_heap) and opp_heap[0] <= lim_key
        if crosses:
            if cmd.post_only:
                return self._reject_new(cmd, _R.POST_ONLY_WOULD_TAKE, events)
            if tif is _FOK and not self._fok_fillable(owner, cmd.stp, cmd.quantity, side, lim_key):
                return self._reject_new(cmd, _R.FOK_UNFILLABLE, events)
        elif tif is _FOK:
            return self._reject_new(cmd, _R.FOK_UNFILLABLE, events)

        oid = cmd.order_id
        coid = cmd.client_order_id
        if coid is not None:
            used = self._client_ids.get(owner)
            if used is None:
                used = self._client_ids[owner] = set()
            used.add(coid)
        qty = cmd.quantity
        expire_at = cmd.expire_at
        stp = cmd.stp
        seq = self._seq
        # positional build (hot path); field order as declared in OrderAccepted
        events.append(
            OrderAccepted(
                seq, t, self._symbol, oid, owner, coid, side, cmd.order_type, price, qty, tif,
                expire_at, cmd.post_only, stp,
            )
        )  # fmt: skip
        self._seq = seq + 1

        rem = qty
        decremented = 0
        if crosses:
            rem, decremented = self._match(t, oid, owner, side, stp, qty, lim_key, events)
        if not rem:
            return events
        if tif is _GTC or tif is _GTD:
            self._append(
                RestingOrder(
                    oid, owner, coid, side, price, qty, rem, qty - rem - decremented,
                    decremented, tif, expire_at, stp,
                )
            )  # fmt: skip
            if expire_at is not None:
                heappush(self._gtd, (expire_at, oid))
        else:  # IOC / FOK / market: the remainder never rests
            seq = self._seq
            events.append(
                OrderCancelled(
                    seq, t, self._symbol, oid, owner, side, price, rem, 0, _C.IOC_REMAINDER
                )
            )
            self._seq = seq + 1
        return events

    def _new_reason(self, cmd: NewOrder, price: int | None, tif: TimeInForce) -> str | None:
        """Why a new order is refused before it meets the book (see the module
        notes for the order of the checks), or None."""
        state = self._state
        qty = cmd.quantity
        expire_at = cmd.expire_at
        if state is not _OPEN:
            return _R.INSTRUMENT_CLOSED if state is _CLOSED else _R.INSTRUMENT_HALTED
        if cmd.order_id in self._orders:
            return _R.DUPLICATE_ORDER_ID
        if qty <= 0:
            return _R.QTY_INVALID
        if qty % self._lot:
            return _R.QTY_OFF_LOT
        if price is None:
            return _R.PRICE_REQUIRED
        if price % self._tick:
            return _R.PRICE_OFF_TICK
        if price < self._pmin or price > self._pmax:
            return _R.PRICE_OUT_OF_BAND
        if cmd.order_type is _MARKET and (tif is _GTC or tif is _GTD):
            return _R.INVALID_TIME_IN_FORCE
        if (tif is _GTD) is (expire_at is None):
            return _R.INVALID_EXPIRE_AT
        if expire_at is not None and expire_at <= cmd.time:
            return _R.EXPIRE_AT_IN_PAST
        if cmd.post_only and (cmd.order_type is _MARKET or tif is _IOC or tif is _FOK):
            return _R.POST_ONLY_NOT_ALLOWED
        coid = cmd.client_order_id
        if coid is not None:
            used = self._client_ids.get(cmd.owner)
            if used is not None and coid in used:
                return _R.DUPLICATE_CLIENT_ORDER_ID
        return None

    def _reject_new(self, cmd: NewOrder, reason: str, events: list[Event]) -> list[Event]:
        seq = self._seq
        events.append(
            OrderRejected(
                seq,
                cmd.time,
                self._symbol,
                CommandKind.NEW,
                cmd.order_id,
                cmd.owner,
                cmd.client_order_id,
                reason,
            )
        )
        self._seq = seq + 1
        return events

    def _fok_fillable(self, owner: str, stp: StpMode, qty: int, side: Side, lim_key: int) -> bool:
        """Could `qty` fill entirely now? See the module notes for the STP rule."""
        if side is _BUY:
            levels, heap = self._asks, self._ask_heap
        else:
            levels, heap = self._bids, self._bid_heap
        return fillable(levels, heap, owner, stp is _CANCEL_OLDEST, qty, lim_key)

    def _match(
        self,
        t: int,
        oid: int,
        owner: str,
        side: Side,
        stp: StpMode,
        rem: int,
        lim_key: int,
        events: list[Event],
    ) -> tuple[int, int]:
        """Take liquidity from the opposite side up to `lim_key`.

        Returns (open remainder, quantity removed from the taker by STP
        decrements). If STP cancelled the taker's remainder, the remainder is 0
        and its `OrderCancelled` has been emitted.

        Longer than the house's 80 lines on purpose: this loop runs once per
        maker met by every taker, and splitting the STP branches into methods
        costs a call per maker; locals are bound once per taker for the same
        reason.
        """
        if side is _BUY:
            levels, heap = self._asks, self._ask_heap
        else:
            levels, heap = self._bids, self._bid_heap
        orders = self._orders
        sym = self._symbol
        seq = self._seq
        decremented = 0
        taker_price = lim_key if side is _BUY else -lim_key
        stop = False
        while heap:
            key = heap[0]
            if key > lim_key:
                break
            level = levels[key]
            while level:
                maker = level[0]
                mopen = maker.open
                if not mopen:  # a tombstone that reached the front
                    level.popleft()
                    continue
                if maker.owner != owner:
                    if mopen <= rem:
                        fq = mopen
                        rem -= mopen
                        maker.open = 0
                        maker.filled += fq
                        level.popleft()
                        del orders[maker.order_id]
                    else:
                        fq = rem
                        rem = 0
                        maker.open = mopen - fq
                        maker.filled += fq
                    events.append(
                        Fill(
                            seq, t, sym, maker.order_id, oid, maker.owner, owner, side,
                            maker.price, fq, maker.open, rem,
                        )
                    )  # fmt: skip
                    seq += 1
                    if not rem:
                        stop = True
                        break
                    continue
                # self-trade prevention (the maker is the taker's owner's)
                if stp is _CANCEL_OLDEST or stp is _CANCEL_BOTH:
                    level.popleft()
                    del orders[maker.order_id]
                    maker.cancelled += mopen
                    maker.open = 0
                    events.append(
                        OrderCancelled(
                            seq, t, sym, maker.order_id, owner, maker.side, maker.price, mopen,
                            0, _STP,
                        )
                    )  # fmt: skip
                    seq += 1
                    if stp is _CANCEL_OLDEST:
                        continue
                elif stp is _DECREMENT:
                    dq = mopen if mopen <= rem else rem
                    maker.open = mopen - dq
                    maker.cancelled += dq
                    if not maker.open:
                        level.popleft()
                        del orders[maker.order_id]
                    events.append(
                        OrderCancelled(
                            seq, t, sym, maker.order_id, owner, maker.side, maker.price, dq,
                            maker.open, _STP,
                        )
                    )  # fmt: skip
                    seq += 1
                    rem -= dq
                    decremented += dq
                    events.append(
                        OrderCancelled(seq, t, sym, oid, owner, side, taker_price, dq, rem, _STP)
                    )
                    seq += 1
                    if not rem:
                        stop = True
                        break
                    continue
                # cancel_newest (the maker stays), or cancel_both after the maker
                # went: kill the taker
                events.append(
                    OrderCancelled(seq, t, sym, oid, owner, side, taker_price, rem, 0, _STP)
                )
                seq += 1
                rem = 0
                stop = True
                break
            if stop:  # the front may now be a tombstone
                while level and not level[0].open:
                    level.popleft()
            if not level:
                heappop(heap)
                del levels[key]
            if stop:
                break
        self._seq = seq
        # a level emptied deeper in the book may now be at the top
        while heap and not levels[heap[0]]:
            del levels[heappop(heap)]
        return rem, decremented

    # ------------------------------------------------------------------ cancel, amend

    def cancel_order(self, cmd: CancelOrder) -> list[Event]:
        t = cmd.time
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= t:
            self._expire(t, events)
        if self._state is _CLOSED:
            return self._reject(
                events, t, CommandKind.CANCEL, cmd.order_id, cmd.owner, _R.INSTRUMENT_CLOSED
            )
        orders = self._orders
        oid = cmd.order_id
        order = orders.get(oid)
        owner = cmd.owner
        if order is None or order.owner != owner:
            return self._reject(events, t, CommandKind.CANCEL, oid, owner, _R.UNKNOWN_ORDER)
        # inlined _cancel_event and _unlink (hot path)
        qty = order.open
        order.cancelled += qty
        order.open = 0
        del orders[oid]
        price = order.price
        side = order.side
        if side is _BUY:
            levels, heap, key = self._bids, self._bid_heap, -price
        else:
            levels, heap, key = self._asks, self._ask_heap, price
        level = levels[key]
        bury(level, order)
        if not level and heap[0] == key:
            drop_empty_top(levels, heap)
        seq = self._seq
        events.append(
            OrderCancelled(seq, t, self._symbol, oid, owner, side, price, qty, 0, _C.USER)
        )
        self._seq = seq + 1
        return events

    def amend_order(self, cmd: AmendOrder) -> list[Event]:
        t = cmd.time
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= t:
            self._expire(t, events)
        oid = cmd.order_id
        order = self._orders.get(oid)
        if order is None or order.owner != cmd.owner or self._state is not _OPEN:
            new_price = new_open = 0
        else:
            new_price = order.price if cmd.price is None else cmd.price
            new_open = order.open if cmd.quantity is None else cmd.quantity
        reason = self._amend_reason(order, cmd.owner, new_price, new_open)
        if reason is not None:
            return self._reject(events, t, CommandKind.AMEND, oid, cmd.owner, reason)
        assert order is not None

        old_price = order.price
        old_open = order.open
        keep = new_price == old_price and new_open < old_open
        order.quantity += new_open - old_open
        if keep:
            order.open = new_open
        else:  # to the back of the queue: a copy, the old place becomes a tombstone
            moved = msgspec.structs.replace(order, price=new_price, open=new_open)
            order.open = 0
            self._unlink(order)
            self._append(moved)
        seq = self._seq
        events.append(
            OrderAmended(
                seq, t, self._symbol, oid, order.owner, order.side, old_price, new_price,
                old_open, new_open, keep,
            )
        )  # fmt: skip
        self._seq = seq + 1
        return events

    def _amend_reason(
        self, order: RestingOrder | None, owner: str, new_price: int, new_open: int
    ) -> str | None:
        """Why an amend is refused (first failure wins), or None."""
        state = self._state
        if state is not _OPEN:
            return _R.INSTRUMENT_CLOSED if state is _CLOSED else _R.INSTRUMENT_HALTED
        if order is None or order.owner != owner:
            return _R.UNKNOWN_ORDER
        if new_open <= 0:
            return _R.QTY_INVALID
        if new_open % self._lot:
            return _R.QTY_OFF_LOT
        if new_price % self._tick:
            return _R.PRICE_OFF_TICK
        if new_price < self._pmin or new_price > self._pmax:
            return _R.PRICE_OUT_OF_BAND
        if new_price == order.price and new_open == order.open:
            return _R.AMEND_NO_CHANGE
        if order.side is _BUY:
            if self._ask_heap and self._ask_heap[0] <= new_price:
                return _R.AMEND_WOULD_CROSS
        elif self._bid_heap and -self._bid_heap[0] >= new_price:
            return _R.AMEND_WOULD_CROSS
        return None

    # ------------------------------------------------------------------ bulk, state, time

    def mass_cancel(self, time: int, owner: str | None = None) -> list[Event]:
        """Cancel every open order of `owner` (None: of everyone), in order id order."""
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= time:
            self._expire(time, events)
        if self._state is _CLOSED:
            return self._reject(
                events, time, CommandKind.MASS_CANCEL, None, owner, _R.INSTRUMENT_CLOSED
            )
        self._cancel_all(events, time, owner, _C.MASS_CANCEL)
        return events

    def set_trading_state(self, state: TradingState, time: int) -> list[Event]:
        """Open or halt; closing is final and cancels every open order."""
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= time:
            self._expire(time, events)
        old = self._state
        if old is _CLOSED:
            return self._reject(
                events, time, CommandKind.SET_STATE, None, None, _R.INSTRUMENT_CLOSED
            )
        if state is old:
            return self._reject(
                events, time, CommandKind.SET_STATE, None, None, _R.INVALID_STATE_CHANGE
            )
        self._state = state
        self.instrument = msgspec.structs.replace(self.instrument, state=state)
        seq = self._seq
        events.append(TradingStateChanged(seq, time, self._symbol, old, state))
        self._seq = seq + 1
        if state is _CLOSED:
            self._cancel_all(events, time, None, _C.INSTRUMENT_CLOSED)
        return events

    def advance_time(self, time: int) -> list[Event]:
        """Expire resting GTD orders whose time has come; nothing else."""
        events: list[Event] = []
        if self._gtd and self._gtd[0][0] <= time:
            self._expire(time, events)
        return events

    def _expire(self, t: int, events: list[Event]) -> None:
        gtd = self._gtd
        orders = self._orders
        while gtd and gtd[0][0] <= t:
            expire_at, oid = heappop(gtd)
            order = orders.get(oid)
            if order is None or order.expire_at != expire_at:
                continue  # already gone (filled, cancelled): a stale entry
            qty = order.open
            order.cancelled += qty
            order.open = 0
            self._unlink(order)
            seq = self._seq
            events.append(
                OrderExpired(seq, t, self._symbol, oid, order.owner, order.side, order.price, qty)
            )
            self._seq = seq + 1

    def _cancel_all(self, events: list[Event], t: int, owner: str | None, reason: str) -> None:
        orders = self._orders
        for oid in sorted(orders) if owner is None else self._owned(owner):
            order = orders[oid]
            self._cancel_event(events, t, order, reason)
            self._unlink(order)

    # ------------------------------------------------------------------ helpers

    def _reject(
        self,
        events: list[Event],
        t: int,
        command: str,
        order_id: int | None,
        owner: str | None,
        reason: str,
    ) -> list[Event]:
        seq = self._seq
        events.append(OrderRejected(seq, t, self._symbol, command, order_id, owner, None, reason))
        self._seq = seq + 1
        return events

    def _cancel_event(self, events: list[Event], t: int, order: RestingOrder, reason: str) -> None:
        """Cancel the whole open quantity of a resting order (`_unlink` it next)."""
        qty = order.open
        order.cancelled += qty
        order.open = 0
        seq = self._seq
        events.append(
            OrderCancelled(
                seq, t, self._symbol, order.order_id, order.owner, order.side, order.price, qty,
                0, reason,
            )
        )  # fmt: skip
        self._seq = seq + 1

    def _unlink(self, order: RestingOrder) -> None:
        """Take a resting order whose open quantity was just set to 0 out of the
        order index and its level (see `market.level.bury`): O(1)."""
        if order.side is _BUY:
            levels, heap, key = self._bids, self._bid_heap, -order.price
        else:
            levels, heap, key = self._asks, self._ask_heap, order.price
        del self._orders[order.order_id]
        level = levels[key]
        bury(level, order)
        if not level and heap[0] == key:
            drop_empty_top(levels, heap)

    def _append(self, order: RestingOrder) -> None:
        """Put an order at the back of its price level and into the indexes."""
        if order.side is _BUY:
            levels, heap, key = self._bids, self._bid_heap, -order.price
        else:
            levels, heap, key = self._asks, self._ask_heap, order.price
        level = levels.get(key)
        if level is None:
            if len(heap) >= self._compact_at:
                sides = ((self._bids, self._bid_heap), (self._asks, self._ask_heap))
                self._compact_at = compact(sides, _COMPACT_MIN)
            level = levels[key] = new_level()
            heappush(heap, key)
        level.append(order)
        oid = order.order_id
        self._orders[oid] = order
        ids = self._by_owner.get(order.owner)
        if ids is None:
            ids = self._by_owner[order.owner] = []
        ids.append(oid)
        if not len(ids) & 63:
            self._prune_owner(order.owner, ids)

    def _prune_owner(self, owner: str, ids: list[int]) -> None:
        """Drop the ids of an owner's orders that are gone, once its list has
        reached twice what was live at the last pruning: amortised O(1)."""
        if len(ids) < self._owner_limit.get(owner, 64):
            return
        ids[:] = self._owned(owner)
        self._owner_limit[owner] = max(64, 2 * len(ids))

    def _owned(self, owner: str) -> list[int]:
        """Ids of `owner`'s resting orders, ascending."""
        orders = self._orders
        return sorted(
            {
                oid
                for oid in self._by_owner.get(owner, ())
                if oid in orders and orders[oid].owner == owner
            }
        )

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

    def _open_order(self, o: RestingOrder) -> OpenOrder:
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
            bids=in_priority_order(self._bids),
            asks=in_priority_order(self._asks),
            client_order_ids=sorted(
                (owner, coid) for owner, used in self._client_ids.items() for coid in used
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
    def restore(cls, data: bytes) -> OrderBook:
        try:
            snap = _snapshot_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidSnapshot(f"cannot decode book snapshot: {exc}") from exc
        return cls.from_snapshot(snap)

    @classmethod
    def from_snapshot(cls, snap: BookSnapshot) -> OrderBook:
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
                book._append(msgspec.structs.replace(order))
                if order.expire_at is not None:
                    heappush(book._gtd, (order.expire_at, order.order_id))
        bid, ask = book.best_bid(), book.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            raise InvalidSnapshot(f"crossed book in snapshot: bid {bid} >= ask {ask}")
        for owner, coid in snap.client_order_ids:
            book._client_ids.setdefault(owner, set()).add(coid)
        return book
