"""Disputes of providers' own reports through the sequencer on a real PostgreSQL: a report
is pending (its tokens and escrow held) for the dispute period, then settles by the
sequencer's clock; a disputed one keeps its escrow until the operator pays or refunds it
(both transactions carry the dispute id); settlement of the instrument waits for pending
reports; a restart mid-period neither loses nor repeats a settlement. Every path leaves
each asset summing to zero and the balances expected."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ledger.canonical import decode_transaction
from market.clearing import rules as settlement
from market.report_store import find_reports
from market.sequencer import CloseInstrumentOp, Sequencer, TickOp
from market.sequencer.disputes import dispute_id
from market.sequencer.errors import (
    DeliveryClosed,
    DisputeResolved,
    ReportNotDisputable,
    ReportsPending,
    UnknownDispute,
    UnknownReport,
)
from market.sequencer.ops import DisputeOp, ResolveDisputeOp
from schemas.disputes import DisputeRequest, DisputeView
from schemas.trading import DeliveryView
from tests.market.test_delivery import (
    DISPUTE_S,
    SYM,
    WINDOW_END,
    Clock,
    cash,
    deliver,
    ent,
    esc,
    fees,
    open_market,
    pass_dispute_period,
    report,
    trade,
)
from tests.market.test_sequencer import assert_books_balance


async def dispute(s: Sequencer, buyer: str, provider: str, report_id: str) -> DisputeView:
    request = DisputeRequest(provider=provider, report_id=report_id, reason="never served")
    view = await s.submit(DisputeOp(buyer, request))
    assert isinstance(view, DisputeView)
    return view


async def resolve(s: Sequencer, wanted: str, pay: bool) -> DisputeView:
    view = await s.submit(ResolveDisputeOp(wanted, pay=pay))
    assert isinstance(view, DisputeView)
    return view


def held(s: Sequencer, buyer: str, provider: str) -> tuple[int, int]:
    """What pending or disputed reports hold: (tokens, escrow)."""
    tokens = s.ledger.balance(settlement.entitlement(buyer, provider, SYM)).held
    terms = s.market.instrument(SYM).terms
    return tokens, s.ledger.balance(settlement.escrow(buyer, provider, terms)).held


async def transaction(db_url: str, tx_id: str) -> tuple[str, dict[str, str]]:
    """A committed transaction's code and metadata, from its canonical bytes."""
    conn = await asyncpg.connect(db_url)
    try:
        body = await conn.fetchval("SELECT body FROM ledger_transactions WHERE tx_id = $1", tx_id)
    finally:
        await conn.close()
    assert body is not None, f"no transaction {tx_id}"
    committed = decode_transaction(bytes(body))
    return committed.code, dict(committed.metadata)


async def report_status(db_url: str, provider: str, report_id: str) -> str:
    conn = await asyncpg.connect(db_url)
    try:
        found = await find_reports(conn, [(provider, report_id)])
    finally:
        await conn.close()
    return found[(provider, report_id)].status


@pytest.fixture
async def market(db_url: str) -> tuple[Sequencer, Clock]:
    clock = Clock()
    s = await open_market(db_url, clock)
    # escrow 33,330 for 10,000 tokens; the buyer paid 33,330 + 66 taker fee
    await trade(s, "b1", "p1", 10_000, 3_333, "t")
    return s, clock


