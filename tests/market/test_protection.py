"""Market buys priced on the asks (`market.sequencer.protection`): the hold is what the
order can really spend, `max_notional` caps the spend whatever the self-trade
prevention, and nothing is held beyond what is available."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from market.book import OrderBook
from market.clearing import rules as settlement
from market.instruments import make_instrument
from market.sequencer import DepositOp, Sequencer
from market.sequencer.batch import digest
from market.sequencer.orders import _asks, _own_asks
from market.sequencer.protection import plan_market_buy
from schemas.market import (
    DepthLevel,
    Fill,
    NewOrder,
    OrderCancelled,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)
from schemas.trading import Deposit, PlaceOrder
from tests.market.test_sequencer import (
    LOT,
    SYM,
    TERMS,
    Clock,
    assert_books_balance,
    cash,
    order,
    place,
    setup_market,
)


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    sequencer = await Sequencer.open(db_url, clock=Clock())
    await setup_market(sequencer)
    yield sequencer
    await sequencer.close()


ASKS = [DepthLevel(610, 5 * LOT, 1), DepthLevel(615, 5 * LOT, 2), DepthLevel(620, 10 * LOT, 1)]


def _plan(quantity: int, **kw: object) -> tuple[int, int, int] | None:
    options = {"cap": None, "max_notional": None, "stp": StpMode.CANCEL_NEWEST, "own": {}, **kw}
    plan = plan_market_buy(ASKS, quantity, TERMS, **options)  # type: ignore[arg-type]
    return None if plan is None else (plan.quantity, plan.protection, plan.hold)


def test_a_market_buy_holds_the_cost_of_the_asks_it_takes_plus_the_larger_fee() -> None:
    cost = 5 * 610 + 5 * 615 + 2 * 620
    assert _plan(12 * LOT) == (12 * LOT, 620, cost + cost * 20 // 10_000)
    # more than the book: what the book has, no deeper than its last level
    whole = 5 * 610 + 5 * 615 + 10 * 620
    assert _plan(100 * LOT) == (20 * LOT, 620, whole + whole * 20 // 10_000)
    # the client's price is a cap: no fill above it
    assert _plan(12 * LOT, cap=615) == (10 * LOT, 615, 6_125 + 12)
    assert _plan(12 * LOT, cap=600) is None
    # max_notional: what 5,000 buys at the asks (8 lots: 5 at 610, 3 at 615)
    assert _plan(12 * LOT, max_notional=5_000) == (8 * LOT, 615, 4_895 + 9)
    assert _plan(12 * LOT, max_notional=600) is None
    assert (
        plan_market_buy(
            [], LOT, TERMS, cap=None, max_notional=None, stp=StpMode.CANCEL_NEWEST, own={}
        )
        is None
    )


def test_decrement_and_cancel_holds_the_protection_price_for_the_whole_quantity() -> None:
    """Each decrement against the buyer's own asks releases the order's hold at its
    price, the protection, so the walk's cost would not cover the fills left after."""
    assert _plan(12 * LOT, stp=StpMode.DECREMENT_AND_CANCEL) == (
        12 * LOT, 620, 12 * 620 + 12 * 620 * 20 // 10_000,
    )  # fmt: skip


def test_under_cancel_oldest_the_walk_skips_the_buyers_own_asks() -> None:
    """Found in review: cancel_oldest cancels the buyer's own asks and fills the same
    quantity deeper, so counting them as liquidity let a buy spend past max_notional.
    Now they are not counted under cancel_oldest (the hold is then exactly the walk's
    cost); the other modes never go deeper than the walk, so they count them."""
    own = {610: 5 * LOT, 615: 2 * LOT}  # all of the 610 level is the buyer's, 2 of 615
    cost = 3 * 615 + 7 * 620  # 10 lots past its own
    assert _plan(10 * LOT, stp=StpMode.CANCEL_OLDEST, own=own) == (
        10 * LOT, 620, cost + cost * 20 // 10_000,
    )  # fmt: skip
    assert _plan(10 * LOT, stp=StpMode.CANCEL_OLDEST, own=own, max_notional=5_000) == (
        8 * LOT, 620, 4_945 + 9,  # 3 at 615 and 5 at 620
    )  # fmt: skip
    assert _plan(10 * LOT, stp=StpMode.CANCEL_OLDEST, own=own, cap=610) is None
    for stp in (StpMode.CANCEL_NEWEST, StpMode.CANCEL_BOTH):
        assert _plan(10 * LOT, stp=stp, own=own) == (10 * LOT, 615, 6_125 + 12)
    # each decrement releases the hold at the protection price: all of it is held so
    assert _plan(10 * LOT, stp=StpMode.DECREMENT_AND_CANCEL, own=own) == (
        10 * LOT, 615, 6_150 + 12,
    )  # fmt: skip


