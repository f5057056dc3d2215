"""Many small deliveries through the sequencer on a real PostgreSQL pay the provider what
one delivery of their sum would: the escrow pro rata less the fee on it, both rounded on
the pair's totals (`rules.Delivered`, `InstrumentState.delivered`), and the settlement
refunds only the rest. The totals survive a restart (recovery rebuilds them from
`market_deliveries` and the reports still pending or disputed).

Floored per delivery, a gateway call worth less than one unit of escrow released 0, and
so did every small call after it: the provider was paid nothing and the window's close
refunded it all to the buyer."""

from __future__ import annotations

import asyncpg

from market.clearing import rules as settlement
from market.sequencer import CloseInstrumentOp, Sequencer
from market.sequencer.ops import GatewayChargeOp, VoucherOp
from schemas.disputes import Voucher, VoucherView
from schemas.gateway import GatewayDelivery
from tests.market.test_delivery import SYM, Clock, cash, esc, fees, open_market, report, trade
from tests.market.test_disputes import dispute, resolve
from tests.market.test_gateway_charge import receipt
from tests.market.test_sequencer import assert_books_balance


async def charge(s: Sequencer, *receipts: tuple[str, int]) -> list[GatewayDelivery]:
    """One flush of the gateway: one receipt per (buyer, tokens)."""
    done = await s.submit(GatewayChargeOp(tuple(receipt(b, tokens) for b, tokens in receipts)))
    assert isinstance(done, list) and all(d.refused is None for d in done)
    return done


async def delivered_rows(db_url: str, buyer: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT sum(tokens), sum(released), sum(fee) FROM market_deliveries WHERE buyer = $1",
            buyer,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def test_many_small_gateway_calls_pay_the_provider_pro_rata_across_a_restart(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_market(db_url, clock)  # provider fee 250 bps
    try:
        # b1: 10,000 tokens for 30 (0.003 a token: a call of 164 tokens is worth 0.49);
        # b2: 10,000 tokens for 30,000 (a call of 5 tokens releases 15, its fee 0.375)
        await trade(s, "b1", "p1", 10_000, 3, "1")
        await trade(s, "b2", "p1", 10_000, 3_000, "2")
        b1_cash, b2_cash, fees_before = cash(s, "b1")[0], cash(s, "b2")[0], fees(s)
        for _ in range(20):  # 20 flushes, each one call of each buyer
            await charge(s, ("b1", 164), ("b2", 5))
        # 3,280 tokens of b1: floor(30 * 3,280 / 10,000) = 9 (per call: 0 each)
        assert esc(s, "b1", "p1") == 30 - 9
        assert s.market.instrument(SYM).delivered_by("b1", "p1") == settlement.Delivered(
            tokens=3_280, released=9, fee=0
        )
        before = s.market.instrument(SYM).delivered
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock)  # recovery rebuilds the totals
    try:
        assert s.market.instrument(SYM).delivered == before
        for _ in range(20):
            await charge(s, ("b1", 164), ("b2", 5))
        # b1: 6,560 tokens release floor(30 * 6,560 / 10,000) = 19, fee floor(0.475) = 0;
        # b2: 200 tokens release 600, fee floor(600 * 2.5%) = 15 (per call: 0 each)
        assert await delivered_rows(db_url, "b1") == (6_560, 19, 0)
        assert await delivered_rows(db_url, "b2") == (200, 600, 15)
        assert cash(s, "p1") == (19 + 600 - 15, 0)
        assert fees(s) == fees_before + 15
        await s.submit(CloseInstrumentOp(SYM))
        # the close refunds only the rest
        assert cash(s, "b1")[0] == b1_cash + 30 - 19
        assert cash(s, "b2")[0] == b2_cash + 30_000 - 600
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def voucher_step(s: Sequencer, tokens: int, version: int) -> VoucherView:
    v = Voucher(buyer="b1", provider="p1", instrument=SYM, tokens=tokens, version=version,
                key_id="key_00000000000000aa")  # fmt: skip
    view = await s.submit(VoucherOp("p1", v, b"\x01" * 64))
    assert isinstance(view, VoucherView)
    return view


async def test_vouchers_and_reports_round_on_the_totals_and_a_refund_leaves_them(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_market(db_url, clock)
    try:
        await trade(s, "b1", "p1", 10_000, 3, "1")  # 10,000 tokens for 30
        for version in range(1, 11):  # ten vouchers of 100 tokens more each
            await voucher_step(s, 100 * version, version)
        # floor(30 * 1,000 / 10,000) = 3 (per voucher: floor(30 * 100 / N) = 0 each)
        assert esc(s, "b1", "p1") == 27
        pending = await report(s, "p1", "r1", "b1", 2_000)  # fixed now, on the totals
        assert pending.released == 30 * 3_000 // 10_000 - 3 == 6
        refunded = await report(s, "p1", "r2", "b1", 1_000)
        assert refunded.released == 30 * 4_000 // 10_000 - 9 == 3
        opened = await dispute(s, "b1", "p1", "r2")
        await resolve(s, opened.dispute_id, pay=False)  # as if r2 had never been made
        totals = s.market.instrument(SYM).delivered_by("b1", "p1")
        assert totals == settlement.Delivered(tokens=3_000, released=9, fee=0)
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock)  # r1 still pending: counted
    try:
        assert s.market.instrument(SYM).delivered_by("b1", "p1") == totals
        # funding now 30 - 3 (r2's refund) = 27 for 9,000 tokens; 1,500 more delivered
        view = await voucher_step(s, 2_500, 11)
        assert view.released == 27 * 4_500 // 9_000 - 9 == 4
        await assert_books_balance(s, db_url)
    finally:
        await s.close()