async def test_an_undisputed_report_settles_when_its_period_ends(
    market: tuple[Sequencer, Clock], db_url: str
) -> None:
    s, clock = market
    try:
        fees_before = fees(s)
        pending = await report(s, "p1", "r1", "b1", 3_000)
        # the split is fixed now: floor(33,330 * 3,000 / 10,000) = 9,999; fee 249
        assert (pending.status, pending.released, pending.fee) == ("pending", 9_999, 249)
        assert pending.settles_at_ms == pending.time_ms + DISPUTE_S * 1000
        assert pending.transaction_id == settlement.report_hold_id("p1", "r1")
        # held, not paid: the buyer's total is unchanged, the free part is smaller
        assert held(s, "b1", "p1") == (3_000, 9_999)
        assert (ent(s, "b1", "p1"), esc(s, "b1", "p1")) == (10_000, 33_330)
        (view,) = s.entitlements_of("b1")
        assert (view.entitlement, view.escrow, view.pending_tokens, view.pending_escrow) == (
            7_000, 23_331, 3_000, 9_999,
        )  # fmt: skip
        assert cash(s, "p1") == (0, 0)
        await assert_books_balance(s, db_url)

        clock.now = pending.time_ms + DISPUTE_S * 1000 - 1  # not yet
        await s.submit(TickOp())
        assert held(s, "b1", "p1") == (3_000, 9_999) and cash(s, "p1") == (0, 0)

        clock.now += 1  # the period ends: the sequencer's clock settles it on its own
        for _ in range(40):
            if cash(s, "p1") != (0, 0):
                break
            await asyncio.sleep(0.1)
        assert cash(s, "p1") == (9_750, 0)
        assert held(s, "b1", "p1") == (0, 0)
        assert (ent(s, "b1", "p1"), esc(s, "b1", "p1")) == (7_000, 23_331)
        assert fees(s) == fees_before + 249
        settled = await report(s, "p1", "r1", "b1", 3_000)
        assert (settled.status, settled.transaction_id) == (
            "settled", settlement.delivery_id("p1", "r1"),
        )  # fmt: skip
        # too late to dispute it now
        with pytest.raises(ReportNotDisputable):
            await dispute(s, "b1", "p1", "r1")
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_a_disputed_report_keeps_its_escrow_until_paid(
    market: tuple[Sequencer, Clock], db_url: str
) -> None:
    s, clock = market
    try:
        pending = await report(s, "p1", "r1", "b1", 3_000)
        with pytest.raises(UnknownReport):  # another buyer's report is not b2's to dispute
            await dispute(s, "b2", "p1", "r1")
        opened = await dispute(s, "b1", "p1", "r1")
        assert opened.dispute_id == dispute_id("p1", "r1")
        assert (opened.status, opened.tokens, opened.released) == ("open", 3_000, 9_999)
        assert await dispute(s, "b1", "p1", "r1") == opened  # disputing again: the same one
        await pass_dispute_period(s, clock, pending)
        # the period is over, but a disputed report does not settle by itself
        assert held(s, "b1", "p1") == (3_000, 9_999) and cash(s, "p1") == (0, 0)
        assert await report_status(db_url, "p1", "r1") == "disputed"

        paid = await resolve(s, opened.dispute_id, pay=True)
        assert (paid.status, paid.transaction_id) == (
            "paid", settlement.dispute_pay_id(opened.dispute_id),
        )  # fmt: skip
        assert cash(s, "p1") == (9_750, 0) and held(s, "b1", "p1") == (0, 0)
        assert (ent(s, "b1", "p1"), esc(s, "b1", "p1")) == (7_000, 23_331)
        code, metadata = await transaction(db_url, settlement.dispute_pay_id(opened.dispute_id))
        assert (code, metadata["dispute"], metadata["report"]) == (
            "delivery", opened.dispute_id, "r1",
        )  # fmt: skip
        assert await resolve(s, opened.dispute_id, pay=True) == paid  # idempotent
        with pytest.raises(DisputeResolved):
            await resolve(s, opened.dispute_id, pay=False)
        with pytest.raises(UnknownDispute):
            await resolve(s, "dsp_0000000000000000", pay=True)
        assert await report_status(db_url, "p1", "r1") == "paid"
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_a_disputed_report_refunded_burns_its_tokens_and_repays_the_buyer(
    market: tuple[Sequencer, Clock], db_url: str
) -> None:
    s, clock = market
    try:
        b1_cash = cash(s, "b1")[0]
        await report(s, "p1", "r1", "b1", 3_000)
        opened = await dispute(s, "b1", "p1", "r1")
        refunded = await resolve(s, opened.dispute_id, pay=False)
        assert (refunded.status, refunded.transaction_id) == (
            "refunded", settlement.dispute_refund_id(opened.dispute_id),
        )  # fmt: skip
        assert cash(s, "b1") == (b1_cash + 9_999, 0)  # the report's share of the escrow back
        assert cash(s, "p1") == (0, 0)
        assert held(s, "b1", "p1") == (0, 0)
        assert (ent(s, "b1", "p1"), esc(s, "b1", "p1")) == (7_000, 23_331)
        code, metadata = await transaction(db_url, settlement.dispute_refund_id(opened.dispute_id))
        assert (code, metadata["dispute"], metadata["refunded"]) == (
            "dispute_refund", opened.dispute_id, "9999",
        )  # fmt: skip
        with pytest.raises(DisputeResolved):
            await resolve(s, opened.dispute_id, pay=True)
        # what is left still delivers pro rata: 7,000 tokens release all 23,331
        last = await deliver(s, clock, "p1", "r2", "b1", 7_000)
        assert (last.released, last.fee) == (23_331, 583)
        assert cash(s, "p1") == (23_331 - 583, 0)
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_settlement_waits_for_pending_reports(db_url: str) -> None:
    clock = Clock()
    s = await open_market(db_url, clock, grace=2, dispute_s=60)
    try:
        await trade(s, "b1", "p1", 10_000, 3_333, "t")
        await trade(s, "b2", "p1", 4_000, 2_000, "u")  # escrow 8,000
        clock.now = WINDOW_END + 1_000  # trading closed, within the 2 s grace
        r1 = await report(s, "p1", "r1", "b1", 3_000)  # settles at WINDOW_END + 61 s
        r2 = await report(s, "p1", "r2", "b2", 1_000)
        assert r2.released == 2_000
        opened = await dispute(s, "b2", "p1", "r2")
        assert s.instrument_view(SYM).state == "closed"

        clock.now = WINDOW_END + 2_000  # the grace is over, r1 is pending: no settlement
        await s.submit(TickOp())
        assert s.instrument_view(SYM).state == "closed"
        with pytest.raises(ReportsPending):
            await s.submit(CloseInstrumentOp(SYM))
        with pytest.raises(DeliveryClosed):  # no new report may extend the wait
            await report(s, "p1", "r3", "b1", 1)
        assert s.instrument_view(SYM).state == "closed"

        b1_cash, b2_cash = cash(s, "b1")[0], cash(s, "b2")[0]
        assert r1.settles_at_ms is not None
        clock.now = r1.settles_at_ms  # r1 settles, then the instrument, in the same batch
        await s.submit(TickOp())
        assert s.instrument_view(SYM).state == "settled"
        (view,) = s.settlements()
        # b1: 7,000 left and 23,331 refunded; b2: 3,000 and 6,000 (r2's 1,000 and 2,000 held)
        assert (view.reason, view.entitlement_burned, view.refunded) == (
            "window", 7_000 + 3_000, 23_331 + 6_000,
        )  # fmt: skip
        assert cash(s, "p1") == (9_750, 0)
        assert cash(s, "b1") == (b1_cash + 23_331, 0)
        assert cash(s, "b2") == (b2_cash + 6_000, 0)
        assert held(s, "b2", "p1") == (1_000, 2_000)  # the disputed report's, still held
        await assert_books_balance(s, db_url)

        # resolved after the settlement: refunded, so the books of the instrument close
        await resolve(s, opened.dispute_id, pay=False)
        assert cash(s, "b2") == (b2_cash + 8_000, 0)
        assert held(s, "b2", "p1") == (0, 0)
        assert (ent(s, "b2", "p1"), esc(s, "b2", "p1")) == (0, 0)
        assert s.ledger.balance(settlement.issuance(SYM)).total == 0
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_a_restart_mid_period_neither_loses_nor_repeats_the_settlement(
    db_url: str,
) -> None:
    clock = Clock()
    s = await open_market(db_url, clock)
    try:
        await trade(s, "b1", "p1", 10_000, 3_333, "t")
        pending = await report(s, "p1", "r1", "b1", 3_000)
        disputed = await report(s, "p1", "r2", "b1", 1_000)
        await dispute(s, "b1", "p1", "r2")
    finally:
        await s.close()
    assert pending.settles_at_ms is not None
    clock.now = pending.settles_at_ms - 1
    s = await Sequencer.open(db_url, clock=clock)
    try:  # the pending report came back from the database, still pending
        assert held(s, "b1", "p1") == (3_000 + 1_000, 9_999 + disputed.released)
        await s.submit(TickOp())
        assert cash(s, "p1") == (0, 0)
        clock.now = pending.settles_at_ms
        await s.submit(TickOp())
        assert cash(s, "p1") == (9_750, 0)
    finally:
        await s.close()
    clock.now += 3_600_000
    s = await Sequencer.open(db_url, clock=clock)
    try:  # settled once: nothing is pending any more, nothing is paid again
        await s.submit(TickOp())
        assert cash(s, "p1") == (9_750, 0)
        assert held(s, "b1", "p1") == (1_000, disputed.released)  # the disputed one only
        assert s.market.instrument(SYM).pending == {}
        assert (await report(s, "p1", "r1", "b1", 3_000)).status == "settled"
        conn = await asyncpg.connect(db_url)
        try:
            ids = await conn.fetch(
                "SELECT tx_id FROM ledger_transactions WHERE tx_id LIKE '%:p1:r1' ORDER BY idx"
            )
        finally:
            await conn.close()
        assert [r["tx_id"] for r in ids] == [  # its hold and its delivery, once each
            settlement.report_hold_id("p1", "r1"), settlement.delivery_id("p1", "r1"),
        ]  # fmt: skip
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_reserved_report_ids_are_refused(market: tuple[Sequencer, Clock]) -> None:
    s, _ = market
    try:
        for rid in ("gw:x", "voucher:abc:1"):
            with pytest.raises(Exception) as refused:
                await report(s, "p1", rid, "b1", 1)
            assert getattr(refused.value, "code", None) == "reserved_report_id"
        view = await report(s, "p1", "ok", "b1", 1)
        assert isinstance(view, DeliveryView) and view.status == "pending"
    finally:
        await s.close()