_ASK_PRICES = st.sampled_from([500, 1_000, 2_000])
_ASKS = st.lists(
    st.tuples(st.sampled_from(["me", "x", "y"]), _ASK_PRICES, st.integers(1, 5)), max_size=8
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    asks=_ASKS,
    lots=st.integers(1, 10),
    max_notional=st.none() | st.integers(0, 10_000),
    cap=st.none() | _ASK_PRICES,
    stp=st.sampled_from(list(StpMode)),
)
@example(  # the review's case: its own ask cancelled, 2 lots at 2,000 spent 4,000
    asks=[("me", 1_000, 1), ("x", 2_000, 2)],
    lots=2,
    max_notional=3_000,
    cap=None,
    stp=StpMode.CANCEL_OLDEST,
)
def test_the_engine_never_spends_past_max_notional_or_the_hold(
    asks: list[tuple[str, int, int]], lots: int, max_notional: int | None, cap: int | None,
    stp: StpMode,
) -> None:  # fmt: skip
    """Random books with the buyer's own asks among others', every STP mode: the plan
    the sequencer makes of the book (as `orders` reads it) sent to the real engine
    spends at most `max_notional`, and the hold, drawn on as `settle` does, never runs out."""
    book = OrderBook(
        make_instrument(SYM, lot_size=LOT, tick_size=5, price_min=5, price_max=100_000)
    )
    for oid, (owner, price, n) in enumerate(asks, start=1):
        book.new_order(NewOrder(
            instrument=SYM, order_id=oid, owner=owner, side=Side.SELL, quantity=n * LOT,
            time=1, price=price,
        ))  # fmt: skip
    own = _own_asks(book, "me")
    plan = plan_market_buy(
        _asks(book), lots * LOT, TERMS, cap=cap, max_notional=max_notional, stp=stp, own=own
    )
    if plan is None:
        return
    events = book.new_order(NewOrder(
        instrument=SYM, order_id=100, owner="me", side=Side.BUY, quantity=plan.quantity,
        time=2, price=plan.protection, order_type=OrderType.MARKET, stp=stp,
    ))  # fmt: skip
    held, spent = plan.hold, 0
    for event in events:  # the hold as `sequencer.settle` draws on it, never below 0
        if isinstance(event, Fill):
            amount = settlement.notional(event.quantity, event.price, LOT)
            spent += amount
            held -= amount + settlement.fee(amount, TERMS.taker_fee_bps)
        elif isinstance(event, OrderCancelled) and event.order_id == 100 and event.open_quantity:
            held -= settlement.buy_reservation(event.cancelled_quantity, plan.protection, TERMS)
        assert held >= 0
    assert max_notional is None or spent <= max_notional
    assert plan.quantity <= lots * LOT
    fills = [e for e in events if isinstance(e, Fill)]
    if stp is StpMode.CANCEL_OLDEST:  # the walk priced exactly what fills
        assert sum(f.quantity for f in fills) == plan.quantity


def test_adding_max_notional_keeps_the_digest_of_older_requests() -> None:
    """A retry of an order placed before `max_notional` existed still matches its digest."""
    request = PlaceOrder(client_order_id="a", instrument="x/y", side=Side.BUY, quantity=5, price=3)
    assert digest(request).hex() == (
        "eb1035010829c42ce42419f163674c0198bd0035331bf86400b105e18681a69c"
    )
    assert digest(request) != digest(
        PlaceOrder(client_order_id="a", instrument="x/y", side=Side.BUY, quantity=5, price=3,
                   max_notional=7)
    )  # fmt: skip


def _market(coid: str, qty: int, **kw: object) -> PlaceOrder:
    return order(coid, Side.BUY, qty, None, order_type=OrderType.MARKET, **kw)


async def test_a_market_buy_is_filled_when_the_buyer_has_the_real_cost(
    seq: Sequencer,
    db_url: str,
) -> None:
    """The issue's case, scaled: asks at 610-620; a buyer who has the real cost (not the
    band maximum of 100,000 a lot) is filled; one who has less is refused before any
    fill; a hold never exceeds what is available."""
    await place(seq, "p1", order("a1", Side.SELL, 50_000, 610))
    await place(seq, "p2", order("a2", Side.SELL, 50_000, 620))
    cost = 50 * 610 + 50 * 620  # 61,500 for 100 lots
    need = cost + cost * 20 // 10_000
    await seq.submit(DepositOp(Deposit(deposit_id="d-b3", account_id="b3", amount=need)))
    await seq.submit(DepositOp(Deposit(deposit_id="d-b4", account_id="b4", amount=need - 1)))
    refused = await place(seq, "b4", _market("m0", 100_000))
    assert (refused.status, refused.reject_reason) == ("rejected", "insufficient_funds")
    assert cash(seq, "b4") == (need - 1, 0)
    filled = await place(seq, "b3", _market("m1", 100_000))
    assert (filled.status, filled.filled_quantity) == ("filled", 100_000)
    fees = 50 * 610 * 20 // 10_000 + 50 * 620 * 20 // 10_000
    assert cash(seq, "b3") == (need - cost - fees, 0)  # the hold's rest came back
    await assert_books_balance(seq, db_url)


