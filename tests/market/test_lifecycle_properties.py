"""Random lifecycles of an instrument through the sequencer on a real PostgreSQL.

Each example gets a fresh database and a fake clock, then runs a random program of
deposits, listings, orders, cancels, deliveries (whole, partial, too large), withdrawals
(paid, failed), the clock passing the window end and the grace, and operator closes.

After every step: each asset sums to zero, no user account is below zero, escrow(b, p, i)
is zero exactly when entitlement(b, p, i) is, and both equal a model kept here from the
fills and our own statement of the delivery rule. At the end (closing it if the program
did not): each buyer's cash paid equals its fills at their prices plus fees minus its
refunds, and each provider's cash received equals its delivered value minus fees.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger.accounts import may_go_negative
from market.clearing import rules as settlement
from market.sequencer import (
    CancelOp,
    CloseInstrumentOp,
    CreateInstrumentOp,
    DeliveryOp,
    DepositOp,
    EntitlementExceeded,
    InstrumentSettled,
    ListingOp,
    PlaceOp,
    Sequencer,
    TickOp,
    TransactionRefused,
    UnknownOrder,
    WithdrawalOutcomeOp,
    WithdrawalSettled,
    WithdrawOp,
)
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
from tests.support.pg import PgServer

SYM = "m/2030-01-01T00Z/1h"
WINDOW_END = 1_893_459_600_000  # 2030-01-01T01:00Z, ms
GRACE = 600  # seconds
#: A provider's report is pending this long (s); the program's clock then passes it.
DISPUTE_S = 1
LOT = 1000
BUYERS = ("b0", "b1", "b2")
PROVIDERS = ("p0", "p1")
ACCOUNTS = BUYERS + PROVIDERS


class Clock:
    def __init__(self) -> None:
        self.now = WINDOW_END - 3_600_000 - 60_000  # a minute before the window opens

    def __call__(self) -> int:
        return self.now


# -- the program ------------------------------------------------------------------------------

deposit_step = st.tuples(st.just("deposit"), st.sampled_from(BUYERS), st.integers(1, 200_000))
listing_step = st.tuples(st.just("listing"), st.sampled_from(PROVIDERS), st.integers(1, 20))
order_step = st.tuples(
    st.just("order"),
    st.sampled_from(ACCOUNTS),
    st.integers(1, 8),  # lots
    st.integers(5, 14),  # price per lot: a narrow band, so that orders cross
)
cancel_step = st.tuples(st.just("cancel"), st.sampled_from(ACCOUNTS), st.integers(0, 5))
deliver_step = st.tuples(
    st.just("deliver"),
    st.integers(0, 5),  # which (buyer, provider) pair with tokens still owed, if any
    st.sampled_from(PROVIDERS),  # ... or, when there is none, this pair
    st.sampled_from(BUYERS),
    st.one_of(st.just("all"), st.integers(1, 999), st.integers(1, 9_000)),
)
withdraw_step = st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), st.integers(1, 150_000))
mark_step = st.tuples(st.just("mark"), st.integers(0, 10), st.booleans())
time_step = st.tuples(st.just("time"), st.sampled_from(["end", "settle"]))
close_step = st.tuples(st.just("close"))

STEPS: dict[str, st.SearchStrategy[tuple[object, ...]]] = {
    "deposit": deposit_step,
    "listing": listing_step,
    "order": order_step,
    "cancel": cancel_step,
    "deliver": deliver_step,
    "withdraw": withdraw_step,
    "mark": mark_step,
    "time": time_step,
    "close": close_step,
}


def weighted(**weights: int) -> st.SearchStrategy[tuple[object, ...]]:
    """Steps in these proportions (`one_of` flattens and would weigh kinds evenly)."""
    kinds = [kind for kind, weight in weights.items() for _ in range(weight)]
    return st.sampled_from(kinds).flatmap(lambda kind: STEPS[kind])


# Mostly trading (a window rarely closes in the middle of it), then an end game where the
# clock, the operator, late deliveries, orders and withdrawals mix.
program = st.tuples(
    st.lists(
        weighted(
            deposit=6,
            listing=6,
            order=40,
            cancel=8,
            deliver=25,
            withdraw=6,
            mark=7,
            time=1,
            close=1,
        ),
        min_size=12,
        max_size=40,
    ),
    st.lists(weighted(time=2, close=1, deliver=2, order=1, withdraw=1, mark=1), max_size=8),
).map(lambda parts: parts[0] + parts[1])
fee_terms = st.tuples(
    st.sampled_from([0, 10, 30]), st.sampled_from([0, 20, 55]), st.sampled_from([0, 250, 333])
)


# -- the model ----------------------------------------------------------------------------------


@dataclass
class Model:
    """What the ledger must say, computed here from fills and the rules as written."""

    provider_bps: int
    deposited: dict[str, int] = field(default_factory=dict)
    fills_paid: dict[str, int] = field(default_factory=dict)  # buyer: notional + fees
    ent: dict[tuple[str, str], int] = field(default_factory=dict)  # (b, p) -> tokens
    esc: dict[tuple[str, str], int] = field(default_factory=dict)  # (b, p) -> cash
    refunded: dict[str, int] = field(default_factory=dict)
    earned: dict[str, int] = field(default_factory=dict)  # provider: released - fee
    #: (b, p) -> [tokens bought, cash paid for them] by the fills, and [tokens delivered,
    #: escrow released, provider fee] so far: the delivery rule rounds on these totals.
    bought: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    delivered: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    withdrawals: list[tuple[str, str, int, str]] = field(default_factory=list)
    open_orders: dict[str, list[int]] = field(default_factory=dict)
    last_fill_seq: int = 0
    phase: str = "open"  # open -> closed (trading over) -> settled

    def deliver(self, buyer: str, provider: str, tokens: int) -> tuple[int, int]:
        """Released and fee by the documented rule: what the pair has released in all is
        floor(cash paid * tokens delivered / tokens bought), the last delivery takes the
        rest; the fee in all is floor(released in all * bps / 10,000)."""
        key = (buyer, provider)
        ent, esc = self.ent[key], self.esc[key]
        bought, paid = self.bought[key]
        so_far = self.delivered.setdefault(key, [0, 0, 0])
        so_far[0] += tokens
        released = esc if tokens == ent else max(0, paid * so_far[0] // bought - so_far[1])
        so_far[1] += released
        fee = so_far[1] * self.provider_bps // 10_000 - so_far[2]
        so_far[2] += fee
        self.ent[(buyer, provider)] = ent - tokens
        self.esc[(buyer, provider)] = esc - released
        self.earned[provider] = self.earned.get(provider, 0) + released - fee
        return released, fee

    def settle(self) -> None:
        for (buyer, _), esc in self.esc.items():
            self.refunded[buyer] = self.refunded.get(buyer, 0) + esc
        self.ent = {k: 0 for k in self.ent}
        self.esc = {k: 0 for k in self.esc}
        self.phase = "settled"
        self.open_orders.clear()

    def paid_out(self, account: str) -> int:
        return sum(
            a for acc, _, a, status in self.withdrawals if acc == account and status == "paid"
        )


async def take_fills(s: Sequencer, conn: asyncpg.Connection, model: Model) -> None:
    """Book the fills since the last step into the model (from the committed fills)."""
    rows = await conn.fetch(
        "SELECT * FROM market_fills WHERE instrument = $1 AND seq > $2 ORDER BY seq",
        SYM,
        model.last_fill_seq,
    )
    for r in rows:
        buy_is_taker = r["aggressor_side"] == "buy"
        buyer = r["taker_account"] if buy_is_taker else r["maker_account"]
        provider = r["maker_account"] if buy_is_taker else r["taker_account"]
        notional = r["quantity"] // LOT * r["price"]
        key = (buyer, provider)
        model.ent[key] = model.ent.get(key, 0) + r["quantity"]
        model.esc[key] = model.esc.get(key, 0) + notional
        bought = model.bought.setdefault(key, [0, 0])
        bought[0] += r["quantity"]
        bought[1] += notional
        model.fills_paid[buyer] = model.fills_paid.get(buyer, 0) + notional + r["buyer_fee"]
        model.last_fill_seq = r["seq"]
        event("fills")


def check_invariants(s: Sequencer, model: Model) -> None:
    assert all(total == 0 for total in s.ledger.asset_totals().values())
    pairs: dict[str, list[int]] = {}
    for b in s.ledger.balances():
        a = b.account
        if not may_go_negative(a):
            assert b.available >= 0 and b.held >= 0, b
        if a.kind == "entitlement":
            pairs.setdefault(a.owner, [0, 0])[0] = b.total
        elif a.kind.startswith("escrow:"):
            pairs.setdefault(a.owner, [0, 0])[1] = b.total
    for owner, (ent, esc) in pairs.items():
        assert (ent == 0) == (esc == 0), (owner, ent, esc)
    terms = s.market.instrument(SYM).terms
    for (buyer, provider), tokens in model.ent.items():
        assert s.ledger.balance(settlement.entitlement(buyer, provider, SYM)).total == tokens
        escrow = s.ledger.balance(settlement.escrow(buyer, provider, terms)).total
        assert escrow == model.esc[(buyer, provider)]
    for account in ACCOUNTS:
        pending = sum(
            a for acc, _, a, status in model.withdrawals if acc == account and status == "pending"
        )
        held = s.ledger.balance(settlement.cash(account, "USD")).held
        if model.phase == "open":
            assert held >= pending
        else:  # no order can hold anything any more
            assert held == pending
            assert s.ledger.balance(settlement.capacity(account, SYM)).held == 0
    if model.phase == "settled":
        assert s.ledger.balance(settlement.issuance(SYM)).total == 0


async def run_step(
    s: Sequencer, clock: Clock, model: Model, step: tuple[object, ...], n: int
) -> None:
    kind = step[0]
    if kind == "deposit":
        _, buyer, amount = step
        assert isinstance(buyer, str) and isinstance(amount, int)
        await s.submit(DepositOp(Deposit(deposit_id=f"d{n}", account_id=buyer, amount=amount)))
        model.deposited[buyer] = model.deposited.get(buyer, 0) + amount
    elif kind == "listing":
        _, provider, lots = step
        assert isinstance(provider, str) and isinstance(lots, int)
        op = ListingOp(provider, Listing(listing_id=f"l{n}", instrument=SYM, quantity=lots * LOT))
        try:
            await s.submit(op)
        except InstrumentSettled:
            assert model.phase == "settled"
        except Exception as exc:  # OrderRefused instrument_not_open
            assert model.phase == "closed" and getattr(exc, "code", "") == "instrument_not_open"
        else:
            assert model.phase == "open"
    elif kind == "order":
        _, account, lots, price = step
        assert isinstance(account, str) and isinstance(lots, int) and isinstance(price, int)
        side = Side.BUY if account.startswith("b") else Side.SELL
        order = PlaceOrder(
            client_order_id=f"o{n}", instrument=SYM, side=side, quantity=lots * LOT, price=price
        )
        view = await s.submit(PlaceOp(account, order))
        assert isinstance(view, OrderView)
        if model.phase == "settled":
            assert view.reject_reason == "instrument_settled"
        elif model.phase == "closed":
            assert view.reject_reason == "instrument_closed"
        event(f"order {view.reject_reason or view.status}")
        if view.status == "open":
            model.open_orders.setdefault(account, []).append(view.order_id)
    elif kind == "cancel":
        _, account, index = step
        assert isinstance(account, str) and isinstance(index, int)
        mine = model.open_orders.get(account, [])
        if mine:
            order_id = mine.pop(index % len(mine))
            with contextlib.suppress(UnknownOrder):  # filled since
                await s.submit(CancelOp(account, order_id))
    elif kind == "deliver":
        _, pick, provider, buyer, amount = step
        assert isinstance(pick, int) and isinstance(provider, str) and isinstance(buyer, str)
        owed = sorted(k for k, v in model.ent.items() if v)
        if owed:
            buyer, provider = owed[pick % len(owed)]
        held = model.ent.get((buyer, provider), 0)
        tokens = held if amount == "all" else amount
        assert isinstance(tokens, int)
        report = DeliveryReport(
            report_id=f"r{n}", instrument=SYM, buyer=buyer, tokens=max(tokens, 1)
        )
        try:
            view = await s.submit(DeliveryOp(provider, report))
        except InstrumentSettled:
            assert model.phase == "settled"
        except EntitlementExceeded:
            assert model.phase != "settled" and max(tokens, 1) > held
        else:
            assert isinstance(view, DeliveryView)
            assert model.phase != "settled" and 0 < tokens <= held
            assert view.status == "pending" and view.settles_at_ms == clock.now + DISPUTE_S * 1000
            clock.now = view.settles_at_ms  # the dispute period passes: the report settles
            await s.submit(TickOp())
            assert (view.released, view.fee) == model.deliver(buyer, provider, tokens)
            event("partial delivery" if model.ent[(buyer, provider)] else "last delivery")
    elif kind == "withdraw":
        _, account, amount = step
        assert isinstance(account, str) and isinstance(amount, int)
        available = s.ledger.balance(settlement.cash(account, "USD")).available
        try:
            w = await s.submit(
                WithdrawOp(account, WithdrawalRequest(withdrawal_id=f"w{n}", amount=amount))
            )
        except TransactionRefused as exc:
            assert exc.code == "insufficient_funds" and amount > available
        else:
            assert isinstance(w, WithdrawalView) and amount <= available
            model.withdrawals.append((account, f"w{n}", amount, "pending"))
    elif kind == "mark":
        _, index, paid = step
        assert isinstance(index, int) and isinstance(paid, bool)
        if model.withdrawals:
            i = index % len(model.withdrawals)
            account, wid, amount, status = model.withdrawals[i]
            target = "paid" if paid else "failed"
            try:
                w = await s.submit(WithdrawalOutcomeOp(account, wid, paid))
            except WithdrawalSettled:
                assert status not in ("pending", target)
            else:
                assert isinstance(w, WithdrawalView) and w.status == target
                assert status in ("pending", target)
                model.withdrawals[i] = (account, wid, amount, target)
    elif kind == "time":
        _, when = step
        moment = WINDOW_END if when == "end" else WINDOW_END + GRACE * 1000
        clock.now = max(clock.now, moment)
        await s.submit(TickOp())
        if clock.now >= WINDOW_END + GRACE * 1000:
            if model.phase != "settled":
                model.settle()
        elif model.phase == "open":
            model.phase = "closed"
            model.open_orders.clear()
    elif kind == "close":
        view = await s.submit(CloseInstrumentOp(SYM))
        assert isinstance(view, SettlementView)
        if model.phase != "settled":
            assert view.refunded == sum(model.esc.values())
            assert view.entitlement_burned == sum(model.ent.values())
            model.settle()
    else:  # pragma: no cover
        raise AssertionError(step)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=program, fees=fee_terms)
async def test_random_lifecycles_keep_the_books(
    pg: PgServer, pg_template: str, steps: list[tuple[object, ...]], fees: tuple[int, int, int]
) -> None:
    maker, taker, provider_bps = fees
    clock = Clock()
    async with pg.fresh_database(pg_template) as url:
        s = await Sequencer.open(url, clock=clock)
        conn = await asyncpg.connect(url)
        try:
            await s.submit(
                CreateInstrumentOp(
                    CreateInstrument(
                        symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=1_000,
                        maker_fee_bps=maker, taker_fee_bps=taker, provider_fee_bps=provider_bps,
                        delivery_grace_s=GRACE, dispute_period_s=DISPUTE_S,
                    )
                )
            )  # fmt: skip
            model = Model(provider_bps=provider_bps)
            # Everyone starts with something, so that most programs trade.
            for i, buyer in enumerate(BUYERS):
                await run_step(s, clock, model, ("deposit", buyer, 100_000), -1 - i)
            for i, provider in enumerate(PROVIDERS):
                await run_step(s, clock, model, ("listing", provider, 10), -1 - i)
            for n, step in enumerate(steps):
                await run_step(s, clock, model, step, n)
                await take_fills(s, conn, model)
                check_invariants(s, model)
            if model.phase != "settled":
                await run_step(s, clock, model, ("close",), len(steps))
                check_invariants(s, model)

            # Whatever happened: buyers paid fills + fees - refunds, providers got
            # delivered value - fees.
            for buyer in BUYERS:
                total = s.ledger.balance(settlement.cash(buyer, "USD")).total
                paid = model.deposited.get(buyer, 0) - model.paid_out(buyer) - total
                assert paid == model.fills_paid.get(buyer, 0) - model.refunded.get(buyer, 0)
            for provider in PROVIDERS:
                total = s.ledger.balance(settlement.cash(provider, "USD")).total
                assert total + model.paid_out(provider) == model.earned.get(provider, 0)
            await assert_books_balance(s, url)
            event(f"refunded buyers: {sum(1 for v in model.refunded.values() if v)}")
        finally:
            await conn.close()
            await s.close()


@pytest.mark.parametrize("tokens", [1, 2, 3])
def test_the_model_rule_is_the_ledger_rule(tokens: int) -> None:
    """The model's statement of the rule agrees with `market.clearing.rules` on a small case."""
    model = Model(provider_bps=333, ent={("b", "p"): 3}, esc={("b", "p"): 10},
                  bought={("b", "p"): [3, 10]})  # fmt: skip
    split = settlement.delivery_split(tokens, 3, 10, 333)
    assert model.deliver("b", "p", tokens) == (split.released, split.fee)
    if tokens < 3:  # and the next delivery, rounded on the pair's totals
        after = settlement.delivery_split(
            1, 3 - tokens, 10 - split.released, 333, settlement.Delivered().plus(split)
        )
        assert model.deliver("b", "p", 1) == (after.released, after.fee)
