"""Stateful property tests: the order book against the reference matcher.

Random command streams over all order types, time-in-force values, STP modes,
amends, mass cancels, trading-state changes and time steps (GTD expiry), with
a share of invalid commands for every reject reason. After every command:
the same events as the reference, the same open orders, queue order and depth;
the book is not crossed; every order's quantity is conserved; FOK is all or
nothing; post-only never takes; nobody trades with itself. Snapshots are
restored mid-stream, and at the end the stream since the last snapshot is
replayed from it and must give the same events and state hash.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from market.book import OrderBook
from market.instruments import make_instrument
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    Command,
    Event,
    Fill,
    MassCancel,
    NewOrder,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderType,
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
)
from tests.market.reference import ReferenceBook

SYMBOL = "m/2026-12-01T00Z/1h"
LOT = 10
TICK = 2
BAND = (10, 30)
OWNERS = ["a", "b", "c"]

VALID_PRICES = list(range(BAND[0], BAND[1] + 1, TICK))
BAD_PRICES = [BAND[0] - TICK, BAND[1] + TICK, BAND[0] + 1]


def _price(n: int) -> int:
    """Mostly valid prices near the middle of the band (so orders cross often)."""
    if n >= 60:
        return BAD_PRICES[n % len(BAD_PRICES)]
    if n >= 45:
        return VALID_PRICES[n % len(VALID_PRICES)]
    return 20 + TICK * ((n % 5) - 2)


def _quantity(n: int) -> int:
    """Mostly valid lots; a few zero, negative or off-lot quantities."""
    if n == 40:
        return 0
    if n == 41:
        return -LOT
    if n == 42:
        return LOT + 1
    return LOT * (n % 6 + 1)


prices = st.integers(0, 63).map(_price)
quantities = st.integers(0, 42).map(_quantity)


class BookMachine(RuleBasedStateMachine):
    book_cls: type[OrderBook] = OrderBook  # the pure book (tests/market/test_book_native: both)

    def __init__(self) -> None:
        super().__init__()
        self.instrument = make_instrument(
            SYMBOL, lot_size=LOT, tick_size=TICK, price_min=BAND[0], price_max=BAND[1]
        )
        self.book = self.book_cls(self.instrument)
        self.ref = ReferenceBook(self.instrument)
        self.t = 1_000
        self.next_id = 1
        self.ids: list[int] = []
        # conservation ledger per order id, from the events alone
        self.total: dict[int, int] = defaultdict(int)
        self.done: dict[int, int] = defaultdict(int)  # filled + cancelled + expired
        self.post_only: set[int] = set()
        self.snapshot = self.book.snapshot()
        self.since_snapshot: list[tuple[Command, list[Event]]] = []

    @initialize()
    def start(self) -> None:
        assert self.book.state_hash() == self.book_cls.restore(self.snapshot).state_hash()

    # -------------------------------------------------------------- driving

    def apply(self, cmd: Command) -> list[Event]:
        events = self.book.process(cmd)
        expected = self.ref.process(cmd)
        assert events == expected, f"{cmd}\n got {events}\n want {expected}"
        self.since_snapshot.append((cmd, events))
        self.check_events(cmd, events)
        return events

    def tick(self, dt: int) -> int:
        self.t += dt
        return self.t

    def pick_id(self, data: st.DataObject) -> int:
        """Mostly an open order; sometimes a finished one or a made-up id."""
        live = [o.order_id for o in self.book.open_orders()]
        roll = data.draw(st.integers(0, 9), label="pick")
        if live and roll > 1:
            return data.draw(st.sampled_from(live), label="order_id")
        if self.ids and roll == 1:
            return data.draw(st.sampled_from(self.ids), label="order_id")
        return data.draw(st.integers(0, self.next_id + 1), label="order_id")

    # -------------------------------------------------------------- rules

    @rule(data=st.data(), roll=st.integers(0, 99))
    def step(self, data: st.DataObject, roll: int) -> None:
        """One command, drawn with fixed weights (a single rule, so Hypothesis's
        rule swarming cannot starve the book of new orders)."""
        if self.book.trading_state is TradingState.HALTED and roll % 3 == 0:
            self.set_state(data)  # do not stay halted for long
        elif roll < 60:
            self.new_order(data)
        elif roll < 74:
            self.cancel(data)
        elif roll < 84:
            self.amend(data)
        elif roll < 89:
            self.apply(AdvanceTime(time=self.tick(data.draw(st.integers(0, 8), label="dt"))))
        elif roll < 92:
            self.mass_cancel(data)
        elif roll < 97:
            self.set_state(data)
        else:
            self.snapshot_restore()

    def new_order(self, data: st.DataObject) -> None:
        t = self.tick(data.draw(st.integers(0, 3), label="dt"))
        kind = data.draw(st.integers(0, 99), label="kind")
        fields: dict[str, Any] = {"price": data.draw(prices, label="price")}
        if kind < 48:
            pass  # GTC limit
        elif kind < 58:
            fields["tif"] = TimeInForce.GTD
            fields["expire_at"] = t + data.draw(st.integers(-1, 30), label="ttl")
        elif kind < 66:
            fields["tif"] = TimeInForce.IOC
        elif kind < 74:
            fields["tif"] = TimeInForce.FOK
        elif kind < 86:
            fields["order_type"] = OrderType.MARKET
            if kind >= 82:
                fields["tif"] = TimeInForce.FOK
            elif kind >= 80:  # the default for a market order: IOC
                fields["tif"] = None
            else:
                fields["tif"] = TimeInForce.IOC
            if data.draw(st.booleans(), label="uncapped"):
                fields["price"] = None
        else:  # odd combinations, mostly rejected
            fields.update(
                data.draw(
                    st.sampled_from(
                        [
                            {"price": None},
                            {"order_type": OrderType.MARKET, "tif": TimeInForce.GTC},
                            {"order_type": OrderType.MARKET, "tif": TimeInForce.GTD},
                            {"tif": TimeInForce.GTD},
                            {"tif": TimeInForce.GTC, "expire_at": t + 5},
                            {"tif": TimeInForce.IOC, "post_only": True},
                        ]
                    ),
                    label="odd",
                )
            )
        live = [o.order_id for o in self.book.open_orders()]
        if live and data.draw(st.integers(0, 29), label="dup") == 13:
            # ids are unique by contract (the sequencer assigns them); the book
            # rejects an id still open, so only those are reused here
            order_id = data.draw(st.sampled_from(live), label="dup_id")
        else:
            order_id = self.next_id
            self.next_id += 1
        fields.setdefault("post_only", data.draw(st.integers(0, 9), label="post_only") == 0)
        cmd = NewOrder(
            instrument=SYMBOL,
            order_id=order_id,
            owner=data.draw(st.sampled_from(OWNERS), label="owner"),
            side=data.draw(st.sampled_from(Side), label="side"),
            quantity=data.draw(quantities, label="quantity"),
            time=t,
            stp=data.draw(st.sampled_from(StpMode), label="stp"),
            client_order_id=data.draw(
                st.sampled_from([None, None, None, None, "x", "y", "z"]), label="coid"
            ),
            **fields,
        )
        events = self.apply(cmd)
        if any(isinstance(e, OrderAccepted) for e in events):
            self.ids.append(order_id)

    def _owner_for(self, data: st.DataObject, oid: int) -> str:
        order = self.book.get_order(oid)
        if order is not None and data.draw(st.integers(0, 9), label="wrong_owner") > 0:
            return order.owner
        return data.draw(st.sampled_from(OWNERS), label="owner")

    def cancel(self, data: st.DataObject) -> None:
        oid = self.pick_id(data)
        owner = self._owner_for(data, oid)
        t = self.tick(data.draw(st.integers(0, 2), label="dt"))
        self.apply(CancelOrder(instrument=SYMBOL, order_id=oid, owner=owner, time=t))

    def amend(self, data: st.DataObject) -> None:
        oid = self.pick_id(data)
        owner = self._owner_for(data, oid)
        what = data.draw(st.integers(0, 3), label="what")
        price = data.draw(prices, label="price") if what in (0, 2) else None
        quantity = data.draw(quantities, label="quantity") if what in (1, 2) else None
        order = self.book.get_order(oid)
        if what == 3 and order is not None:  # a size decrease: keeps priority
            quantity = max(order.open_quantity - LOT, LOT)
        t = self.tick(data.draw(st.integers(0, 2), label="dt"))
        cmd = AmendOrder(
            instrument=SYMBOL, order_id=oid, owner=owner, time=t, price=price, quantity=quantity
        )
        self.apply(cmd)

    def mass_cancel(self, data: st.DataObject) -> None:
        owner = data.draw(st.sampled_from([None, *OWNERS]), label="owner")
        t = self.tick(data.draw(st.integers(0, 2), label="dt"))
        self.apply(MassCancel(owner=owner, instrument=SYMBOL, time=t))

    def set_state(self, data: st.DataObject) -> None:
        """Reopen a halted book; halt an open one; sometimes re-send the current
        state; rarely close (it is final)."""
        roll = data.draw(st.integers(0, 19), label="state")
        state = self.book.trading_state
        if roll == 11:  # not a boundary value: Hypothesis favours those
            new = TradingState.CLOSED
        elif roll in (7, 8):
            new = state
        elif state is TradingState.HALTED:
            new = TradingState.OPEN
        else:
            new = TradingState.HALTED
        t = self.tick(data.draw(st.integers(0, 2), label="dt"))
        self.apply(SetTradingState(instrument=SYMBOL, state=new, time=t))

    def snapshot_restore(self) -> None:
        """Continue on a book restored from a snapshot; it must be identical."""
        before = self.book.state_hash()
        data = self.book.snapshot()
        self.book = self.book_cls.restore(data)
        assert self.book.state_hash() == before
        assert self.book_cls.restore(data).snapshot() == data
        self.snapshot = data
        self.since_snapshot = []

    # -------------------------------------------------------------- checks

    def check_events(self, cmd: Command, events: list[Event]) -> None:
        fok_takers: dict[int, int] = {}
        filled_as_taker: dict[int, int] = defaultdict(int)
        seqs = [e.seq for e in events]
        assert seqs == list(range(self.book.next_seq - len(events), self.book.next_seq))
        for e in events:
            if isinstance(e, OrderAccepted):
                self.total[e.order_id] += e.quantity
                if e.tif is TimeInForce.FOK:
                    fok_takers[e.order_id] = e.quantity
                if e.post_only:
                    self.post_only.add(e.order_id)
            elif isinstance(e, Fill):
                assert e.maker_owner != e.taker_owner, "self-trade"
                assert e.taker_order_id not in self.post_only, "post-only took liquidity"
                assert e.quantity > 0 and e.quantity % LOT == 0
                self.done[e.maker_order_id] += e.quantity
                self.done[e.taker_order_id] += e.quantity
                filled_as_taker[e.taker_order_id] += e.quantity
            elif isinstance(e, OrderCancelled):
                assert e.cancelled_quantity > 0
                self.done[e.order_id] += e.cancelled_quantity
            elif isinstance(e, OrderExpired):
                self.done[e.order_id] += e.expired_quantity
            elif isinstance(e, OrderAmended):
                self.total[e.order_id] += e.new_open_quantity - e.old_open_quantity
        for oid, qty in fok_takers.items():
            assert filled_as_taker[oid] == qty, "FOK partially filled"
        if isinstance(cmd, NewOrder) and cmd.post_only:
            assert not filled_as_taker

    @invariant()
    def same_state_as_reference(self) -> None:
        assert self.book.open_orders() == self.ref.open_orders()
        for side in Side:
            assert [o.order_id for o in self._queue(side)] == self.ref.queue_ids(side)
        depth = self.book.depth(1_000)
        assert depth.bids == self.ref.depth(Side.BUY)
        assert depth.asks == self.ref.depth(Side.SELL)
        assert self.book.trading_state is self.ref.state
        assert self.book.next_seq == self.ref.seq

    @invariant()
    def not_crossed(self) -> None:
        bid, ask = self.book.best_bid(), self.book.best_ask()
        if bid is not None and ask is not None:
            assert bid < ask

    @invariant()
    def quantity_conserved(self) -> None:
        open_qty = {o.order_id: o.open_quantity for o in self.book.open_orders()}
        for o in self.book.open_orders():
            assert o.filled_quantity + o.open_quantity + o.cancelled_quantity == o.quantity
            assert o.open_quantity > 0
        for oid, total in self.total.items():
            assert self.done[oid] + open_qty.get(oid, 0) == total, oid

    def _queue(self, side: Side) -> list[Any]:
        snap = self.book.to_snapshot()
        return snap.bids if side is Side.BUY else snap.asks

    def teardown(self) -> None:
        """Replay everything since the last snapshot: same events, same hash."""
        replica = self.book_cls.restore(self.snapshot)
        for cmd, events in self.since_snapshot:
            assert replica.process(cmd) == events
        assert replica.state_hash() == self.book.state_hash()


BookMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBookAgainstReference = BookMachine.TestCase