async def test_max_notional_spends_at_most_that_and_concurrent_buys_never_overdraw(
    seq: Sequencer,
    db_url: str,
) -> None:
    await place(seq, "p1", order("a1", Side.SELL, 100_000, 610))
    capped = await place(seq, "b1", _market("m1", 100_000, max_notional=30_500))
    assert (capped.status, capped.quantity) == ("cancelled", 100 * LOT)  # it asked for 100 lots
    assert (capped.filled_quantity, capped.cancelled_quantity) == (50 * LOT, 50 * LOT)
    assert cash(seq, "b1") == (1_000_000 - 30_500 - 30_500 * 20 // 10_000, 0)
    limit = await place(seq, "b1", order("l1", Side.BUY, LOT, 610, max_notional=5))
    assert (limit.status, limit.reject_reason) == ("rejected", "max_notional_not_allowed")
    await place(seq, "p2", order("a2", Side.SELL, 100_000, 620))
    await seq.submit(DepositOp(Deposit(deposit_id="d-b5", account_id="b5", amount=20_000)))
    buys = [place(seq, "b5", _market(f"c{i}", 10 * LOT)) for i in range(40)]
    results = await asyncio.gather(*buys)
    filled = [r for r in results if r.status == "filled"]
    assert len(filled) == 3  # 10 lots at 610 and 620 cost 6,100-6,212 each with fees
    assert {r.reject_reason for r in results if r.status == "rejected"} == {"insufficient_funds"}
    available, held = cash(seq, "b5")
    assert available >= 0 and held == 0
    await assert_books_balance(seq, db_url)


@pytest.mark.parametrize("stp", [StpMode.CANCEL_NEWEST, StpMode.CANCEL_OLDEST])
async def test_a_fok_market_buy_that_max_notional_cannot_cover_is_refused_alone(
    seq: Sequencer, db_url: str, stp: StpMode
) -> None:
    """Found in review: a FOK kept its whole quantity while its hold was sized for what
    `max_notional` buys; the engine filled it all, the ledger refused the fill, and the
    whole batch (others' orders in it) was answered 503, as often as it was sent. Now
    it is refused `fok_unfillable` before the engine, and a FOK it covers fills."""
    await place(seq, "p1", order("a1", Side.SELL, 5 * LOT, 610))
    await place(seq, "p2", order("a2", Side.SELL, 10 * LOT, 620))
    before = cash(seq, "b1")
    spend = 5 * 610 + 2 * 620  # what 7 lots cost at the asks
    refused = await place(seq, "b1", order(
        "fok1", Side.BUY, 10 * LOT, None, order_type=OrderType.MARKET,
        tif=TimeInForce.FOK, max_notional=spend, stp=stp,
    ))  # fmt: skip
    assert (refused.status, refused.reject_reason) == ("rejected", "fok_unfillable")
    assert cash(seq, "b1") == before
    filled = await place(seq, "b1", order(
        "fok2", Side.BUY, 7 * LOT, None, order_type=OrderType.MARKET,
        tif=TimeInForce.FOK, max_notional=spend, stp=stp,
    ))  # fmt: skip
    assert (filled.status, filled.filled_quantity) == ("filled", 7 * LOT)
    await assert_books_balance(seq, db_url)


@pytest.mark.parametrize(
    ("stp", "filled"),
    [
        (StpMode.CANCEL_OLDEST, LOT),  # its own ask cancelled, 1 lot at 2,000: all 3,000 buys
        (StpMode.DECREMENT_AND_CANCEL, LOT),  # 1 lot off against its own ask, 1 at 2,000
        (StpMode.CANCEL_NEWEST, 0),  # stopped at its own ask
        (StpMode.CANCEL_BOTH, 0),
    ],
)
async def test_max_notional_caps_the_spend_past_the_buyers_own_asks(
    seq: Sequencer, db_url: str, stp: StpMode, filled: int
) -> None:
    """The review's case: a provider rests 1 lot at 1,000, another 2 lots at 2,000; the
    first's market buy of 2 lots with max_notional 3,000 filled 2 lots at 2,000 under
    cancel_oldest (4,000 spent). Now no mode spends past 3,000 nor holds anything after."""
    await seq.submit(DepositOp(Deposit(deposit_id="d-p1", account_id="p1", amount=100_000)))
    await place(seq, "p1", order("own", Side.SELL, LOT, 1_000))
    await place(seq, "p2", order("a2", Side.SELL, 2 * LOT, 2_000))
    buy = await place(seq, "p1", _market("m1", 2 * LOT, max_notional=3_000, stp=stp))
    assert buy.filled_quantity == filled
    spent = filled // LOT * 2_000
    assert spent <= 3_000
    assert cash(seq, "p1") == (100_000 - spent - spent * 20 // 10_000, 0)
    await assert_books_balance(seq, db_url)
