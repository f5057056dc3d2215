"""A small, obviously correct reference matcher for one instrument.

Deliberately naive: resting orders live in one list; every decision re-sorts
the candidates by (price priority, arrival). It implements the same rules as
`market.book` (documented there) and emits the same events, so the property
tests can compare the two command by command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    CommandKind,
    DepthLevel,
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
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)


@dataclass
class RefOrder:
    order_id: int
    owner: str
    client_order_id: str | None
    side: Side
    price: int
    quantity: int
    open: int
    filled: int
    cancelled: int
    tif: TimeInForce
    expire_at: int | None
    stp: StpMode
    arrival: int


class ReferenceBook:
    def __init__(self, instrument: Instrument) -> None:
        self.inst = instrument
        self.state = instrument.state
        self.seq = 1
        self.resting: list[RefOrder] = []
        self.arrivals = 0
        self.client_ids: set[tuple[str, str]] = set()
        self.events: list[Event] = []
        self.t = 0

    # -------------------------------------------------------------- helpers

    def emit(self, cls: type[Any], **fields: Any) -> None:
        self.events.append(cls(seq=self.seq, time=self.t, instrument=self.inst.symbol, **fields))
        self.seq += 1

    def reject(
        self,
        command: str,
        order_id: int | None,
        owner: str | None,
        reason: str,
        client_order_id: str | None = None,
    ) -> None:
        self.emit(
            OrderRejected,
            command=command,
            order_id=order_id,
            owner=owner,
            client_order_id=client_order_id,
            reason=reason,
        )

    def queue(self, side: Side) -> list[RefOrder]:
        """Resting orders of one side in priority order."""
        orders = [o for o in self.resting if o.side is side]
        if side is Side.BUY:
            return sorted(orders, key=lambda o: (-o.price, o.arrival))
        return sorted(orders, key=lambda o: (o.price, o.arrival))

    @staticmethod
    def crosses(taker_side: Side, limit: int, maker_price: int) -> bool:
        return maker_price <= limit if taker_side is Side.BUY else maker_price >= limit

    def find(self, order_id: int) -> RefOrder | None:
        for o in self.resting:
            if o.order_id == order_id:
                return o
        return None

    def cancel(self, o: RefOrder, reason: str) -> None:
        self.resting.remove(o)
        qty = o.open
        o.cancelled += qty
        o.open = 0
        self.emit(
            OrderCancelled,
            order_id=o.order_id,
            owner=o.owner,
            side=o.side,
            price=o.price,
            cancelled_quantity=qty,
            open_quantity=0,
            reason=reason,
        )

    # -------------------------------------------------------------- commands

    def process(self, cmd: Command) -> list[Event]:
        self.events = []
        self.t = cmd.time
        for o in sorted(
            (o for o in self.resting if o.expire_at is not None and o.expire_at <= self.t),
            key=lambda o: (o.expire_at, o.order_id),
        ):
            self.resting.remove(o)
            self.emit(
                OrderExpired,
                order_id=o.order_id,
                owner=o.owner,
                side=o.side,
                price=o.price,
                expired_quantity=o.open,
            )
        if isinstance(cmd, NewOrder):
            self.new(cmd)
        elif isinstance(cmd, CancelOrder):
            self.cancel_cmd(cmd)
        elif isinstance(cmd, AmendOrder):
            self.amend(cmd)
        elif isinstance(cmd, MassCancel):
            if self.state is TradingState.CLOSED:
                self.reject(
                    CommandKind.MASS_CANCEL, None, cmd.owner, RejectReason.INSTRUMENT_CLOSED
                )
            else:
                for o in sorted(self.resting, key=lambda o: o.order_id):
                    if cmd.owner is None or o.owner == cmd.owner:
                        self.cancel(o, CancelReason.MASS_CANCEL)
        elif isinstance(cmd, SetTradingState):
            self.set_state(cmd.state)
        else:
            assert isinstance(cmd, AdvanceTime)
        return self.events

    def new_reason(self, c: NewOrder, price: int | None) -> str | None:
        R = RejectReason
        inst = self.inst
        if self.state is TradingState.CLOSED:
            return R.INSTRUMENT_CLOSED
        if self.state is TradingState.HALTED:
            return R.INSTRUMENT_HALTED
        if self.find(c.order_id) is not None:
            return R.DUPLICATE_ORDER_ID
        if c.quantity <= 0:
            return R.QTY_INVALID
        if c.quantity % inst.lot_size != 0:
            return R.QTY_OFF_LOT
        if price is None:
            return R.PRICE_REQUIRED
        if price % inst.tick_size != 0:
            return R.PRICE_OFF_TICK
        if not inst.price_min <= price <= inst.price_max:
            return R.PRICE_OUT_OF_BAND
        if c.order_type is OrderType.MARKET and c.tif in (TimeInForce.GTC, TimeInForce.GTD):
            return R.INVALID_TIME_IN_FORCE
        if c.tif is TimeInForce.GTD and c.expire_at is None:
            return R.INVALID_EXPIRE_AT
        if c.tif is not TimeInForce.GTD and c.expire_at is not None:
            return R.INVALID_EXPIRE_AT
        if c.expire_at is not None and c.expire_at <= c.time:
            return R.EXPIRE_AT_IN_PAST
        if c.post_only and (
            c.order_type is OrderType.MARKET or c.tif in (TimeInForce.IOC, TimeInForce.FOK)
        ):
            return R.POST_ONLY_NOT_ALLOWED
        if c.client_order_id is not None and (c.owner, c.client_order_id) in self.client_ids:
            return R.DUPLICATE_CLIENT_ORDER_ID
        other = Side.SELL if c.side is Side.BUY else Side.BUY
        crossing = [o for o in self.queue(other) if self.crosses(c.side, price, o.price)]
        if crossing and c.post_only:
            return R.POST_ONLY_WOULD_TAKE
        if c.tif is TimeInForce.FOK:
            available = 0
            for o in crossing:
                if o.owner == c.owner:
                    if c.stp is StpMode.CANCEL_OLDEST:
                        continue
                    break
                available += o.open
            if available < c.quantity:
                return R.FOK_UNFILLABLE
        return None

    def new(self, c: NewOrder) -> None:
        if c.tif is None:
            default = TimeInForce.IOC if c.order_type is OrderType.MARKET else TimeInForce.GTC
            c = msgspec.structs.replace(c, tif=default)
        price = c.price
        if price is None and c.order_type is OrderType.MARKET:
            price = self.inst.price_max if c.side is Side.BUY else self.inst.price_min
        reason = self.new_reason(c, price)
        if reason is not None:
            self.reject(CommandKind.NEW, c.order_id, c.owner, reason, c.client_order_id)
            return
        assert price is not None
        if c.client_order_id is not None:
            self.client_ids.add((c.owner, c.client_order_id))
        self.emit(
            OrderAccepted,
            order_id=c.order_id,
            owner=c.owner,
            client_order_id=c.client_order_id,
            side=c.side,
            order_type=c.order_type,
            price=price,
            quantity=c.quantity,
            tif=c.tif,
            expire_at=c.expire_at,
            post_only=c.post_only,
            stp=c.stp,
        )
        other = Side.SELL if c.side is Side.BUY else Side.BUY
        rem = c.quantity
        decremented = 0

        def taker_cancel(qty: int, left: int) -> None:
            self.emit(
                OrderCancelled,
                order_id=c.order_id,
                owner=c.owner,
                side=c.side,
                price=price,
                cancelled_quantity=qty,
                open_quantity=left,
                reason=CancelReason.SELF_TRADE,
            )

        while rem > 0:
            crossing = [o for o in self.queue(other) if self.crosses(c.side, price, o.price)]
            if not crossing:
                break
            m = crossing[0]
            if m.owner != c.owner:
                q = min(rem, m.open)
                m.open -= q
                m.filled += q
                rem -= q
                if m.open == 0:
                    self.resting.remove(m)
                self.emit(
                    Fill,
                    maker_order_id=m.order_id,
                    taker_order_id=c.order_id,
                    maker_owner=m.owner,
                    taker_owner=c.owner,
                    aggressor_side=c.side,
                    price=m.price,
                    quantity=q,
                    maker_open=m.open,
                    taker_open=rem,
                )
                continue
            if c.stp in (StpMode.CANCEL_OLDEST, StpMode.CANCEL_BOTH):
                self.cancel(m, CancelReason.SELF_TRADE)
                if c.stp is StpMode.CANCEL_OLDEST:
                    continue
                taker_cancel(rem, 0)
                rem = 0
                break
            if c.stp is StpMode.DECREMENT_AND_CANCEL:
                d = min(rem, m.open)
                m.open -= d
                m.cancelled += d
                if m.open == 0:
                    self.resting.remove(m)
                self.emit(
                    OrderCancelled,
                    order_id=m.order_id,
                    owner=m.owner,
                    side=m.side,
                    price=m.price,
                    cancelled_quantity=d,
                    open_quantity=m.open,
                    reason=CancelReason.SELF_TRADE,
                )
                rem -= d
                decremented += d
                taker_cancel(d, rem)
                continue
            assert c.stp is StpMode.CANCEL_NEWEST
            taker_cancel(rem, 0)
            rem = 0
            break

        if rem == 0:
            return
        if c.tif in (TimeInForce.GTC, TimeInForce.GTD):
            self.arrivals += 1
            self.resting.append(
                RefOrder(
                    order_id=c.order_id,
                    owner=c.owner,
                    client_order_id=c.client_order_id,
                    side=c.side,
                    price=price,
                    quantity=c.quantity,
                    open=rem,
                    filled=c.quantity - rem - decremented,
                    cancelled=decremented,
                    tif=c.tif,
                    expire_at=c.expire_at,
                    stp=c.stp,
                    arrival=self.arrivals,
                )
            )
        else:
            self.emit(
                OrderCancelled,
                order_id=c.order_id,
                owner=c.owner,
                side=c.side,
                price=price,
                cancelled_quantity=rem,
                open_quantity=0,
                reason=CancelReason.IOC_REMAINDER,
            )

    def cancel_cmd(self, c: CancelOrder) -> None:
        if self.state is TradingState.CLOSED:
            self.reject(CommandKind.CANCEL, c.order_id, c.owner, RejectReason.INSTRUMENT_CLOSED)
            return
        o = self.find(c.order_id)
        if o is None or o.owner != c.owner:
            self.reject(CommandKind.CANCEL, c.order_id, c.owner, RejectReason.UNKNOWN_ORDER)
            return
        self.cancel(o, CancelReason.USER)

    def amend(self, c: AmendOrder) -> None:
        R = RejectReason
        o = self.find(c.order_id)
        reason: str | None = None
        new_price = new_open = 0
        if self.state is TradingState.CLOSED:
            reason = R.INSTRUMENT_CLOSED
        elif self.state is TradingState.HALTED:
            reason = R.INSTRUMENT_HALTED
        elif o is None or o.owner != c.owner:
            reason = R.UNKNOWN_ORDER
        else:
            new_price = o.price if c.price is None else c.price
            new_open = o.open if c.quantity is None else c.quantity
            if new_open <= 0:
                reason = R.QTY_INVALID
            elif new_open % self.inst.lot_size != 0:
                reason = R.QTY_OFF_LOT
            elif new_price % self.inst.tick_size != 0:
                reason = R.PRICE_OFF_TICK
            elif not self.inst.price_min <= new_price <= self.inst.price_max:
                reason = R.PRICE_OUT_OF_BAND
            elif new_price == o.price and new_open == o.open:
                reason = R.AMEND_NO_CHANGE
            else:
                other = Side.SELL if o.side is Side.BUY else Side.BUY
                if any(self.crosses(o.side, new_price, m.price) for m in self.queue(other)):
                    reason = R.AMEND_WOULD_CROSS
        if reason is not None:
            self.reject(CommandKind.AMEND, c.order_id, c.owner, reason)
            return
        assert o is not None
        old_price, old_open = o.price, o.open
        keep = new_price == old_price and new_open < old_open
        o.quantity += new_open - old_open
        o.open = new_open
        o.price = new_price
        if not keep:
            self.arrivals += 1
            o.arrival = self.arrivals
        self.emit(
            OrderAmended,
            order_id=o.order_id,
            owner=o.owner,
            side=o.side,
            old_price=old_price,
            new_price=new_price,
            old_open_quantity=old_open,
            new_open_quantity=new_open,
            priority_kept=keep,
        )

    def set_state(self, state: TradingState) -> None:
        old = self.state
        if old is TradingState.CLOSED:
            self.reject(CommandKind.SET_STATE, None, None, RejectReason.INSTRUMENT_CLOSED)
            return
        if state is old:
            self.reject(CommandKind.SET_STATE, None, None, RejectReason.INVALID_STATE_CHANGE)
            return
        self.state = state
        self.emit(TradingStateChanged, old_state=old, new_state=state)
        if state is TradingState.CLOSED:
            for o in sorted(self.resting, key=lambda o: o.order_id):
                self.cancel(o, CancelReason.INSTRUMENT_CLOSED)

    # -------------------------------------------------------------- queries

    def open_orders(self) -> list[OpenOrder]:
        return [
            OpenOrder(
                instrument=self.inst.symbol,
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
            for o in sorted(self.resting, key=lambda o: o.order_id)
        ]

    def depth(self, side: Side) -> list[DepthLevel]:
        levels: dict[int, list[RefOrder]] = {}
        for o in self.queue(side):
            levels.setdefault(o.price, []).append(o)
        return [
            DepthLevel(price, sum(o.open for o in orders), len(orders))
            for price, orders in levels.items()
        ]

    def queue_ids(self, side: Side) -> list[int]:
        return [o.order_id for o in self.queue(side)]
