"""Delivery reports, window close (settlement) and withdrawals, through the sequencer on a
real PostgreSQL: pro-rata release to the unit, no dust, refusals, idempotency, settlement
by the operator and by the clock (with a grace period), withdrawals paid and failed.

A provider's report is pending for the instrument's dispute period (`DISPUTE_S` here)
before it settles: `deliver` reports, moves the fake clock past the period, lets the
sequencer's clock settle it, and returns the settled report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from market.clearing import rules as settlement
from market.sequencer import (
    CloseInstrumentOp,
    CreateInstrumentOp,
    DeliveryOp,
    DepositOp,
    EntitlementExceeded,
    IdempotencyConflict,
    InstrumentSettled,
    ListingOp,
    PlaceOp,
    Sequencer,
    TickOp,
    TransactionRefused,
    UnknownWithdrawal,
    WithdrawalOutcomeOp,
    WithdrawalSettled,
    WithdrawOp,
)
from schemas.ledger import Account
from schemas.market import Side
from schemas.trading import (
    CreateInstrument,
    DeliveryReport,
    DeliveryView,
    Deposit,
    Listing,
    OrderView,
    PlaceOrder,
    SettlementView,
    WithdrawalRequest,
    WithdrawalView,
)
from tests.market.test_sequencer import assert_books_balance

SYM = "llama-3.1-70b/2026-12-01T00Z/1h"
WINDOW_END = 1_796_086_800_000  # 2026-12-01T01:00Z, ms
LOT = 1000
TERMS = settlement.Terms(
    symbol=SYM, lot_size=LOT, currency="USD", maker_fee_bps=10, taker_fee_bps=20,
    provider_fee_bps=250,
)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000_000  # before the window

    def __call__(self) -> int:
        return self.now


#: The test instrument's dispute period: a provider's report settles this long after it.
DISPUTE_S = 5


async def open_market(
    db_url: str, clock: Clock, grace: int = 0, dispute_s: int = DISPUTE_S
) -> Sequencer:
    s = await Sequencer.open(db_url, clock=clock)
    await s.submit(
        CreateInstrumentOp(
            CreateInstrument(
                symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
                maker_fee_bps=10, taker_fee_bps=20, provider_fee_bps=250,
                delivery_grace_s=grace, dispute_period_s=dispute_s,
            )
        )
    )  # fmt: skip
    for buyer in ("b1", "b2"):
        await s.submit(DepositOp(Deposit(deposit_id=buyer, account_id=buyer, amount=1_000_000)))
    for provider in ("p1", "p2"):
        await s.submit(
            ListingOp(provider, Listing(listing_id="l1", instrument=SYM, quantity=100_000))
        )
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def seq(db_url: str, clock: Clock) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url, clock)
    yield s
    await s.close()


async def place(
    s: Sequencer, account: str, coid: str, side: Side, qty: int, price: int
) -> OrderView:
    result = await s.submit(
        PlaceOp(
            account,
            PlaceOrder(client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price),
        )
    )
    assert isinstance(result, OrderView)
    return result


async def trade(s: Sequencer, buyer: str, provider: str, qty: int, price: int, tag: str) -> None:
    """`provider` rests an ask, `buyer` takes it whole (taker fee 20 bps)."""
    await place(s, provider, f"ask-{tag}", Side.SELL, qty, price)
    bought = await place(s, buyer, f"bid-{tag}", Side.BUY, qty, price)
    assert bought.status == "filled"


async def report(
    s: Sequencer, provider: str, report_id: str, buyer: str, tokens: int
) -> DeliveryView:
    """A provider's report as the sequencer answers it (pending, or its state now)."""
    result = await s.submit(
        DeliveryOp(
            provider,
            DeliveryReport(report_id=report_id, instrument=SYM, buyer=buyer, tokens=tokens),
        )
    )
    assert isinstance(result, DeliveryView)
    return result


async def pass_dispute_period(s: Sequencer, clock: Clock, pending: DeliveryView) -> None:
    """Move the clock to the end of the report's dispute period; a batch settles it."""
    assert pending.status == "pending" and pending.settles_at_ms is not None
    clock.now = max(clock.now, pending.settles_at_ms)
    await s.submit(TickOp())


