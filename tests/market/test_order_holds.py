"""An open order holds exactly what its open part can still spend, on a real PostgreSQL.

README: "A buy holds notional at its limit plus the larger fee; a sell holds its tokens."
A fill takes only its cost at the fill price and the fee at the rate it paid, and a
partial cancel (a `decrement_and_cancel` step) releases the reservation of the cancelled
part floored on its own: what that leaves over goes back to the buyer once the command
is done, not when the order ends. Checked on the cases the review found, then on random
programs of places, fills, self-trade decrements, amends and cancels, and across a
restart (the recovered ledger and orders are the ones the running sequencer had).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.store import load_state
from market.clearing import rules as settlement
from market.sequencer import (
    AmendOp,
    CancelOp,
    CreateInstrumentOp,
    DepositOp,
    ListingOp,
    OrderRefused,
    PlaceOp,
    Sequencer,
    UnknownOrder,
    WithdrawOp,
)
from schemas.market import OrderType, Side, StpMode, TimeInForce
from schemas.trading import (
    AmendOrder,
    CreateInstrument,
    Deposit,
    Listing,
    OrderView,
    PlaceOrder,
    WithdrawalRequest,
    WithdrawalView,
)
from tests.market.test_sequencer import Clock, assert_books_balance
from tests.support.pg import PgServer

SYM = "llama-3.1-70b/2026-12-01T00Z/1h"
LOT = 10
BUYERS = ("b0", "b1")
PROVIDERS = ("p0", "p1")  # providers sell and may buy
ACCOUNTS = BUYERS + PROVIDERS
T = TypeVar("T")


async def open_market(url: str, maker_bps: int = 10, taker_bps: int = 25) -> Sequencer:
    s = await Sequencer.open(url, clock=Clock())
    await s.submit(
        CreateInstrumentOp(
            CreateInstrument(
                symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=2_000,
                maker_fee_bps=maker_bps, taker_fee_bps=taker_bps,
            )
        )
    )  # fmt: skip
    for account in ACCOUNTS:
        await s.submit(DepositOp(Deposit(deposit_id=f"d-{account}", account_id=account,
                                         amount=200_000)))  # fmt: skip
    for provider in PROVIDERS:
        await s.submit(ListingOp(provider, Listing(listing_id="l", instrument=SYM,
                                                   quantity=2_000)))  # fmt: skip
    return s


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url)
    yield s
    await s.close()


def order(coid: str, side: Side, qty: int, price: int, **kw: Any) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price, **kw
    )


async def place(s: Sequencer, account: str, req: PlaceOrder) -> OrderView:
    view = await s.submit(PlaceOp(account, req))
    assert isinstance(view, OrderView)
    return view


def held(s: Sequencer, account: str) -> tuple[int, int]:
    """(cash held, tokens held) of an account."""
    cash = s.ledger.balance(settlement.cash(account, "USD")).held
    return cash, s.ledger.balance(settlement.capacity(account, SYM)).held


def owed(s: Sequencer, account: str) -> tuple[int, int]:
    """What the account's open orders must hold, as README states it."""
    terms = s.market.instrument(SYM).terms
    cash = tokens = 0
    for row in s.market.live.values():
        if row.account_id != account:
            continue
        assert row.price is not None
        if row.side is Side.BUY:
            cash += settlement.buy_reservation(row.open_quantity, row.price, terms)
        else:
            tokens += row.open_quantity
    return cash, tokens


