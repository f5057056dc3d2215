"""The order book of one instrument: pure price-time matching.

No I/O, no clock, no randomness: the output (events) and the state depend only
on the starting state and the commands, so a replay gives the same events and
the same `state_hash()`.

Layout, chosen so that no command's cost grows with the depth of the book
(the storage is `market.book_state.BookState`, the queue of one price
`market.level`):

- each side is a dict `key -> Level` and a binary heap of keys; the key is the
  price for asks and minus the price for bids, so on both sides the best level
  is the smallest key (`heap[0]`) and "crosses a limit" is `key <= limit_key`
  with `limit_key = +/- limit`. A `Level` is a FIFO deque by arrival; an order
  taken out behind its front is left as a tombstone (open quantity 0), so
  cancel, amend and expiry cost the same at the front of a queue of thousands
  as at its back (see `market.level`: tombstones are popped at the front,
  skipped by every walk, compacted per level);
- a key is in the dict exactly when it is in the heap (once). A level emptied
  by a fill leaves both at once (it is at the top); one emptied deeper in the
  book (cancel, amend, expiry) stays as an empty level until it reaches the top
  or gets a new order, so nothing is ever removed from the middle of a heap.
  The top of each heap is always a non-empty level (restored after every
  change), so the best price is `heap[0]`. Empty levels are dropped by
  snapshot/restore and by `compact` when a heap reaches twice the live levels
  (at least 1,024 keys);
- `orders` maps order id -> the resting order (mutable `market.book_order.Resting`);
  `owners` maps owner -> (client order ids used, ids of orders it rested,
  pruned lazily), so mass cancel and an owner's open orders visit only that
  owner's orders; `gtd` is a heap of (expire_at, order id) with stale entries
  skipped, so expiry visits only what expires.

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

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Final, cast

import msgspec

from market.book_order import COMPILED, Resting
from market.book_state import NO_EXPIRY, BookState
from market.level import (
    COMPACT_MIN,
    LEVEL_COMPACT_MIN,
    SHORT,
    drop_empty_top,
    sweep_level,
)
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    CommandKind,
    Event,
    Fill,
    Instrument,
    MassCancel,
    NewOrder,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    RejectReason,
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)

__all__ = ["OrderBook", "default_tif"]

# Module-level aliases: a global lookup is cheaper than an Enum attribute lookup.
_BUY: Final = Side.BUY
_LIMIT: Final = OrderType.LIMIT
_MARKET: Final = OrderType.MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
_GTD: Final = TimeInForce.GTD
_OPEN: Final = TradingState.OPEN
_CLOSED: Final = TradingState.CLOSED
_CANCEL_OLDEST: Final = StpMode.CANCEL_OLDEST
_CANCEL_BOTH: Final = StpMode.CANCEL_BOTH
_DECREMENT: Final = StpMode.DECREMENT_AND_CANCEL

_R = RejectReason
_C = CancelReason
_STP: Final = CancelReason.SELF_TRADE
_USER: Final = CancelReason.USER
_IOC_REMAINDER: Final = CancelReason.IOC_REMAINDER

_COMPACT_MIN: Final = COMPACT_MIN  # smallest heap size that triggers compaction

# Constructors and functions on the hot paths, as Final names: the compiled build reads a
# Final from a C static, any other global from the module's dict (the interpreter: alike)
_Accepted: Final = OrderAccepted
_Cancelled: Final = OrderCancelled
_Fill: Final = Fill
_Expired: Final = OrderExpired
_Amended: Final = OrderAmended
_heappush: Final = heappush
_heappop: Final = heappop

# The compiled build (`market.book_order.COMPILED`) reads a command's fields with one C
# call: there each attribute read of a msgspec Struct is a generic look-up (~100
# instructions), where the interpreter's is specialised to a slot read; typed as the
# fields are, in declaration order, so that compiled code unboxes them once.
_new_fields: Final = cast(
    Callable[
        [NewOrder],
        tuple[
            str, int, str, Side, int, int, int | None, OrderType, TimeInForce | None,
            int | None, bool, StpMode, str | None,
        ],
    ],
    msgspec.structs.astuple,
)  # fmt: skip
_cancel_fields: Final = cast(
    Callable[[CancelOrder], tuple[str, int, str, int]], msgspec.structs.astuple
)


def default_tif(order_type: OrderType) -> TimeInForce:
    """The time in force of an order that names none: IOC for a market order,
    GTC for a limit order. The one place this default lives."""
    return _IOC if order_type is _MARKET else _GTC


class OrderBook(BookState):
    """One instrument's book. Feed it commands with `process` (or the per-command
    methods); each returns the ordered events it caused. What it holds and
    answers (queries, snapshot) is `market.book_state.BookState`."""

    __slots__ = ()

    def __init__(self, instrument: Instrument) -> None:
        super().__init__(instrument, _COMPACT_MIN)

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
        """Written for the interpreter (see the README's engine section): the checks in
        one `if`, no call on the common path but the two constructors."""
        t: int
        price: int | None
        tif: TimeInForce | None
        if COMPILED:  # one C call for every field (see `_new_fields`)
            _, oid, owner, side, qty, t, price, order_type, tif, expire_at, post_only, stp, coid = (
                _new_fields(cmd)
            )
        else:
            t = cmd.time
            price = cmd.price
            tif = cmd.tif
            order_type = cmd.order_type
            oid = cmd.order_id
            qty = cmd.quantity
            expire_at = cmd.expire_at
            post_only = cmd.post_only
            owner = cmd.owner
            coid = cmd.client_order_id
            side = cmd.side
            stp = cmd.stp
        expired: list[Event] | None = None  # the events list is built with the first event
        if self._next_expiry <= t:
            expired = []
            self._expire(t, expired)
        if tif is None:
            tif = _IOC if order_type is _MARKET else _GTC  # `default_tif`, inlined
        if price is None and order_type is _MARKET:
            price = self._pmax if side is _BUY else self._pmin  # protection: the band edge
        try:  # free unless it raises (a new owner), where `dict.get` is a call
            rec: tuple[set[str], list[Resting]] | None = self._owners[owner]
        except KeyError:
            rec = None
        # all of `_new_reason`'s checks in one condition: a valid order pays no call
        if not (
            price is not None and self._state is _OPEN and oid not in self._orders and qty > 0
            and qty % self._lot == 0 and price % self._tick == 0
            and price >= self._pmin and price <= self._pmax
            and (order_type is _LIMIT or tif is _IOC or tif is _FOK)
            and (tif is not _GTD if expire_at is None else tif is _GTD and expire_at > t)
            and (not post_only or (order_type is _LIMIT and (tif is _GTC or tif is _GTD)))
            and (coid is None or rec is None or coid not in rec[0])
        ):  # fmt: skip
            return self._reject_new(cmd, self._new_reason(cmd, price, tif), expired)
        if side is _BUY:
            opp_heap = self._ask_heap
            lim_key = price
        else:
            opp_heap = self._bid_heap
            lim_key = -price
        crosses = False
        if opp_heap and opp_heap[0] <= lim_key:
            crosses = True
        if (post_only or tif is _FOK) and (reason := self._taker_reason(cmd, crosses, lim_key)):
            return self._reject_new(cmd, reason, expired)
        if rec is None:
            rec = self._owners[owner] = (set(), [])
        if coid is not None:
            rec[0].add(coid)
        seq = self._seq
        # positional builds (hot path); field order as declared in the structs
        accepted = _Accepted(
            seq, t, self._symbol, oid, owner, coid, side, order_type, price, qty, tif, expire_at,
            post_only, stp,
        )  # fmt: skip
        self._seq = seq + 1
        # `[event]` allocates once, `[]` and an append twice
        events: list[Event] = [accepted] if expired is None else [*expired, accepted]
        if crosses:
            # rem: the open remainder; decremented: taken off the taker by STP
            rem, decremented = self._match(t, oid, owner, side, stp, qty, lim_key, events)
            if rem == 0:
                return events
            if tif is not _GTC and tif is not _GTD:  # IOC / FOK / market: never rests
                self._cancel_remainder(events, t, oid, owner, side, price, rem)
                return events
            order = Resting(
                oid, owner, coid, side, price, qty, rem, qty - rem - decremented, decremented,
                tif, expire_at, stp,
            )  # fmt: skip
        elif tif is _GTC or tif is _GTD:
            order = Resting(oid, owner, coid, side, price, qty, qty, 0, 0, tif, expire_at, stp)
        else:  # IOC / market that did not cross: cancelled whole
            self._cancel_remainder(events, t, oid, owner, side, price, qty)
            return events
        if side is _BUY:  # inlined _append
            level = self._bids.get(-price)
            if level is None:
                level = self._new_level(side, -price)
        else:
            level = self._asks.get(price)
            if level is None:
                level = self._new_level(side, price)
        level.append(order)
        self._orders[oid] = order
        rested = rec[1]
        rested.append(order)
        if not len(rested) & 63:
            self._prune_owner(owner, rested)
        if expire_at is not None:
            _heappush(self._gtd, (expire_at, oid))
            if expire_at < self._next_expiry:
                self._next_expiry = expire_at
        return events

    def _cancel_remainder(
        self, events: list[Event], t: int, oid: int, owner: str, side: Side, price: int, rem: int
    ) -> None:
        seq = self._seq
        events.append(
            _Cancelled(seq, t, self._symbol, oid, owner, side, price, rem, 0, _IOC_REMAINDER)
        )
        self._seq = seq + 1

    def _reject_new(self, cmd: NewOrder, reason: str, events: list[Event] | None) -> list[Event]:
        if events is None:
            events = []
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
        dead = self._dead
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
                    dead[key] -= 1
                    continue
                if maker.owner != owner:
                    moid = maker.order_id
                    if mopen <= rem:  # the maker leaves the book (not updated further)
                        fq = mopen
                        rem -= mopen
                        left = maker.open = 0
                        level.popleft()
                        del orders[moid]
                    else:
                        fq = rem
                        rem = 0
                        left = maker.open = mopen - fq
                        maker.filled += fq
                    events.append(
                        _Fill(
                            seq, t, sym, moid, oid, maker.owner, owner, side, maker.price, fq,
                            left, rem,
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
                        _Cancelled(
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
                        _Cancelled(
                            seq, t, sym, maker.order_id, owner, maker.side, maker.price, dq,
                            maker.open, _STP,
                        )
                    )  # fmt: skip
                    seq += 1
                    rem -= dq
                    decremented += dq
                    events.append(
                        _Cancelled(seq, t, sym, oid, owner, side, taker_price, dq, rem, _STP)
                    )
                    seq += 1
                    if not rem:
                        stop = True
                        break
                    continue
                # cancel_newest (the maker stays), or cancel_both after the maker
                # went: kill the taker
                events.append(_Cancelled(seq, t, sym, oid, owner, side, taker_price, rem, 0, _STP))
                seq += 1
                rem = 0
                stop = True
                break
            if stop:  # the front may now be a tombstone
                while level and not level[0].open:
                    level.popleft()
                    dead[key] -= 1
            if not level:
                _heappop(heap)
                del levels[key]
                del dead[key]
            if stop:
                break
        self._seq = seq
        # a level emptied deeper in the book may now be at the top
        if heap and not levels[heap[0]]:
            drop_empty_top(levels, heap, self._dead)
        return rem, decremented

    # ------------------------------------------------------------------ cancel, amend

    def cancel_order(self, cmd: CancelOrder) -> list[Event]:
        t: int
        if COMPILED:
            _, oid, cmd_owner, t = _cancel_fields(cmd)
        else:
            t = cmd.time
            oid = cmd.order_id
            cmd_owner = cmd.owner
        expired: list[Event] | None = None  # the events list is built with the first event
        if self._next_expiry <= t:
            expired = []
            self._expire(t, expired)
        orders = self._orders
        try:  # free unless it raises, where `dict.get` is a call
            order = orders[oid]
        except KeyError:
            order = None
        if order is None or order.owner != cmd_owner or self._state is _CLOSED:
            reason = _R.INSTRUMENT_CLOSED if self._state is _CLOSED else _R.UNKNOWN_ORDER
            events = [] if expired is None else expired
            return self._reject(events, t, CommandKind.CANCEL, oid, cmd_owner, reason)
        # inlined _cancel_event and _unlink (hot path); an order that leaves the book
        # is not updated further (nothing reads a gone order but its open 0)
        qty = order.open
        order.open = 0
        del orders[oid]
        price = order.price
        side = order.side
        if side is _BUY:
            levels = self._bids
            key = -price
        else:
            levels = self._asks
            key = price
        level = levels[key]
        if level[0] is order:
            level.popleft()
            while level and level[0].open == 0:
                level.popleft()
                self._dead[key] -= 1
            if not level:
                heap = self._bid_heap if side is _BUY else self._ask_heap
                if heap[0] == key:
                    drop_empty_top(levels, heap, self._dead)
        elif len(level) <= SHORT:
            level.remove(order)
        else:  # a tombstone (see `market.level`; every level has its count)
            dead = self._dead
            n = dead[key] + 1
            if n > LEVEL_COMPACT_MIN and 2 * n > len(level):
                n -= sweep_level(level, key, self._sweep)
            dead[key] = n
        seq = self._seq
        cancelled = _Cancelled(seq, t, self._symbol, oid, order.owner, side, price, qty, 0, _USER)
        self._seq = seq + 1
        if expired is None:
            return [cancelled]
        expired.append(cancelled)
        return expired

    def amend_order(self, cmd: AmendOrder) -> list[Event]:
        t = cmd.time
        events: list[Event] = []
        if self._next_expiry <= t:
            self._expire(t, events)
        oid = cmd.order_id
        state = self._state
        reason: str | None = None
        order = self._orders.get(oid)
        new_price = new_open = 0
        if state is not _OPEN:
            reason = _R.INSTRUMENT_CLOSED if state is _CLOSED else _R.INSTRUMENT_HALTED
        elif order is None or order.owner != cmd.owner:
            reason = _R.UNKNOWN_ORDER
        else:
            new_price = order.price if cmd.price is None else cmd.price
            new_open = order.open if cmd.quantity is None else cmd.quantity
            if new_open <= 0:
                reason = _R.QTY_INVALID
            elif new_open % self._lot:
                reason = _R.QTY_OFF_LOT
            elif new_price % self._tick:
                reason = _R.PRICE_OFF_TICK
            elif new_price < self._pmin or new_price > self._pmax:
                reason = _R.PRICE_OUT_OF_BAND
            elif new_price == order.price and new_open == order.open:
                reason = _R.AMEND_NO_CHANGE
            elif order.side is _BUY:
                if self._ask_heap and self._ask_heap[0] <= new_price:
                    reason = _R.AMEND_WOULD_CROSS
            elif self._bid_heap and -self._bid_heap[0] >= new_price:
                reason = _R.AMEND_WOULD_CROSS
        if reason is not None:
            return self._reject(events, t, CommandKind.AMEND, oid, cmd.owner, reason)
        assert order is not None

        old_price = order.price
        old_open = order.open
        keep = new_price == old_price and new_open < old_open
        quantity = order.quantity + new_open - old_open
        # (a store into a msgspec Struct is not specialised by the interpreter: each
        # costs ~100 ns, so none is made that nothing reads)
        if keep:
            order.quantity = quantity
            order.open = new_open
        else:  # to the back of the queue (a copy if the old place stays a tombstone)
            if self._unlink(order):
                order.quantity = quantity
                order.open = new_open
                order.price = new_price
                self._append(order, True)
            else:  # a new object: into its owner's list as well
                self._append(
                    Resting(
                        oid, order.owner, order.client_order_id, order.side, new_price,
                        quantity, new_open, order.filled, order.cancelled, order.tif,
                        order.expire_at, order.stp,
                    )
                )  # fmt: skip
        seq = self._seq
        events.append(
            _Amended(
                seq, t, self._symbol, oid, order.owner, order.side, old_price, new_price,
                old_open, new_open, keep,
            )
        )  # fmt: skip
        self._seq = seq + 1
        return events

    # ------------------------------------------------------------------ bulk, state, time

    def mass_cancel(self, time: int, owner: str | None = None) -> list[Event]:
        """Cancel every open order of `owner` (None: of everyone), in order id order."""
        events: list[Event] = []
        if self._next_expiry <= time:
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
        if self._next_expiry <= time:
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
        if self._next_expiry <= time:
            self._expire(time, events)
        return events

    def _expire(self, t: int, events: list[Event]) -> None:
        gtd = self._gtd
        orders = self._orders
        while gtd and gtd[0][0] <= t:
            expire_at, oid = _heappop(gtd)
            order = orders.get(oid)
            if order is None or order.expire_at != expire_at:
                continue  # already gone (filled, cancelled): a stale entry
            qty = order.open
            order.open = 0  # gone: not updated further (see `cancel_order`)
            self._unlink(order)
            seq = self._seq
            events.append(
                _Expired(seq, t, self._symbol, oid, order.owner, order.side, order.price, qty)
            )
            self._seq = seq + 1
        self._next_expiry = gtd[0][0] if gtd else NO_EXPIRY

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

    def _cancel_event(self, events: list[Event], t: int, order: Resting, reason: str) -> None:
        """Cancel the whole open quantity of a resting order (`_unlink` it next; gone,
        it is not updated further but for its open 0, see `cancel_order`)."""
        qty = order.open
        order.open = 0
        seq = self._seq
        events.append(
            _Cancelled(
                seq, t, self._symbol, order.order_id, order.owner, order.side, order.price, qty,
                0, reason,
            )
        )  # fmt: skip
        self._seq = seq + 1