async def deliver(
    s: Sequencer, clock: Clock, provider: str, report_id: str, buyer: str, tokens: int
) -> DeliveryView:
    """Report, wait out the dispute period, and return the report settled (a retry of a
    settled report answers it as it is)."""
    pending = await report(s, provider, report_id, buyer, tokens)
    if pending.status == "settled":
        return pending
    assert pending.settles_at_ms == pending.time_ms + DISPUTE_S * 1000
    # pending: the tokens and the escrow are held, nothing is paid yet
    assert s.ledger.balance(settlement.entitlement(buyer, provider, SYM)).held >= tokens
    await pass_dispute_period(s, clock, pending)
    settled = await report(s, provider, report_id, buyer, tokens)  # a retry: its state now
    assert settled.status == "settled"
    assert (settled.tokens, settled.released, settled.fee) == (
        pending.tokens, pending.released, pending.fee,
    )  # fmt: skip
    return settled


def bal(s: Sequencer, account: Account) -> tuple[int, int]:
    b = s.ledger.balance(account)
    return b.available, b.held


def cash(s: Sequencer, owner: str) -> tuple[int, int]:
    return bal(s, settlement.cash(owner, "USD"))


def ent(s: Sequencer, buyer: str, provider: str) -> int:
    return s.ledger.balance(settlement.entitlement(buyer, provider, SYM)).total


def esc(s: Sequencer, buyer: str, provider: str) -> int:
    return s.ledger.balance(settlement.escrow(buyer, provider, TERMS)).total


def fees(s: Sequencer) -> int:
    return s.ledger.balance(settlement.fees("USD")).total


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(60):  # the sequencer's clock task looks every quarter second
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- the pure rule -------------------------------------------------------------------------


def test_delivery_split_floors_and_the_last_delivery_takes_the_rest() -> None:
    split = settlement.delivery_split(3_000, 10_000, 33_330, 250)
    assert (split.released, split.fee, split.paid) == (9_999, 249, 9_750)
    # 33,330 * 1 / 3 = 11,110 exactly; 1 of 3 tokens of 10 units: floor(10/3) = 3
    assert settlement.delivery_split(1, 3, 10, 0).released == 3
    # the whole remaining entitlement releases the whole remaining escrow, whatever the ratio
    assert settlement.delivery_split(3, 3, 10, 0).released == 10
    assert settlement.delivery_split(7, 7, 1, 10_000).paid == 0
    with pytest.raises(ValueError):
        settlement.delivery_split(4, 3, 10, 0)
    with pytest.raises(ValueError):
        settlement.delivery_split(0, 3, 10, 0)


# -- deliveries ---------------------------------------------------------------------------


async def test_deliveries_release_escrow_pro_rata_to_the_unit(
    seq: Sequencer, clock: Clock, db_url: str
) -> None:
    await trade(seq, "b1", "p1", 10_000, 3_333, "t")
    # notional 10 lots * 3,333 = 33,330; taker fee 20 bps = 66
    assert (ent(seq, "b1", "p1"), esc(seq, "b1", "p1")) == (10_000, 33_330)
    assert cash(seq, "b1") == (1_000_000 - 33_396, 0)
    fees_before = fees(seq)

    d1 = await deliver(seq, clock, "p1", "r1", "b1", 3_000)
    # floor(33,330 * 3,000 / 10,000) = 9,999; fee floor(9,999 * 250 / 10,000) = 249
    assert (d1.tokens, d1.released, d1.fee, d1.paid) == (3_000, 9_999, 249, 9_750)
    assert (ent(seq, "b1", "p1"), esc(seq, "b1", "p1")) == (7_000, 23_331)
    assert cash(seq, "p1") == (9_750, 0)
    assert fees(seq) == fees_before + 249

    d2 = await deliver(seq, clock, "p1", "r2", "b1", 3_333)
    # on the pair's totals: floor(33,330 * 6,333 / 10,000) - 9,999 = 11,108;
    # fee floor(21,107 * 250 / 10,000) - 249 = 278 (per delivery it was 277)
    assert (d2.released, d2.fee) == (11_108, 278)
    assert (ent(seq, "b1", "p1"), esc(seq, "b1", "p1")) == (3_667, 12_223)

    # The last delivery releases exactly what is left: no dust.
    d3 = await deliver(seq, clock, "p1", "r3", "b1", 3_667)
    assert (d3.released, d3.fee) == (12_223, 306)  # fees 833 = floor(33,330 * 2.5%)
    assert (ent(seq, "b1", "p1"), esc(seq, "b1", "p1")) == (0, 0)
    assert d1.released + d2.released + d3.released == 33_330
    assert cash(seq, "p1") == (33_330 - 833, 0)
    assert fees(seq) == fees_before + 833
    # delivered tokens were burned: only p1's unsold capacity and p2's remain minted
    assert -seq.ledger.balance(settlement.issuance(SYM)).total == 90_000 + 100_000
    (view,) = seq.entitlements_of("b1")
    assert (view.provider, view.entitlement, view.escrow) == ("p1", 0, 0)
    await assert_books_balance(seq, db_url)
    conn = await asyncpg.connect(db_url)
    try:  # deliveries are history: the database refuses to change them
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE market_deliveries SET tokens = 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM market_deliveries")
    finally:
        await conn.close()