async def test_a_resting_buy_filled_better_than_its_limit_holds_only_its_rest(
    seq: Sequencer, db_url: str
) -> None:
    """The review's case: 99 lots fill at 5 against a limit of 1,000; one lot rests."""
    await place(seq, "p0", order("cheap", Side.SELL, 990, 5))
    o = await place(seq, "b1", order("big", Side.BUY, 1000, 1000))
    assert (o.open_quantity, o.price) == (10, 1000)
    # 99 lots * 5 = 495 + 25 bps taker fee (1) paid; the rest needs 1,000 + 2 (25 bps)
    assert held(seq, "b1") == (1002, 0)
    assert seq.ledger.balance(settlement.cash("b1", "USD")).available == 200_000 - 496 - 1002
    # and the free cash can be withdrawn
    w = await seq.submit(WithdrawOp("b1", WithdrawalRequest(withdrawal_id="w", amount=150_000)))
    assert isinstance(w, WithdrawalView) and w.status == "pending"
    await assert_books_balance(seq, db_url)


async def test_a_buy_filled_as_maker_gives_back_the_taker_rate_it_did_not_pay(
    seq: Sequencer, db_url: str
) -> None:
    await place(seq, "b0", order("mk", Side.BUY, 1000, 1000))
    assert held(seq, "b0") == (100_000 + 250, 0)
    await place(seq, "p1", order("tk", Side.SELL, 990, 1000))
    # paid 99,000 + 99 (10 bps as maker); one lot left at 1,000 + 2 (the larger rate)
    assert held(seq, "b0") == (1002, 0)
    assert seq.ledger.balance(settlement.cash("b0", "USD")).total == 200_000 - 99_099
    await assert_books_balance(seq, db_url)


async def test_a_self_trade_decrement_releases_the_rounding_of_the_cancelled_part(
    seq: Sequencer, db_url: str
) -> None:
    """Two lots at 1,001 hold 2,002 + 5; decrementing one released 1,001 + 2 floored on
    its own, and the one lot left needs 1,003: the unit of rounding comes back too."""
    rest = await place(seq, "p0", order("rest", Side.BUY, 20, 1001))
    assert held(seq, "p0") == (2007, 0)
    taker = await place(
        seq, "p0", order("self", Side.SELL, 10, 1001, stp=StpMode.DECREMENT_AND_CANCEL)
    )
    assert taker.status == "cancelled" and taker.filled_quantity == 0
    assert seq.market.live[rest.order_id].open_quantity == 10
    assert held(seq, "p0") == (1003, 0)
    await assert_books_balance(seq, db_url)


async def test_an_amend_after_a_fill_holds_the_new_reservation(seq: Sequencer, db_url: str) -> None:
    await place(seq, "p0", order("cheap", Side.SELL, 20, 5))
    o = await place(seq, "b1", order("big", Side.BUY, 50, 1000))
    assert held(seq, "b1") == owed(seq, "b1") == (3007, 0)
    await seq.submit(AmendOp("b1", o.order_id, AmendOrder(price=900, quantity=40)))
    assert held(seq, "b1") == owed(seq, "b1") == (3609, 0)
    await assert_books_balance(seq, db_url)


# -- random programs ----------------------------------------------------------------------


def weighted(*choices: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """One of `choices`, each as often as it is listed (`one_of` would weigh them evenly)."""
    return st.sampled_from(range(len(choices))).flatmap(lambda i: choices[i])


narrow = st.integers(95, 105)  # a band where buys and sells cross
place_step = st.tuples(
    st.just("place"),
    st.sampled_from(ACCOUNTS + PROVIDERS),
    st.sampled_from([True, True, False]),  # a provider's side: mostly sell, else buy
    st.integers(1, 12),  # lots
    weighted(narrow, narrow, narrow, st.integers(1, 2_000)),
    st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, None]),  # None: market
    st.sampled_from(list(StpMode)),
)
cancel_step = st.tuples(st.just("cancel"), st.sampled_from(ACCOUNTS), st.integers(0, 9))
amend_step = st.tuples(
    st.just("amend"),
    st.sampled_from(ACCOUNTS),
    st.integers(0, 9),
    st.one_of(st.none(), st.integers(1, 12)),
    st.one_of(st.none(), st.integers(80, 120)),
)
program = st.lists(
    weighted(place_step, place_step, place_step, place_step, cancel_step, amend_step),
    min_size=10,
    max_size=40,
)
fee_terms = st.tuples(st.sampled_from([0, 7, 10, 30]), st.sampled_from([0, 13, 25, 55]))


