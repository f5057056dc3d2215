"""Which ids pin a refusal, over HTTP on `tokex serve` (see the README, "Ids and retries").

A refusal that depends on the exchange's state (a 422) is pinned to the id of the command
when the command moves money or creates capacity: the same id and body keep getting that
422 after the state has changed (say the account now has the cash), another body under it
is a 409. Delivery reports are the exception: a refused report was never recorded and its
id stays free for the corrected report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from market.client import TokexApiError, TokexClient
from market.sequencer import MAX_LISTED_CAPACITY
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-02-01T00Z/1h"  # far ahead of the server's wall clock
LOT = 1_000


@dataclass
class Market:
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    buyer_id: str


@pytest.fixture
async def market(db_url: str, server_process: ServerProcess) -> AsyncIterator[Market]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(  # a report stays pending (disputable) for an hour
        CreateInstrument(
            symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
            dispute_period_s=3600,
        )
    )  # fmt: skip
    p = await operator.create_account(Role.PROVIDER, "provider")
    b = await operator.create_account(Role.BUYER, "buyer")
    provider, buyer = operator.as_account(p), operator.as_account(b)
    await provider.list_capacity("cap", SYM, 100 * LOT)
    yield Market(operator, provider, buyer, b.account_id)
    await operator.aclose()


async def refused(call: Callable[[], Awaitable[Any]]) -> tuple[int, str]:
    with pytest.raises(TokexApiError) as err:
        await call()
    return err.value.status, err.value.code


def order(coid: str, side: Side, quantity: int, price: int) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=quantity, price=price
    )


async def test_a_refused_withdrawal_id_stays_refused_once_the_cash_is_there(
    market: Market,
) -> None:
    m = market
    await m.operator.deposit("d1", m.buyer_id, 500)
    assert await refused(lambda: m.buyer.withdraw("w1", 800)) == (422, "insufficient_funds")
    await m.operator.deposit("d2", m.buyer_id, 1_000)  # now 1,500 are available
    assert await refused(lambda: m.buyer.withdraw("w1", 800)) == (422, "insufficient_funds")
    assert await refused(lambda: m.buyer.withdraw("w1", 100)) == (409, "idempotency_conflict")
    assert await m.buyer.withdrawals() == []
    w = await m.buyer.withdraw("w2", 800)  # a new id is a new request
    assert (w.status, w.amount) == ("pending", 800)


async def test_a_refused_order_id_stays_refused_once_the_cash_is_there(market: Market) -> None:
    m = market
    buy = order("o1", Side.BUY, 10 * LOT, 100)  # holds 1,000 and the most fee
    assert await refused(lambda: m.buyer.place_order(buy)) == (422, "insufficient_funds")
    await m.operator.deposit("d1", m.buyer_id, 10_000)
    assert await refused(lambda: m.buyer.place_order(buy)) == (422, "insufficient_funds")
    other = order("o1", Side.BUY, LOT, 100)
    assert await refused(lambda: m.buyer.place_order(other)) == (409, "idempotency_conflict")
    assert (await m.buyer.place_order(order("o2", Side.BUY, 10 * LOT, 100))).status == "open"


async def test_a_refused_listing_id_stays_refused_once_there_is_room(market: Market) -> None:
    m = market
    room = MAX_LISTED_CAPACITY - 100 * LOT
    await m.provider.list_capacity("big", SYM, room)
    assert await refused(lambda: m.provider.list_capacity("more", SYM, LOT)) == (
        422, "capacity_limit",
    )  # fmt: skip
    # The provider sells a lot: its listed capacity falls below the cap by that much.
    await m.operator.deposit("d1", m.buyer_id, 10_000)
    await m.provider.place_order(order("ask", Side.SELL, LOT, 100))
    assert (await m.buyer.place_order(order("bid", Side.BUY, LOT, 100))).status == "filled"
    assert await refused(lambda: m.provider.list_capacity("more", SYM, LOT)) == (
        422, "capacity_limit",
    )  # fmt: skip
    assert await refused(lambda: m.provider.list_capacity("more", SYM, 2 * LOT)) == (
        409, "idempotency_conflict",
    )  # fmt: skip
    await m.provider.list_capacity("again", SYM, LOT)  # a new id fits in the room


async def test_a_refused_delivery_report_id_stays_free_for_the_corrected_report(
    market: Market,
) -> None:
    m = market
    await m.operator.deposit("d1", m.buyer_id, 100_000)
    await m.provider.place_order(order("ask", Side.SELL, 2 * LOT, 100))
    await m.buyer.place_order(order("bid", Side.BUY, LOT, 100))  # the buyer holds 1,000 tokens

    def report(tokens: int) -> Awaitable[Any]:
        return m.provider.report_delivery("r1", SYM, m.buyer_id, tokens)

    assert await refused(lambda: report(2 * LOT)) == (422, "entitlement_exceeded")
    await m.buyer.place_order(order("bid2", Side.BUY, LOT, 100))  # now 2,000 tokens
    delivered = await report(2 * LOT)  # the same report now holds: it was never recorded
    assert (delivered.tokens, delivered.status) == (2 * LOT, "pending")
    assert await report(2 * LOT) == delivered


async def test_deposit_settlement_and_instrument_ids_answer_their_first_outcome(
    market: Market,
) -> None:
    m = market
    first = await m.operator.deposit("d1", m.buyer_id, 700)
    assert await m.operator.deposit("d1", m.buyer_id, 700) == first
    assert await refused(lambda: m.operator.deposit("d1", m.buyer_id, 701)) == (
        409, "idempotency_conflict",
    )  # fmt: skip
    terms = CreateInstrument(symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=9)
    assert await refused(lambda: m.operator.create_instrument(terms)) == (
        409, "duplicate_instrument",
    )  # fmt: skip
    settled = await m.operator.close_instrument(SYM)
    assert await m.operator.close_instrument(SYM) == settled
    # Once settled, a listing is refused, and that id keeps its refusal.
    assert await refused(lambda: m.provider.list_capacity("late", SYM, LOT)) == (
        422, "instrument_settled",
    )  # fmt: skip
    assert await refused(lambda: m.provider.list_capacity("late", SYM, LOT)) == (
        422, "instrument_settled",
    )  # fmt: skip