async def test_a_delivery_above_the_entitlement_is_refused_whole(
    seq: Sequencer, clock: Clock
) -> None:
    await trade(seq, "b1", "p1", 5_000, 100, "t")
    with pytest.raises(EntitlementExceeded):
        await deliver(seq, clock, "p1", "r1", "b1", 5_001)
    # p2 sold b1 nothing; b2 bought nothing
    with pytest.raises(EntitlementExceeded):
        await deliver(seq, clock, "p2", "r1", "b1", 1)
    with pytest.raises(EntitlementExceeded):
        await deliver(seq, clock, "p1", "r2", "b2", 1)
    assert (ent(seq, "b1", "p1"), esc(seq, "b1", "p1")) == (5_000, 500)
    assert cash(seq, "p1") == (0, 0)
    # the refused report id was never used: it can carry a valid report
    assert (await deliver(seq, clock, "p1", "r1", "b1", 5_000)).released == 500


async def test_a_report_id_is_idempotent_across_restarts(db_url: str) -> None:
    clock = Clock()
    s = await open_market(db_url, clock)
    try:
        await trade(s, "b1", "p1", 10_000, 1_000, "t")
        first = await deliver(s, clock, "p1", "r1", "b1", 4_000)
        again = await deliver(s, clock, "p1", "r1", "b1", 4_000)
        assert again == first
        assert ent(s, "b1", "p1") == 6_000
        with pytest.raises(IdempotencyConflict):
            await deliver(s, clock, "p1", "r1", "b1", 1_000)
        # two of the same in one batch: applied once
        both = await asyncio.gather(
            deliver(s, clock, "p1", "r2", "b1", 1_000), deliver(s, clock, "p1", "r2", "b1", 1_000)
        )
        assert both[0] == both[1] and ent(s, "b1", "p1") == 5_000
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        assert await deliver(s, clock, "p1", "r1", "b1", 4_000) == first
        assert ent(s, "b1", "p1") == 5_000
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


# -- window close ----------------------------------------------------------------------------