def mine(s: Sequencer, account: str) -> list[int]:
    return sorted(o for o, row in s.market.live.items() if row.account_id == account)


async def run_step(s: Sequencer, step: tuple[object, ...], n: int) -> None:
    kind, account = step[0], step[1]
    assert isinstance(account, str)
    if kind == "place":
        _, _, sells, lots, price, tif, stp = step
        assert isinstance(lots, int) and isinstance(price, int) and isinstance(stp, StpMode)
        side = Side.SELL if sells and account.startswith("p") else Side.BUY
        if tif is None:
            req = PlaceOrder(client_order_id=f"o{n}", instrument=SYM, side=side,
                             quantity=lots * LOT, order_type=OrderType.MARKET, stp=stp)  # fmt: skip
        else:
            req = order(f"o{n}", side, lots * LOT, price, tif=tif, stp=stp)
        view = await place(s, account, req)
        event(f"{side} {view.status}{', partly filled' if view.filled_quantity else ''}")
        return
    orders = mine(s, account)
    if not orders:
        return
    index = step[2]
    assert isinstance(index, int)
    order_id = orders[index % len(orders)]
    if kind == "cancel":
        await s.submit(CancelOp(account, order_id))
        return
    _, _, _, lots, price = step
    assert (lots is None or isinstance(lots, int)) and (price is None or isinstance(price, int))
    amend = AmendOrder(price=price, quantity=None if lots is None else lots * LOT)
    try:
        await s.submit(AmendOp(account, order_id, amend))
        event("amended")
    except (OrderRefused, UnknownOrder) as refused:  # would cross, no change, funds
        event(f"amend refused {refused.code}")


def books(s: Sequencer) -> tuple[object, ...]:
    """The ledger's balances and the open orders, as the sequencer has them."""
    balances = {b.account: (b.available, b.held) for b in s.ledger.balances()}
    live = sorted(
        (o, r.account_id, r.side, r.price, r.open_quantity, r.hold_id)
        for o, r in s.market.live.items()
    )
    return balances, live


async def assert_each_hold_is_its_orders(s: Sequencer, url: str) -> None:
    """The ledger as stored (what a recovery loads): its open holds are those of the open
    orders, each of exactly the order's reservation."""
    terms = s.market.instrument(SYM).terms
    conn = await asyncpg.connect(url)
    try:
        stored, _, _ = await load_state(conn)
    finally:
        await conn.close()
    want = {}
    for row in s.market.live.values():
        assert row.hold_id is not None and row.price is not None
        want[row.hold_id] = settlement.reservation(row.side, row.open_quantity, row.price, terms)
    assert {h: hold.remaining for h, hold in stored.holds.items()} == want


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=program, fees=fee_terms)
async def test_open_orders_hold_exactly_their_reservation(
    pg: PgServer, pg_template: str, steps: list[tuple[object, ...]], fees: tuple[int, int]
) -> None:
    """After every step each account holds, in cash, the reservation of its open buys at
    their limits and, in tokens, its open sells; a restart recovers the same books."""
    async with pg.fresh_database(pg_template) as url:
        s = await open_market(url, *fees)
        try:
            for n, step in enumerate(steps):
                await run_step(s, step, n)
                for account in ACCOUNTS:
                    assert held(s, account) == owed(s, account), (account, step)
            await assert_books_balance(s, url)
            await assert_each_hold_is_its_orders(s, url)
            before = books(s)
        finally:
            await s.close()
        s = await Sequencer.open(url, clock=Clock())
        try:
            assert books(s) == before
            for account in ACCOUNTS:
                assert held(s, account) == owed(s, account)
        finally:
            await s.close()
