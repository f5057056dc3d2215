"""Hand-written scenarios: one per order type, instruction and reject reason."""

from __future__ import annotations

import pytest

from market.book import OrderBook
from market.errors import InvalidInstrument
from schemas.market import (
    AdvanceTime,
    CancelReason,
    CommandKind,
    Depth,
    DepthLevel,
    Fill,
    Instrument,
    MassCancel,
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
from tests.market.helpers import LOT, PMAX, PMIN, SYMBOL, Driver, fills, kinds, reject_reason

R = RejectReason
BUY, SELL = Side.BUY, Side.SELL


@pytest.fixture
def d() -> Driver:
    return Driver()


# ---------------------------------------------------------------- limit orders, priority


def test_limit_order_rests_and_is_accepted_with_everything_settlement_needs(d: Driver) -> None:
    events = d.buy(3, 500, client_order_id="c-1")
    assert events == [
        OrderAccepted(
            seq=1,
            time=1_000,
            instrument=SYMBOL,
            order_id=1,
            owner="alice",
            client_order_id="c-1",
            side=BUY,
            order_type=OrderType.LIMIT,
            price=500,
            quantity=3 * LOT,
            tif=TimeInForce.GTC,
            expire_at=None,
            post_only=False,
            stp=StpMode.CANCEL_NEWEST,
        )
    ]
    assert d.book.best_bid() == 500 and d.book.best_ask() is None
    top = d.book.depth(1)
    assert (top.bids, top.asks) == ([DepthLevel(price=500, quantity=3 * LOT, orders=1)], [])
    [o] = d.book.open_orders("alice")
    assert (o.order_id, o.open_quantity, o.filled_quantity, o.client_order_id) == (
        1,
        3 * LOT,
        0,
        "c-1",
    )


def test_price_time_priority_best_price_then_earliest(d: Driver) -> None:
    d.sell(1, 510, owner="m1")  # 1
    d.sell(1, 505, owner="m2")  # 2: better price
    d.sell(1, 505, owner="m3")  # 3: same price, later
    d.sell(1, 500, owner="m4")  # 4: best
    events = d.buy(4, 510, owner="taker")
    assert fills(events) == [
        (4, 5, 500, LOT),
        (2, 5, 505, LOT),
        (3, 5, 505, LOT),
        (1, 5, 510, LOT),
    ]
    assert d.book.best_ask() is None and d.book.best_bid() is None


def test_fill_is_at_maker_price_and_carries_both_sides(d: Driver) -> None:
    d.sell(2, 500, owner="provider")
    events = d.buy(1, 600, owner="buyer")
    assert kinds(events) == ["OrderAccepted", "Fill"]
    fill = events[1]
    assert fill == Fill(
        seq=3,
        time=1_000,
        instrument=SYMBOL,
        maker_order_id=1,
        taker_order_id=2,
        maker_owner="provider",
        taker_owner="buyer",
        aggressor_side=BUY,
        price=500,
        quantity=LOT,
        maker_open=LOT,
        taker_open=0,
    )


def test_partially_filled_maker_keeps_its_place(d: Driver) -> None:
    d.sell(3, 500, owner="m1")  # 1
    d.sell(1, 500, owner="m2")  # 2
    d.buy(1, 500, owner="t")
    assert d.queue(SELL) == [1, 2]
    events = d.buy(3, 500, owner="t")
    assert fills(events) == [(1, 4, 500, 2 * LOT), (2, 4, 500, LOT)]


def test_taker_remainder_rests_after_sweeping(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    events = d.buy(3, 505, owner="t")
    assert fills(events) == [(1, 2, 500, LOT)]
    assert d.book.best_bid() == 505
    [o] = d.book.open_orders("t")
    assert (o.quantity, o.filled_quantity, o.open_quantity) == (3 * LOT, LOT, 2 * LOT)


def test_depth_aggregates_levels_best_first(d: Driver) -> None:
    d.buy(1, 500, owner="a")
    d.buy(2, 500, owner="b")
    d.buy(1, 495, owner="a")
    d.buy(1, 490, owner="a")
    d.sell(4, 520, owner="c")
    assert d.book.depth(2) == Depth(
        instrument=SYMBOL,
        seq=5,
        bids=[DepthLevel(500, 3 * LOT, 2), DepthLevel(495, LOT, 1)],
        asks=[DepthLevel(520, 4 * LOT, 1)],
    )


def test_sequence_numbers_are_gap_free_across_commands(d: Driver) -> None:
    events = d.sell(1, 500, owner="m")  # accepted
    events += d.buy(2, 500, owner="t", tif=TimeInForce.IOC)  # accepted, fill, ioc cancel
    events += d.cancel(99)  # reject
    events += d.buy(1, 400, tif=TimeInForce.GTD, expire_at=1_001)  # accepted
    events += d.cancel(99, time=1_001)  # expiry, reject
    assert [e.seq for e in events] == list(range(1, 9))
    assert d.book.next_seq == 9


def test_process_refuses_what_is_not_a_command(d: Driver) -> None:
    with pytest.raises(TypeError):
        d.book.process(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------- market orders


def test_market_order_without_cap_is_protected_by_the_band_and_never_rests(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    d.sell(1, 900, owner="m")
    events = d.buy(3, order_type=OrderType.MARKET, owner="t")
    accepted = events[0]
    assert isinstance(accepted, OrderAccepted) and accepted.price == PMAX
    assert fills(events) == [(1, 3, 500, LOT), (2, 3, 900, LOT)]
    last = events[-1]
    assert isinstance(last, OrderCancelled)
    assert (last.order_id, last.cancelled_quantity, last.reason) == (
        3,
        LOT,
        CancelReason.IOC_REMAINDER,
    )
    assert d.book.best_bid() is None


def test_market_sell_without_cap_uses_the_band_floor(d: Driver) -> None:
    events = d.sell(1, order_type=OrderType.MARKET)
    assert isinstance(events[0], OrderAccepted) and events[0].price == PMIN
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]


def test_market_order_never_fills_beyond_its_cap(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    d.sell(1, 600, owner="m")
    events = d.buy(2, 550, order_type=OrderType.MARKET, owner="t")
    assert fills(events) == [(1, 3, 500, LOT)]
    assert isinstance(events[-1], OrderCancelled) and events[-1].cancelled_quantity == LOT
    assert d.book.best_ask() == 600 and d.book.best_bid() is None


def test_market_fok_fills_all_or_is_rejected(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    events = d.buy(2, order_type=OrderType.MARKET, tif=TimeInForce.FOK, owner="t")
    assert reject_reason(events) == R.FOK_UNFILLABLE
    events = d.buy(1, order_type=OrderType.MARKET, tif=TimeInForce.FOK, owner="t")
    assert fills(events) == [(1, 3, 500, LOT)]


@pytest.mark.parametrize("tif", [TimeInForce.GTC, TimeInForce.GTD])
def test_market_order_must_be_ioc_or_fok(d: Driver, tif: TimeInForce) -> None:
    expire = 5_000 if tif is TimeInForce.GTD else None
    events = d.buy(1, order_type=OrderType.MARKET, tif=tif, expire_at=expire)
    assert reject_reason(events) == R.INVALID_TIME_IN_FORCE


# ---------------------------------------------------------------- IOC, FOK


def test_ioc_fills_what_it_can_and_cancels_the_rest(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    events = d.buy(3, 500, tif=TimeInForce.IOC, owner="t")
    assert kinds(events) == ["OrderAccepted", "Fill", "OrderCancelled"]
    assert events[2].cancelled_quantity == 2 * LOT  # type: ignore[union-attr]
    assert d.book.best_bid() is None


def test_ioc_against_empty_book_is_accepted_then_cancelled(d: Driver) -> None:
    events = d.buy(1, 500, tif=TimeInForce.IOC)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled"]


def test_fok_unfillable_is_rejected_before_any_fill(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    d.sell(1, 510, owner="m")
    events = d.buy(3, 510, tif=TimeInForce.FOK, owner="t")
    assert reject_reason(events) == R.FOK_UNFILLABLE
    assert len(d.book) == 2  # untouched
    events = d.buy(2, 505, tif=TimeInForce.FOK, owner="t")  # limit excludes 510
    assert reject_reason(events) == R.FOK_UNFILLABLE
    events = d.buy(1, 500, tif=TimeInForce.FOK, owner="t", time=1_001)
    assert reject_reason(d.buy(1, 400, tif=TimeInForce.FOK)) == R.FOK_UNFILLABLE
    assert fills(events) == [(1, 5, 500, LOT)]


def test_fok_fills_completely_across_levels(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    d.sell(2, 510, owner="m")
    events = d.buy(3, 510, tif=TimeInForce.FOK, owner="t")
    assert fills(events) == [(1, 3, 500, LOT), (2, 3, 510, 2 * LOT)]
    assert kinds(events)[-1] == "Fill"


def test_fok_counts_liquidity_only_up_to_the_takers_own_order(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    d.sell(1, 505, owner="t")  # the taker's own order sits in between
    d.sell(1, 510, owner="m")
    events = d.buy(2, 510, tif=TimeInForce.FOK, owner="t")
    assert reject_reason(events) == R.FOK_UNFILLABLE
    # with cancel_oldest, own orders would be cancelled, not traded: they are skipped
    events = d.buy(2, 510, tif=TimeInForce.FOK, owner="t", stp=StpMode.CANCEL_OLDEST)
    assert kinds(events) == ["OrderAccepted", "Fill", "OrderCancelled", "Fill"]
    assert fills(events) == [(1, 5, 500, LOT), (3, 5, 510, LOT)]


# ---------------------------------------------------------------- GTD


def test_gtd_expires_when_a_later_command_time_passes_it(d: Driver) -> None:
    d.buy(1, 500, tif=TimeInForce.GTD, expire_at=2_000)  # 1
    d.buy(1, 495, tif=TimeInForce.GTD, expire_at=1_500)  # 2
    assert d.cancel(42, time=1_499) == [
        OrderRejected(
            seq=3,
            time=1_499,
            instrument=SYMBOL,
            command=CommandKind.CANCEL,
            order_id=42,
            owner="alice",
            client_order_id=None,
            reason=R.UNKNOWN_ORDER,
        )
    ]
    events = d.sell(1, 500, owner="s", time=2_000)
    # both expire first (earliest expiry first), then the sell finds no bid
    assert kinds(events) == ["OrderExpired", "OrderExpired", "OrderAccepted"]
    assert [e.order_id for e in events[:2]] == [2, 1]  # type: ignore[union-attr]
    assert events[0] == OrderExpired(
        seq=4,
        time=2_000,
        instrument=SYMBOL,
        order_id=2,
        owner="alice",
        side=BUY,
        price=495,
        expired_quantity=LOT,
    )
    assert d.book.best_ask() == 500


def test_advance_time_expires_without_other_commands(d: Driver) -> None:
    d.sell(2, 500, tif=TimeInForce.GTD, expire_at=1_100)
    d.buy(1, 500, owner="t")  # partially fills the GTD order
    events = d.book.process(AdvanceTime(time=1_100))
    assert kinds(events) == ["OrderExpired"]
    assert events[0].expired_quantity == LOT  # type: ignore[union-attr]
    assert d.book.process(AdvanceTime(time=5_000)) == []


def test_gtd_rules(d: Driver) -> None:
    assert reject_reason(d.buy(1, 500, tif=TimeInForce.GTD)) == R.INVALID_EXPIRE_AT
    assert reject_reason(d.buy(1, 500, expire_at=5_000)) == R.INVALID_EXPIRE_AT
    assert reject_reason(d.buy(1, 500, tif=TimeInForce.GTD, expire_at=1_000)) == (
        R.EXPIRE_AT_IN_PAST
    )
    assert kinds(d.buy(1, 500, tif=TimeInForce.GTD, expire_at=1_001)) == ["OrderAccepted"]


def test_cancelled_gtd_does_not_expire_later(d: Driver) -> None:
    d.buy(1, 500, tif=TimeInForce.GTD, expire_at=1_100)
    d.cancel(1)
    assert d.book.process(AdvanceTime(time=2_000)) == []


# ---------------------------------------------------------------- post-only


def test_post_only_rests_when_it_would_not_take(d: Driver) -> None:
    d.sell(1, 510, owner="m")
    assert kinds(d.buy(1, 505, post_only=True)) == ["OrderAccepted"]


def test_post_only_is_rejected_when_it_would_take(d: Driver) -> None:
    d.sell(1, 510, owner="m")
    assert reject_reason(d.buy(1, 510, post_only=True, owner="t")) == R.POST_ONLY_WOULD_TAKE
    # even against the owner's own order: post-only never takes
    assert reject_reason(d.buy(1, 510, post_only=True, owner="m")) == R.POST_ONLY_WOULD_TAKE
    assert len(d.book) == 1


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
def test_post_only_needs_a_resting_time_in_force(d: Driver, tif: TimeInForce) -> None:
    assert reject_reason(d.buy(1, 500, post_only=True, tif=tif)) == R.POST_ONLY_NOT_ALLOWED


def test_post_only_market_is_not_allowed(d: Driver) -> None:
    events = d.buy(1, order_type=OrderType.MARKET, post_only=True)
    assert reject_reason(events) == R.POST_ONLY_NOT_ALLOWED


# ---------------------------------------------------------------- self-trade prevention


def _stp_book() -> Driver:
    d = Driver()
    d.sell(1, 500, owner="m")  # 1
    d.sell(2, 500, owner="me")  # 2: own order
    d.sell(1, 505, owner="m")  # 3
    return d


def test_stp_cancel_newest_cancels_the_taker_remainder() -> None:
    d = _stp_book()
    events = d.buy(3, 505, owner="me", stp=StpMode.CANCEL_NEWEST)
    assert kinds(events) == ["OrderAccepted", "Fill", "OrderCancelled"]
    assert fills(events) == [(1, 4, 500, LOT)]
    cancel = events[2]
    assert isinstance(cancel, OrderCancelled)
    assert (cancel.order_id, cancel.cancelled_quantity, cancel.reason) == (
        4,
        2 * LOT,
        CancelReason.SELF_TRADE,
    )
    assert d.queue(SELL) == [2, 3] and d.book.best_bid() is None  # GTC did not rest


def test_stp_cancel_oldest_cancels_the_resting_order_and_continues() -> None:
    d = _stp_book()
    events = d.buy(3, 505, owner="me", stp=StpMode.CANCEL_OLDEST)
    assert kinds(events) == ["OrderAccepted", "Fill", "OrderCancelled", "Fill"]
    assert events[2].order_id == 2  # type: ignore[union-attr]
    assert fills(events) == [(1, 4, 500, LOT), (3, 4, 505, LOT)]
    assert d.book.best_bid() == 505  # the remainder rests
    [o] = d.book.open_orders("me")
    assert (o.filled_quantity, o.open_quantity, o.cancelled_quantity) == (2 * LOT, LOT, 0)


def test_stp_cancel_both() -> None:
    d = _stp_book()
    events = d.buy(3, 505, owner="me", stp=StpMode.CANCEL_BOTH)
    assert kinds(events) == ["OrderAccepted", "Fill", "OrderCancelled", "OrderCancelled"]
    assert [e.order_id for e in events[2:]] == [2, 4]  # type: ignore[union-attr]
    assert d.queue(SELL) == [3] and d.book.best_bid() is None


def test_stp_decrement_and_cancel_taker_larger() -> None:
    d = _stp_book()
    # taker 4 lots: 1 fills against m; meets own 2 lots -> both decremented by 2,
    # the resting order is done; taker continues with 1 lot against order 3
    events = d.buy(4, 505, owner="me", stp=StpMode.DECREMENT_AND_CANCEL)
    assert kinds(events) == [
        "OrderAccepted",
        "Fill",
        "OrderCancelled",
        "OrderCancelled",
        "Fill",
    ]
    maker_cut, taker_cut = events[2], events[3]
    assert isinstance(maker_cut, OrderCancelled) and isinstance(taker_cut, OrderCancelled)
    assert (maker_cut.order_id, maker_cut.cancelled_quantity, maker_cut.open_quantity) == (
        2,
        2 * LOT,
        0,
    )
    assert (taker_cut.order_id, taker_cut.cancelled_quantity, taker_cut.open_quantity) == (
        4,
        2 * LOT,
        LOT,
    )
    assert fills(events)[-1] == (3, 4, 505, LOT)
    assert len(d.book) == 0


def test_stp_decrement_and_cancel_maker_larger_keeps_its_priority() -> None:
    d = Driver()
    d.sell(3, 500, owner="me")  # 1
    d.sell(1, 500, owner="m")  # 2
    events = d.buy(1, 500, owner="me", stp=StpMode.DECREMENT_AND_CANCEL)
    assert kinds(events) == ["OrderAccepted", "OrderCancelled", "OrderCancelled"]
    assert events[1].open_quantity == 2 * LOT  # type: ignore[union-attr]
    assert events[2].open_quantity == 0  # type: ignore[union-attr]
    assert d.queue(SELL) == [1, 2]
    [o] = d.book.open_orders("me")
    assert (o.quantity, o.open_quantity, o.cancelled_quantity) == (3 * LOT, 2 * LOT, LOT)


def test_stp_decrement_resting_remainder_counts_cancelled() -> None:
    d = Driver()
    d.sell(1, 500, owner="me")  # 1
    d.buy(3, 500, owner="me", stp=StpMode.DECREMENT_AND_CANCEL)  # 2
    [o] = d.book.open_orders("me")
    assert (o.order_id, o.open_quantity, o.cancelled_quantity, o.filled_quantity) == (
        2,
        2 * LOT,
        LOT,
        0,
    )


# ---------------------------------------------------------------- cancel


def test_cancel_releases_the_open_quantity(d: Driver) -> None:
    d.sell(3, 500, owner="m")
    d.buy(1, 500, owner="t")
    events = d.cancel(1, owner="m")
    assert events == [
        OrderCancelled(
            seq=4,
            time=1_000,
            instrument=SYMBOL,
            order_id=1,
            owner="m",
            side=SELL,
            price=500,
            cancelled_quantity=2 * LOT,
            open_quantity=0,
            reason=CancelReason.USER,
        )
    ]
    assert d.book.best_ask() is None


def test_cancel_unknown_or_foreign_order_is_rejected(d: Driver) -> None:
    d.sell(1, 500, owner="m")
    assert reject_reason(d.cancel(7, owner="m")) == R.UNKNOWN_ORDER
    assert reject_reason(d.cancel(1, owner="someone-else")) == R.UNKNOWN_ORDER
    assert len(d.book) == 1
    d.cancel(1, owner="m")
    assert reject_reason(d.cancel(1, owner="m")) == R.UNKNOWN_ORDER


def test_cancel_in_the_middle_of_a_level_keeps_the_others_in_order(d: Driver) -> None:
    for _ in range(3):
        d.sell(1, 500)
    d.cancel(2)
    assert d.queue(SELL) == [1, 3]
    d.cancel(1)
    d.cancel(3)
    assert d.book.best_ask() is None and d.book.depth().asks == []


def test_emptied_deep_level_is_skipped_at_the_top(d: Driver) -> None:
    d.sell(1, 500)  # 1
    d.sell(1, 505)  # 2
    d.sell(1, 510)  # 3
    d.cancel(2)  # a deeper level becomes empty
    events = d.buy(2, 510, owner="t")
    assert fills(events) == [(1, 4, 500, LOT), (3, 4, 510, LOT)]
    d.sell(1, 505)
    assert d.book.best_ask() == 505


# ---------------------------------------------------------------- amend


def test_amend_size_down_keeps_priority(d: Driver) -> None:
    d.sell(3, 500)  # 1
    d.sell(1, 500)  # 2
    events = d.amend(1, quantity=2 * LOT)
    assert events == [
        OrderAmended(
            seq=3,
            time=1_000,
            instrument=SYMBOL,
            order_id=1,
            owner="alice",
            side=SELL,
            old_price=500,
            new_price=500,
            old_open_quantity=3 * LOT,
            new_open_quantity=2 * LOT,
            priority_kept=True,
        )
    ]
    assert d.queue(SELL) == [1, 2]
    [o, _] = d.book.open_orders()
    assert (o.quantity, o.open_quantity) == (2 * LOT, 2 * LOT)


def test_amend_size_up_loses_priority(d: Driver) -> None:
    d.sell(1, 500)  # 1
    d.sell(1, 500)  # 2
    events = d.amend(1, quantity=2 * LOT)
    assert events[0].priority_kept is False  # type: ignore[union-attr]
    assert d.queue(SELL) == [2, 1]


def test_amend_price_change_requeues_at_the_new_level(d: Driver) -> None:
    d.sell(1, 510)  # 1
    d.sell(1, 505)  # 2
    d.amend(1, price=505)
    assert d.queue(SELL) == [2, 1]
    d.amend(2, price=515)
    assert d.queue(SELL) == [1, 2] and d.book.best_ask() == 505


def test_amend_new_quantity_is_the_open_quantity(d: Driver) -> None:
    d.sell(3, 500, owner="m")
    d.buy(2, 500, owner="t")
    d.amend(1, quantity=4 * LOT, owner="m")
    [o] = d.book.open_orders("m")
    assert (o.quantity, o.filled_quantity, o.open_quantity) == (6 * LOT, 2 * LOT, 4 * LOT)


def test_amend_that_would_cross_is_rejected(d: Driver) -> None:
    d.sell(1, 510, owner="m")
    d.buy(1, 500)  # 2
    assert reject_reason(d.amend(2, price=510)) == R.AMEND_WOULD_CROSS
    assert reject_reason(d.amend(2, price=515)) == R.AMEND_WOULD_CROSS
    assert d.book.best_bid() == 500


def test_amend_rejects(d: Driver) -> None:
    d.buy(2, 500)  # 1
    assert reject_reason(d.amend(1)) == R.AMEND_NO_CHANGE
    assert reject_reason(d.amend(1, price=500, quantity=2 * LOT)) == R.AMEND_NO_CHANGE
    assert reject_reason(d.amend(1, quantity=0)) == R.QTY_INVALID
    assert reject_reason(d.amend(1, quantity=LOT + 1)) == R.QTY_OFF_LOT
    assert reject_reason(d.amend(1, price=501)) == R.PRICE_OFF_TICK
    assert reject_reason(d.amend(1, price=PMAX + 5)) == R.PRICE_OUT_OF_BAND
    assert reject_reason(d.amend(9, price=505)) == R.UNKNOWN_ORDER
    assert reject_reason(d.amend(1, price=505, owner="bob")) == R.UNKNOWN_ORDER


# ---------------------------------------------------------------- mass cancel


def test_mass_cancel_by_owner_in_order_id_order(d: Driver) -> None:
    d.buy(1, 500, owner="a")  # 1
    d.sell(1, 600, owner="b")  # 2
    d.buy(1, 505, owner="a")  # 3
    d.sell(1, 605, owner="a")  # 4
    events = d.book.process(MassCancel(owner="a", instrument=SYMBOL, time=d.t))
    assert [e.order_id for e in events] == [1, 3, 4]  # type: ignore[union-attr]
    assert all(
        isinstance(e, OrderCancelled) and e.reason == CancelReason.MASS_CANCEL for e in events
    )
    assert [o.order_id for o in d.book.open_orders()] == [2]


def test_mass_cancel_everyone(d: Driver) -> None:
    d.buy(1, 500, owner="a")
    d.sell(1, 600, owner="b")
    events = d.book.process(MassCancel(instrument=SYMBOL, time=d.t))
    assert len(events) == 2 and len(d.book) == 0
    assert d.book.best_bid() is None and d.book.best_ask() is None
    assert d.book.process(MassCancel(instrument=SYMBOL, time=d.t)) == []


# ---------------------------------------------------------------- ids


def test_duplicate_client_order_id_per_owner(d: Driver) -> None:
    d.buy(1, 500, client_order_id="x")
    assert reject_reason(d.buy(1, 500, client_order_id="x")) == R.DUPLICATE_CLIENT_ORDER_ID
    # another owner may use the same id
    assert kinds(d.buy(1, 500, client_order_id="x", owner="bob")) == ["OrderAccepted"]
    # and the id stays used after the order is gone
    d.cancel(1)
    assert reject_reason(d.buy(1, 500, client_order_id="x")) == R.DUPLICATE_CLIENT_ORDER_ID


def test_rejected_order_does_not_use_up_its_client_order_id(d: Driver) -> None:
    assert reject_reason(d.buy(1, 501, client_order_id="x")) == R.PRICE_OFF_TICK
    assert kinds(d.buy(1, 500, client_order_id="x")) == ["OrderAccepted"]


def test_duplicate_open_order_id_is_rejected(d: Driver) -> None:
    d.buy(1, 500, order_id=77)
    assert reject_reason(d.sell(1, 600, order_id=77)) == R.DUPLICATE_ORDER_ID


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"quantity": 0}, R.QTY_INVALID),
        ({"quantity": -LOT}, R.QTY_INVALID),
        ({"quantity": LOT + 1}, R.QTY_OFF_LOT),
        ({"quantity": LOT, "price": 502}, R.PRICE_OFF_TICK),
        ({"quantity": LOT, "price": PMIN - 5}, R.PRICE_OUT_OF_BAND),
        ({"quantity": LOT, "price": PMAX + 5}, R.PRICE_OUT_OF_BAND),
        ({"quantity": LOT, "price": None}, R.PRICE_REQUIRED),
        ({"quantity": LOT, "price": 502, "order_type": OrderType.MARKET}, R.PRICE_OFF_TICK),
    ],
)
def test_new_order_rejects(d: Driver, kw: dict[str, object], reason: str) -> None:
    kw.setdefault("price", 500)
    events = d.new(BUY, client_order_id="c", **kw)  # type: ignore[arg-type]
    assert reject_reason(events) == reason
    rejected = events[0]
    assert isinstance(rejected, OrderRejected)
    assert (rejected.command, rejected.order_id, rejected.owner, rejected.client_order_id) == (
        CommandKind.NEW,
        1,
        "alice",
        "c",
    )
    assert len(d.book) == 0


# ---------------------------------------------------------------- trading state


def test_halted_rejects_new_orders_and_amends_but_allows_cancels(d: Driver) -> None:
    d.buy(1, 500)  # 1
    d.buy(1, 495)  # 2
    events = d.book.process(SetTradingState(instrument=SYMBOL, state=TradingState.HALTED, time=d.t))
    assert events == [
        TradingStateChanged(
            seq=3,
            time=1_000,
            instrument=SYMBOL,
            old_state=TradingState.OPEN,
            new_state=TradingState.HALTED,
        )
    ]
    assert reject_reason(d.sell(1, 500, owner="s")) == R.INSTRUMENT_HALTED
    assert reject_reason(d.amend(1, quantity=2 * LOT)) == R.INSTRUMENT_HALTED
    assert kinds(d.cancel(1)) == ["OrderCancelled"]
    assert kinds(d.book.process(MassCancel(instrument=SYMBOL, time=d.t))) == ["OrderCancelled"]
    d.book.process(SetTradingState(instrument=SYMBOL, state=TradingState.OPEN, time=d.t))
    assert kinds(d.sell(1, 500, owner="s")) == ["OrderAccepted"]
    assert d.book.instrument.state is TradingState.OPEN


def test_closing_cancels_everything_and_is_final(d: Driver) -> None:
    d.buy(1, 500)
    d.sell(1, 600, owner="s")
    events = d.book.process(SetTradingState(instrument=SYMBOL, state=TradingState.CLOSED, time=d.t))
    assert kinds(events) == ["TradingStateChanged", "OrderCancelled", "OrderCancelled"]
    assert all(
        e.reason == CancelReason.INSTRUMENT_CLOSED  # type: ignore[union-attr]
        for e in events[1:]
    )
    assert len(d.book) == 0
    assert reject_reason(d.buy(1, 500)) == R.INSTRUMENT_CLOSED
    assert reject_reason(d.cancel(1)) == R.INSTRUMENT_CLOSED
    assert reject_reason(d.amend(1, quantity=LOT)) == R.INSTRUMENT_CLOSED
    assert reject_reason(d.book.process(MassCancel(instrument=SYMBOL, time=d.t))) == (
        R.INSTRUMENT_CLOSED
    )
    reopen = SetTradingState(instrument=SYMBOL, state=TradingState.OPEN, time=d.t)
    assert reject_reason(d.book.process(reopen)) == R.INSTRUMENT_CLOSED


def test_setting_the_same_state_is_rejected(d: Driver) -> None:
    events = d.book.process(SetTradingState(instrument=SYMBOL, state=TradingState.OPEN, time=1))
    assert reject_reason(events) == R.INVALID_STATE_CHANGE


def test_book_starts_in_the_instruments_state() -> None:
    from tests.market.helpers import instrument

    book = OrderBook(instrument(state=TradingState.HALTED))
    assert book.trading_state is TradingState.HALTED
    assert reject_reason(Driver(book).buy(1, 500)) == R.INSTRUMENT_HALTED


def test_book_refuses_an_invalid_instrument() -> None:
    bad = Instrument(
        symbol=SYMBOL,
        model="llama-3.1-70b",
        window_start=1_796_083_200,
        duration=3_600,
        lot_size=0,
        tick_size=5,
        price_min=100,
        price_max=1_000,
    )
    with pytest.raises(InvalidInstrument):
        OrderBook(bad)


def test_rejects_still_expire_due_orders_first(d: Driver) -> None:
    d.buy(1, 500, tif=TimeInForce.GTD, expire_at=1_050)
    events = d.new(BUY, quantity=0, price=500, time=1_050)
    assert kinds(events) == ["OrderExpired", "OrderRejected"]
