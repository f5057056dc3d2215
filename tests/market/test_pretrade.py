"""The sequencer's pre-trade check (`market.sequencer.orders`): which reason a refused
order is stored with when more than one applies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from market.sequencer import DepositOp, Sequencer
from schemas.market import OrderType, Side
from schemas.trading import Deposit, PlaceOrder
from tests.market.test_sequencer import LOT, Clock, cap, cash, order, place, setup_market


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    sequencer = await Sequencer.open(db_url, clock=Clock())
    await setup_market(sequencer)
    yield sequencer
    await sequencer.close()


def _market(coid: str, qty: int, price: int | None = None) -> PlaceOrder:
    return order(coid, Side.BUY, qty, price, order_type=OrderType.MARKET)


# Each would also need more than b1's 1,000,000 on hold (or p1's 100,000 tokens).
BAD_AND_TOO_BIG = [
    ("off-tick", "b1", order("t1", Side.BUY, 10_000 * LOT, 1_001), "price_off_tick"),
    ("off-lot", "b1", order("t2", Side.BUY, 10_000 * LOT + 500, 100), "qty_off_lot"),
    ("above the band", "b1", order("t3", Side.BUY, 20 * LOT, 100_005), "price_out_of_band"),
    ("far above the band", "b1", order("t4", Side.BUY, LOT, 10**12), "price_out_of_band"),
    ("market, off-lot", "b1", _market("t5", 10_000 * LOT + 1), "qty_off_lot"),
    ("market, cap off-tick", "b1", _market("t6", LOT, 1_001), "price_off_tick"),
    ("market, cap above the band", "b1", _market("t7", LOT, 100_005), "price_out_of_band"),
    ("sell, off-lot", "p1", order("t8", Side.SELL, 200 * LOT + 500, 600), "qty_off_lot"),
]


@pytest.mark.parametrize(
    ("account", "req", "reason"),
    [case[1:] for case in BAD_AND_TOO_BIG],
    ids=[case[0] for case in BAD_AND_TOO_BIG],
)
async def test_an_order_the_engine_would_refuse_gets_its_reason_not_insufficient_funds(
    seq: Sequencer, account: str, req: PlaceOrder, reason: str
) -> None:
    """Found in review: funds were checked before the engine's tick, lot and band
    checks, so such an order was stored `insufficient_funds` (and its client order id
    used up with that reason). Now the engine's own checks come first; a retry once the
    money is there answers the same."""
    before = cash(seq, account), cap(seq, account)
    refused = await place(seq, account, req)
    assert (refused.status, refused.reject_reason) == ("rejected", reason)
    assert (cash(seq, account), cap(seq, account)) == before
    await seq.submit(
        DepositOp(Deposit(deposit_id=f"more-{account}", account_id=account, amount=10**15))
    )
    again = await place(seq, account, req)
    assert (again.order_id, again.reject_reason) == (refused.order_id, reason)


async def test_a_good_order_that_is_too_big_is_still_refused_for_funds(seq: Sequencer) -> None:
    refused = await place(seq, "b1", order("big", Side.BUY, 10_000 * LOT, 1_000))
    assert (refused.status, refused.reject_reason) == ("rejected", "insufficient_funds")
    refused = await place(seq, "p1", order("bigs", Side.SELL, 200 * LOT, 600))
    assert (refused.status, refused.reject_reason) == ("rejected", "insufficient_capacity")
