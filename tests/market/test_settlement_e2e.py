"""End to end on `tokex serve`: delivery reports (pending for the instrument's dispute
period, then settled by the server's clock), an operator's window close and withdrawals
through TokexClient, with the roles and error codes the API promises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

# A window far in the future: the server's clock is the wall clock.
SYM = "llama-3.1-70b/2030-01-01T00Z/1h"
#: A provider's report is pending this long before it settles (s).
DISPUTE_S = 3


@dataclass
class Market:
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    provider_id: str
    buyer_id: str


@pytest.fixture
async def market(db_url: str, server_process: ServerProcess) -> AsyncIterator[Market]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(
            symbol=SYM, lot_size=1000, tick_size=1, price_min=1, price_max=100_000,
            taker_fee_bps=20, provider_fee_bps=250, delivery_grace_s=3600,
            dispute_period_s=DISPUTE_S,
        )
    )  # fmt: skip
    p = await operator.create_account(Role.PROVIDER, "provider")
    b = await operator.create_account(Role.BUYER, "buyer")
    provider, buyer = operator.as_account(p), operator.as_account(b)
    await provider.list_capacity("cap", SYM, 50_000)
    await operator.deposit("dep", b.account_id, 1_000_000)
    yield Market(operator, provider, buyer, p.account_id, b.account_id)
    await operator.aclose()


def order(coid: str, side: Side, qty: int, price: int) -> PlaceOrder:
    return PlaceOrder(client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price)


async def cash(client: TokexClient) -> tuple[int, int]:
    for b in await client.balances():
        if b.kind == "cash":
            return b.available, b.held
    return 0, 0


async def test_deliver_close_and_withdraw_over_http(market: Market) -> None:
    m = market
    assert (await m.operator.instruments())[0].delivery_grace_s == 3600
    await m.provider.place_order(order("ask", Side.SELL, 10_000, 3_333))
    await m.buyer.place_order(order("bid", Side.BUY, 10_000, 3_333))  # escrow 33,330 + fee 66

    d = await m.provider.report_delivery("r1", SYM, m.buyer_id, 3_000)
    assert (d.released, d.fee, d.paid, d.provider) == (9_999, 249, 9_750, m.provider_id)
    assert d.status == "pending" and d.settles_at_ms == d.time_ms + DISPUTE_S * 1000
    # the buyer sees it pending (and could dispute it until `settles_at_ms`)
    pending = await m.buyer.delivery_reports()
    assert [(x.report_id, x.status) for x in pending] == [("r1", "pending")]
    again = await m.provider.report_delivery("r1", SYM, m.buyer_id, 3_000)
    assert (again.report_id, again.tokens, again.released) == (d.report_id, d.tokens, d.released)
    with pytest.raises(TokexApiError) as conflict:
        await m.provider.report_delivery("r1", SYM, m.buyer_id, 2_000)
    assert (conflict.value.status, conflict.value.code) == (409, "idempotency_conflict")
    with pytest.raises(TokexApiError) as over:
        await m.provider.report_delivery("r2", SYM, m.buyer_id, 7_001)
    assert (over.value.status, over.value.code) == (422, "entitlement_exceeded")
    with pytest.raises(TokexApiError) as role:
        await m.buyer.report_delivery("r3", SYM, m.buyer_id, 1)
    assert role.value.status == 403

    for _ in range(100):  # the server's clock settles it when the period ends
        if await m.buyer.deliveries():
            break
        await asyncio.sleep(0.1)
    settled = await m.provider.report_delivery("r1", SYM, m.buyer_id, 3_000)
    assert (settled.status, settled.released) == ("settled", 9_999)
    assert await m.buyer.delivery_reports() == []
    (mine,) = await m.buyer.entitlements()
    assert (mine.provider, mine.entitlement, mine.escrow, mine.delivered, mine.released) == (
        m.provider_id, 7_000, 23_331, 3_000, 9_999,
    )  # fmt: skip
    assert await m.provider.entitlements() == [mine]
    assert [x.report_id for x in await m.buyer.deliveries()] == ["r1"]

    # A resting bid, then the operator closes the window.
    await m.buyer.place_order(order("rest", Side.BUY, 1_000, 100))
    with pytest.raises(TokexApiError) as not_operator:
        await m.provider.close_instrument(SYM)
    assert not_operator.value.status == 403
    settled = await m.operator.close_instrument(SYM)
    assert (settled.reason, settled.entitlement_burned, settled.refunded) == (
        "operator", 7_000, 23_331,
    )  # fmt: skip
    assert settled.capacity_burned == 40_000
    assert await m.operator.close_instrument(SYM) == settled
    assert await TokexClient(m.operator.base_url).settlements() == [settled]
    assert (await m.buyer.instruments())[0].state == "settled"
    # the buyer paid 33,330 + 66 and got 23,331 back; the resting bid's hold was voided
    assert await cash(m.buyer) == (1_000_000 - 33_396 + 23_331, 0)
    (after,) = await m.buyer.entitlements()
    assert (after.entitlement, after.escrow, after.delivered) == (0, 0, 3_000)
    for attempt in (
        m.buyer.place_order(order("late", Side.BUY, 1_000, 100)),
        m.provider.report_delivery("r4", SYM, m.buyer_id, 1),
    ):
        with pytest.raises(TokexApiError) as late:
            await attempt
        assert (late.value.status, late.value.code) == (422, "instrument_settled")

    # Withdrawals: the provider takes its earnings out; the buyer's payout fails.
    assert await cash(m.provider) == (9_750, 0)
    w = await m.provider.withdraw("w1", 9_000)
    assert w.status == "pending" and await cash(m.provider) == (750, 9_000)
    assert await m.provider.withdraw("w1", 9_000) == w
    with pytest.raises(TokexApiError) as short:
        await m.provider.withdraw("w2", 751)
    assert (short.value.status, short.value.code) == (422, "insufficient_funds")
    wb = await m.buyer.withdraw("w1", 100_000)
    pending = await m.operator.withdrawals(status="pending")
    assert {(x.account_id, x.withdrawal_id) for x in pending} == {
        (m.provider_id, "w1"),
        (m.buyer_id, "w1"),
    }
    assert [x.account_id for x in await m.buyer.withdrawals()] == [m.buyer_id]
    with pytest.raises(TokexApiError) as not_op:
        await m.provider.mark_withdrawal(m.provider_id, "w1", paid=True)
    assert not_op.value.status == 403

    paid = await m.operator.mark_withdrawal(m.provider_id, "w1", paid=True)
    assert paid.status == "paid" and await cash(m.provider) == (750, 0)
    assert await m.operator.mark_withdrawal(m.provider_id, "w1", paid=True) == paid
    failed = await m.operator.mark_withdrawal(m.buyer_id, "w1", paid=False)
    assert failed.status == "failed" and failed.amount == wb.amount
    assert await cash(m.buyer) == (1_000_000 - 33_396 + 23_331, 0)
    with pytest.raises(TokexApiError) as twice:
        await m.operator.mark_withdrawal(m.buyer_id, "w1", paid=True)
    assert (twice.value.status, twice.value.code) == (409, "withdrawal_settled")
    with pytest.raises(TokexApiError) as unknown:
        await m.operator.mark_withdrawal(m.buyer_id, "nope", paid=True)
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_withdrawal")


async def test_a_withdrawal_whose_id_holds_a_slash_can_be_paid_or_failed(market: Market) -> None:
    """A withdrawal id is a client id (printable ASCII, `/` included): the cash it holds
    must be releasable, whatever the id (Litestar decodes `%2F` before routing)."""
    m = market
    for withdrawal_id in ("w/1", "w/paid", "100%/x?y"):
        await m.buyer.withdraw(withdrawal_id, 1_000)
    assert await cash(m.buyer) == (1_000_000 - 3_000, 3_000)
    paid = await m.operator.mark_withdrawal(m.buyer_id, "w/1", paid=True)
    assert (paid.withdrawal_id, paid.status) == ("w/1", "paid")
    failed = await m.operator.mark_withdrawal(m.buyer_id, "w/paid", paid=False)
    assert (failed.withdrawal_id, failed.status) == ("w/paid", "failed")
    assert (await m.operator.mark_withdrawal(m.buyer_id, "100%/x?y", paid=False)).status == (
        "failed"
    )
    assert await cash(m.buyer) == (1_000_000 - 1_000, 0)
    with pytest.raises(TokexApiError) as twice:
        await m.operator.mark_withdrawal(m.buyer_id, "w/1", paid=False)
    assert (twice.value.status, twice.value.code) == (409, "withdrawal_settled")


async def test_a_withdrawal_outcome_other_than_paid_or_failed_is_no_route(market: Market) -> None:
    m = market
    await m.buyer.withdraw("w1", 1_000)
    for path in (f"/v1/withdrawals/{m.buyer_id}/w1/done", f"/v1/withdrawals/{m.buyer_id}/paid"):
        with pytest.raises(TokexApiError) as none:
            await m.operator.request("POST", path)
        assert (none.value.status, none.value.code) == (404, "not_found"), path
    assert [w.status for w in await m.buyer.withdrawals()] == ["pending"]