async def test_operator_close_cancels_refunds_and_burns(
    seq: Sequencer, clock: Clock, db_url: str
) -> None:
    await trade(seq, "b1", "p1", 10_000, 3_333, "t1")  # escrow 33,330
    await trade(seq, "b2", "p2", 4_000, 2_000, "t2")  # escrow 8,000
    await deliver(seq, clock, "p1", "r1", "b1", 3_000)  # releases 9,999
    bid = await place(seq, "b1", "rest-bid", Side.BUY, 2_000, 1_000)
    ask = await place(seq, "p2", "rest-ask", Side.SELL, 6_000, 9_000)
    assert cash(seq, "b1")[1] > 0 and bal(seq, settlement.capacity("p2", SYM))[1] == 6_000
    b1_before, b2_before = cash(seq, "b1")[0], cash(seq, "b2")[0]

    view = await seq.submit(CloseInstrumentOp(SYM))
    assert view == SettlementView(
        instrument=SYM, reason="operator", time_ms=view.time_ms,
        entitlement_burned=7_000 + 4_000, refunded=23_331 + 8_000,
        capacity_burned=(100_000 - 10_000) + (100_000 - 4_000),
    )  # fmt: skip
    # open orders cancelled and their holds voided; escrow refunded
    assert cash(seq, "b1") == (b1_before + 2_000 + 4 + 23_331, 0)
    assert cash(seq, "b2") == (b2_before + 8_000, 0)
    for buyer, provider in (("b1", "p1"), ("b2", "p2")):
        assert (ent(seq, buyer, provider), esc(seq, buyer, provider)) == (0, 0)
    for provider in ("p1", "p2"):
        assert bal(seq, settlement.capacity(provider, SYM)) == (0, 0)
    assert seq.ledger.balance(settlement.issuance(SYM)).total == 0
    assert seq.instrument_view(SYM).state == "settled"
    await assert_books_balance(seq, db_url)
    conn = await asyncpg.connect(db_url)
    try:
        statuses = await conn.fetch(
            "SELECT order_id, status FROM market_orders WHERE order_id = ANY($1::bigint[])",
            [bid.order_id, ask.order_id],
        )
    finally:
        await conn.close()
    assert {r["status"] for r in statuses} == {"cancelled"}

    # Settled: orders, listings and deliveries are refused with a clear code; close is idempotent.
    refused = await place(seq, "b2", "late", Side.BUY, 1_000, 1_000)
    assert (refused.status, refused.reject_reason) == ("rejected", "instrument_settled")
    with pytest.raises(InstrumentSettled):
        await deliver(seq, clock, "p1", "r2", "b1", 1)
    with pytest.raises(InstrumentSettled):
        await seq.submit(ListingOp("p1", Listing(listing_id="l2", instrument=SYM, quantity=1_000)))
    assert await seq.submit(CloseInstrumentOp(SYM)) == view


async def test_the_clock_closes_trading_then_settles_after_the_grace(db_url: str) -> None:
    clock = Clock()
    s = await open_market(db_url, clock, grace=600)
    try:
        await trade(s, "b1", "p1", 10_000, 1_000, "t")  # escrow 10,000
        await place(s, "b2", "rest", Side.BUY, 1_000, 500)
        assert s.instrument_view(SYM).delivery_grace_s == 600
        clock.now = WINDOW_END - 1
        r1 = await report(s, "p1", "r1", "b1", 2_000)
        assert r1.status == "pending" and s.instrument_view(SYM).state == "open"

        clock.now = WINDOW_END  # trading closes on its own: no command needed
        await wait_for(lambda: s.instrument_view(SYM).state == "closed", "trading to close")
        assert cash(s, "b2") == (1_000_000, 0)  # the resting bid was cancelled, its hold voided
        late = await place(s, "b2", "late", Side.BUY, 1_000, 500)
        assert late.reject_reason == "instrument_closed"
        # within the grace period deliveries still count (r1's 2,000 are held: the split
        # is on the 8,000 tokens and 8,000 of escrow left free)
        assert (await deliver(s, clock, "p1", "r2", "b1", 3_000)).released == 3_000
        # the clock passed r1's dispute period too: it settled on its own
        assert (await report(s, "p1", "r1", "b1", 2_000)).status == "settled"
        clock.now = WINDOW_END + 600_000 - 1
        await asyncio.sleep(0.6)
        assert s.instrument_view(SYM).state == "closed"
    finally:
        await s.close()
    # a restart in the grace period keeps the window's plan
    s = await Sequencer.open(db_url, clock=clock)
    try:
        assert s.instrument_view(SYM).state == "closed"
        clock.now = WINDOW_END + 600_000
        await wait_for(lambda: s.instrument_view(SYM).state == "settled", "settlement")
        settled = {v.instrument: v for v in s.settlements()}.get(SYM)
        assert settled is not None
        assert (settled.reason, settled.entitlement_burned, settled.refunded) == (
            "window",
            5_000,
            5_000,
        )
        assert cash(s, "b1")[0] == 1_000_000 - 10_020 + 5_000
        with pytest.raises(InstrumentSettled):
            await deliver(s, clock, "p1", "r3", "b1", 1)
        await assert_books_balance(s, db_url)
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        assert s.instrument_view(SYM).state == "settled"
    finally:
        await s.close()


