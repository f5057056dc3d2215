"""Market buys priced on the asks (`market.sequencer.protection`): the hold is what the
order can really spend, `max_notional` caps the spend, and nothing is held beyond what
is available."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from market.sequencer import DepositOp, Sequencer
from market.sequencer.batch import digest
from market.sequencer.protection import plan_market_buy
from schemas.market import DepthLevel, OrderType, Side, StpMode, TimeInForce
from schemas.trading import Deposit, PlaceOrder
from tests.market.test_sequencer import (
    LOT,
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
    options = {"cap": None, "max_notional": None, "stp": StpMode.CANCEL_NEWEST, **kw}
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
        plan_market_buy([], LOT, TERMS, cap=None, max_notional=None, stp=StpMode.CANCEL_NEWEST)
        is None
    )


def test_self_trade_modes_that_match_past_own_asks_hold_the_protection_price() -> None:
    """cancel_oldest may skip the buyer's own cheap asks for dearer ones: the walk's cost
    would not cover that, so the whole quantity is held at the protection price."""
    for stp in (StpMode.CANCEL_OLDEST, StpMode.DECREMENT_AND_CANCEL):
        assert _plan(12 * LOT, stp=stp) == (12 * LOT, 620, 12 * 620 + 12 * 620 * 20 // 10_000)


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