# -- withdrawals ---------------------------------------------------------------------------


async def withdraw(s: Sequencer, account: str, wid: str, amount: int) -> WithdrawalView:
    result = await s.submit(
        WithdrawOp(account, WithdrawalRequest(withdrawal_id=wid, amount=amount))
    )
    assert isinstance(result, WithdrawalView)
    return result


async def mark(s: Sequencer, account: str, wid: str, paid: bool) -> WithdrawalView:
    result = await s.submit(WithdrawalOutcomeOp(account, wid, paid))
    assert isinstance(result, WithdrawalView)
    return result


async def test_withdrawals_hold_then_pay_or_fail_idempotently(seq: Sequencer, db_url: str) -> None:
    bank = settlement.bank("USD")
    bank_before = seq.ledger.balance(bank).total
    w = await withdraw(seq, "b1", "w1", 300_000)
    assert (w.status, w.amount) == ("pending", 300_000)
    assert cash(seq, "b1") == (700_000, 300_000)
    assert await withdraw(seq, "b1", "w1", 300_000) == w
    with pytest.raises(IdempotencyConflict):
        await withdraw(seq, "b1", "w1", 1)
    # more than is available: refused (and that id stays refused: test_pinned_refusals)
    with pytest.raises(TransactionRefused) as short:
        await withdraw(seq, "b1", "short", 700_001)
    assert short.value.code == "insufficient_funds"
    w2 = await withdraw(seq, "b1", "w2", 200_000)
    assert cash(seq, "b1") == (500_000, 500_000)

    paid = await mark(seq, "b1", "w1", True)
    assert paid.status == "paid"
    assert cash(seq, "b1") == (500_000, 200_000)
    assert seq.ledger.balance(bank).total == bank_before + 300_000
    assert await mark(seq, "b1", "w1", True) == paid  # idempotent
    with pytest.raises(WithdrawalSettled):
        await mark(seq, "b1", "w1", False)

    failed = await mark(seq, "b1", "w2", False)
    assert (failed.status, failed.created_at_ms) == ("failed", w2.created_at_ms)
    assert cash(seq, "b1") == (700_000, 0)
    assert await mark(seq, "b1", "w2", False) == failed
    with pytest.raises(WithdrawalSettled):
        await mark(seq, "b1", "w2", True)
    with pytest.raises(UnknownWithdrawal):
        await mark(seq, "b1", "nope", True)
    with pytest.raises(UnknownWithdrawal):
        await mark(seq, "b2", "w1", True)  # another account's id
    assert seq.ledger.balance(bank).total == bank_before + 300_000
    await assert_books_balance(seq, db_url)

    # the database refuses any other change of a withdrawal
    conn = await asyncpg.connect(db_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE market_withdrawals SET status = 'pending'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM market_withdrawals")
    finally:
        await conn.close()


async def test_withdraw_and_mark_in_one_batch(seq: Sequencer) -> None:
    pending, paid = await asyncio.gather(
        withdraw(seq, "b2", "w", 1_000),
        mark(seq, "b2", "w", True),
    )
    assert (pending.status, paid.status) == ("pending", "paid")
    assert cash(seq, "b2") == (999_000, 0)


async def test_a_withdrawal_id_cannot_spell_another_withdrawals_outcome(seq: Sequencer) -> None:
    """`w:paid` is just an id: it must not take the ledger id that paying `w` needs."""
    await withdraw(seq, "b1", "w", 500)
    await withdraw(seq, "b1", "w:paid", 1)
    paid = await mark(seq, "b1", "w", paid=True)
    assert paid.status == "paid"
    other = await mark(seq, "b1", "w:paid", paid=False)
    assert other.status == "failed"
