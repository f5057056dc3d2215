"""The sequencer on a real PostgreSQL: pre-trade holds, delivery versus payment,
releases, idempotency, recovery, and a failed commit that leaves no trace."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import asyncpg
import pytest

from ledger.errors import LedgerUnavailable
from ledger.rows import BatchRows
from ledger.store import load_state, nonzero, recomputed_balances
from market.clearing import rules as settlement
from market.sequencer import (
    AmendOp,
    CancelAllOp,
    CancelOp,
    CreateInstrumentOp,
    DepositOp,
    Done,
    ExchangeBusy,
    Failed,
    IdempotencyConflict,
    ListingOp,
    PlaceOp,
    Sequencer,
    SequencerState,
    SequencerStopped,
    UnknownOrder,
)
from market.sequencer.batch import digest
from schemas.market import OrderType, Side, StpMode, TimeInForce
from schemas.trading import (
    AmendOrder,
    CreateInstrument,
    Deposit,
    Listing,
    OrderView,
    PlaceOrder,
)
from tests.support.pg import PgServer

SYM = "llama-3.1-70b/2026-12-01T00Z/1h"
LOT = 1000
# taker 20 bps, maker 10 bps; price is per lot of 1,000 tokens
TERMS = settlement.Terms(
    symbol=SYM, lot_size=LOT, currency="USD", maker_fee_bps=10, taker_fee_bps=20
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000_000  # 2026-09-21: before the test instrument's window

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    sequencer = await Sequencer.open(db_url, clock=Clock())
    await setup_market(sequencer)
    yield sequencer
    await sequencer.close()


async def setup_market(s: Sequencer) -> None:
    await s.submit(
        CreateInstrumentOp(
            CreateInstrument(
                symbol=SYM, lot_size=LOT, tick_size=5, price_min=5, price_max=100_000,
                maker_fee_bps=10, taker_fee_bps=20,
            )
        )
    )  # fmt: skip
    for buyer in ("b1", "b2"):
        await s.submit(
            DepositOp(Deposit(deposit_id=f"d-{buyer}", account_id=buyer, amount=1_000_000))
        )
    for provider in ("p1", "p2"):
        await s.submit(
            ListingOp(provider, Listing(listing_id="l1", instrument=SYM, quantity=100_000))
        )


def order(coid: str, side: Side, qty: int, price: int | None, **kw: object) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price, **kw
    )  # type: ignore[arg-type]


async def place(s: Sequencer, account: str, req: PlaceOrder) -> OrderView:
    result = await s.submit(PlaceOp(account, req))
    assert isinstance(result, OrderView)
    return result


def cash(s: Sequencer, owner: str) -> tuple[int, int]:
    b = s.ledger.balance(settlement.cash(owner, "USD"))
    return b.available, b.held


def cap(s: Sequencer, owner: str) -> tuple[int, int]:
    b = s.ledger.balance(settlement.capacity(owner, SYM))
    return b.available, b.held


async def assert_books_balance(s: Sequencer, db_url: str) -> None:
    # memory may run ahead of the database by the batches in flight (the pipeline): compare
    # the two once those are committed (a clock tick's batch is, here, often still in flight)
    await s.committed()
    assert all(total == 0 for total in s.ledger.asset_totals().values())
    conn = await asyncpg.connect(db_url)
    try:
        recomputed = nonzero((await recomputed_balances(conn)).items())
        recovered, _, _ = await load_state(conn)
    finally:
        await conn.close()
    memory = nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances())
    assert memory == recomputed
    assert (
        nonzero((b.account, (b.available, b.held)) for b in recovered.all_balances()) == recomputed
    )
    for balance in s.ledger.balances():
        if balance.account.kind not in ("issuance", "bank"):
            assert balance.available >= 0 and balance.held >= 0, balance


async def test_a_buy_order_holds_notional_plus_the_most_fee(seq: Sequencer, db_url: str) -> None:
    o = await place(seq, "b1", order("o1", Side.BUY, 40_000, 5_000))
    assert o.status == "open" and o.open_quantity == 40_000
    # 40 lots * 5,000 = 200,000, plus 20 bps (the larger fee) = 400
    assert cash(seq, "b1") == (1_000_000 - 200_400, 200_400)
    await assert_books_balance(seq, db_url)


async def test_a_fill_is_delivery_versus_payment_to_the_unit(seq: Sequencer, db_url: str) -> None:
    sell = await place(seq, "p1", order("s1", Side.SELL, 60_000, 5_000))
    assert cap(seq, "p1") == (40_000, 60_000)
    buy = await place(seq, "b1", order("b1", Side.BUY, 40_000, 5_500))
    assert buy.status == "filled" and buy.filled_quantity == 40_000
    assert [(f.price, f.quantity, f.role, f.fee) for f in buy.fills] == [
        (5_000, 40_000, "taker", 400)
    ]
    # Paid: notional at the maker's price (200,000) + taker fee 20 bps (400); the rest released.
    assert cash(seq, "b1") == (1_000_000 - 200_400, 0)
    escrow = seq.ledger.balance(settlement.escrow("b1", "p1", TERMS))
    entitlement = seq.ledger.balance(settlement.entitlement("b1", "p1", SYM))
    fees = seq.ledger.balance(settlement.fees("USD"))
    assert (escrow.available, entitlement.available, fees.available) == (200_000, 40_000, 400)
    # The provider's order keeps 20,000 tokens on hold.
    assert cap(seq, "p1") == (40_000, 20_000)
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT * FROM market_orders WHERE order_id = $1", sell.order_id)
        assert (row["status"], row["open_quantity"], row["filled_quantity"]) == (
            "open",
            20_000,
            40_000,
        )
        assert await conn.fetchval("SELECT count(*) FROM market_fills") == 1
    finally:
        await conn.close()
    await assert_books_balance(seq, db_url)


async def test_maker_buyer_pays_the_maker_fee(seq: Sequencer, db_url: str) -> None:
    await place(seq, "b1", order("b1", Side.BUY, 10_000, 4_000))
    sell = await place(seq, "p1", order("s1", Side.SELL, 10_000, 3_000))
    assert sell.status == "filled" and sell.fills[0].price == 4_000  # the maker's price
    # 10 lots * 4,000 = 40,000; maker fee 10 bps = 40
    assert cash(seq, "b1") == (1_000_000 - 40_040, 0)
    await assert_books_balance(seq, db_url)


async def test_cancel_releases_the_hold_and_partial_fills_keep_the_rest(
    seq: Sequencer, db_url: str
) -> None:
    sell = await place(seq, "p1", order("s1", Side.SELL, 30_000, 5_000))
    await place(seq, "b1", order("b1", Side.BUY, 10_000, 5_000))
    cancelled = await seq.submit(CancelOp("p1", sell.order_id))
    assert cancelled.status == "cancelled" and cancelled.cancelled_quantity == 20_000
    assert cap(seq, "p1") == (90_000, 0)
    with pytest.raises(UnknownOrder):
        await seq.submit(CancelOp("p1", sell.order_id))
    await assert_books_balance(seq, db_url)


async def test_an_account_cannot_cancel_or_amend_anothers_order(seq: Sequencer) -> None:
    sell = await place(seq, "p1", order("s1", Side.SELL, 30_000, 5_000))
    with pytest.raises(UnknownOrder):
        await seq.submit(CancelOp("p2", sell.order_id))
    with pytest.raises(UnknownOrder):
        await seq.submit(AmendOp("b1", sell.order_id, AmendOrder(quantity=1_000)))
    assert cap(seq, "p1") == (70_000, 30_000)


async def test_orders_beyond_cash_or_capacity_are_refused_before_the_book(
    seq: Sequencer, db_url: str
) -> None:
    too_big = await place(seq, "b1", order("big", Side.BUY, 200_000, 5_000))
    assert (too_big.status, too_big.reject_reason) == ("rejected", "insufficient_funds")
    unlisted = await place(seq, "p1", order("s", Side.SELL, 101_000, 5_000))
    assert (unlisted.status, unlisted.reject_reason) == ("rejected", "insufficient_capacity")
    nothing = await place(seq, "b2", order("x", Side.SELL, 1_000, 5_000))  # a buyer lists nothing
    assert nothing.reject_reason == "insufficient_capacity"
    assert cash(seq, "b1") == (1_000_000, 0)
    assert seq.engine.book(SYM).depth(10).bids == []
    await assert_books_balance(seq, db_url)


async def test_a_refused_order_shows_the_time_in_force_it_would_have_had(seq: Sequencer) -> None:
    limit = await place(seq, "b1", order("big-limit", Side.BUY, 200_000, 5_000))
    market = await place(
        seq, "b1", order("big-market", Side.BUY, 200_000, None, order_type=OrderType.MARKET)
    )
    assert (limit.status, limit.tif) == ("rejected", "gtc")
    assert (market.status, market.tif) == ("rejected", "ioc")


async def test_200_concurrent_orders_overcommitting_one_balance(
    seq: Sequencer, db_url: str
) -> None:
    # Each order reserves 10 lots * 5,000 + 20 bps = 50,100; 1,000,000 covers 19 of them.
    results = await asyncio.gather(
        *(place(seq, "b1", order(f"c{i}", Side.BUY, 10_000, 5_000)) for i in range(200))
    )
    accepted = [r for r in results if r.status == "open"]
    assert len(accepted) == 19
    assert {r.reject_reason for r in results if r.status == "rejected"} == {"insufficient_funds"}
    assert cash(seq, "b1") == (1_000_000 - 19 * 50_100, 19 * 50_100)
    await assert_books_balance(seq, db_url)


async def test_client_order_id_is_idempotent_per_account(seq: Sequencer, db_url: str) -> None:
    first = await place(seq, "b1", order("same", Side.BUY, 10_000, 5_000))
    again = await place(seq, "b1", order("same", Side.BUY, 10_000, 5_000))
    assert again.order_id == first.order_id and again.status == "open"
    with pytest.raises(IdempotencyConflict):
        await seq.submit(PlaceOp("b1", order("same", Side.BUY, 20_000, 5_000)))
    other = await place(seq, "b2", order("same", Side.BUY, 10_000, 5_000))  # another account
    assert other.order_id != first.order_id
    assert cash(seq, "b1")[1] == 50_100  # held once


async def test_a_retry_naming_the_default_time_in_force_is_the_same_order(
    seq: Sequencer,
) -> None:
    """No `tif` and the default spelled out (`"tif": "gtc"` on a limit order) are one
    order, whichever came first; another time in force under the same id is a conflict."""
    first = await place(seq, "b1", order("dflt", Side.BUY, 10_000, 5_000))
    spelled = await place(seq, "b1", order("dflt", Side.BUY, 10_000, 5_000, tif=TimeInForce.GTC))
    assert spelled.order_id == first.order_id
    named = await place(seq, "b1", order("named", Side.BUY, 10_000, 5_000, tif=TimeInForce.GTC))
    again = await place(seq, "b1", order("named", Side.BUY, 10_000, 5_000))
    assert again.order_id == named.order_id and again.tif is TimeInForce.GTC
    with pytest.raises(IdempotencyConflict):
        await seq.submit(PlaceOp("b1", order("dflt", Side.BUY, 10_000, 5_000, tif=TimeInForce.IOC)))
    assert cash(seq, "b1")[1] == 2 * 50_100  # two orders held, not four


async def test_an_order_stored_before_its_default_tif_was_resolved_still_matches_retries(
    db_url: str,
) -> None:
    """An order stored under the digest of the request as it came (no `tif`: what
    orders were stored under before the default was resolved for it) is still the order
    a retry names, with or without `"tif": "gtc"`, after a restart."""
    s = await Sequencer.open(db_url, clock=Clock())
    await setup_market(s)
    plain = order("old", Side.BUY, 10_000, 5_000)
    first = await place(s, "b1", plain)
    await s.close()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "UPDATE market_orders SET request_digest = $1 WHERE order_id = $2",
            digest(plain), first.order_id,
        )  # fmt: skip
    finally:
        await conn.close()
    s = await Sequencer.open(db_url, clock=Clock())
    try:
        for retry in (plain, order("old", Side.BUY, 10_000, 5_000, tif=TimeInForce.GTC)):
            assert (await place(s, "b1", retry)).order_id == first.order_id
        with pytest.raises(IdempotencyConflict):
            await s.submit(PlaceOp("b1", order("old", Side.BUY, 20_000, 5_000)))
    finally:
        await s.close()


def test_an_orders_digest_is_the_one_stored_before_expire_at_was_renamed() -> None:
    """Digests of orders stored before `expire_at` became `expire_at_ms` on the wire (the
    hex values are what that version computed): a retry across the upgrade, by either
    name, is still the same order, not an idempotency conflict."""
    sym = "m/2030-01-01T00Z/1h"
    gtd = "18cc9395da94871118baf40e913aacc7e98ac279b65ccdbba71442f4f007e761"
    for name in ("expire_at_ms", "expire_at"):
        req = PlaceOrder(client_order_id="c-1", instrument=sym, side=Side.BUY, quantity=1000,
                         price=100, tif=TimeInForce.GTD, **{name: 1_900_000_000_000})  # type: ignore[arg-type]  # fmt: skip
        assert digest(req).hex() == gtd
    plain = PlaceOrder(client_order_id="c-2", instrument=sym, side=Side.BUY, quantity=1000,
                       price=100)  # fmt: skip
    assert digest(plain).hex() == (
        "c1033d72652059879cc318ad9177988edc1425db8be3c716fb8558676585f087"
    )


async def test_ioc_fok_and_market_orders_never_rest_and_release_their_holds(
    seq: Sequencer, db_url: str
) -> None:
    await place(seq, "p1", order("s1", Side.SELL, 5_000, 5_000))
    ioc = await place(seq, "b1", order("ioc", Side.BUY, 8_000, 5_000, tif=TimeInForce.IOC))
    assert (ioc.status, ioc.filled_quantity, ioc.cancelled_quantity) == ("cancelled", 5_000, 3_000)
    fok = await place(seq, "b1", order("fok", Side.BUY, 8_000, 5_000, tif=TimeInForce.FOK))
    assert (fok.status, fok.reject_reason) == ("rejected", "fok_unfillable")
    market = await place(
        seq, "b2", order("mkt", Side.BUY, 3_000, None, order_type=OrderType.MARKET)
    )
    # nothing left to buy: refused before the engine, holding nothing
    assert (market.status, market.reject_reason) == ("rejected", "no_liquidity")
    assert cash(seq, "b1") == (1_000_000 - 25_050, 0)  # 5 lots * 5,000 + 20 bps
    assert cash(seq, "b2") == (1_000_000, 0)
    await assert_books_balance(seq, db_url)


async def test_self_trade_prevention_never_trades_with_itself(seq: Sequencer, db_url: str) -> None:
    await seq.submit(DepositOp(Deposit(deposit_id="d-p1", account_id="p1", amount=1_000_000)))
    await place(seq, "p1", order("s1", Side.SELL, 5_000, 5_000))
    own = await place(seq, "p1", order("b1", Side.BUY, 5_000, 5_000, stp=StpMode.CANCEL_OLDEST))
    assert own.filled_quantity == 0 and own.status == "open"
    assert cap(seq, "p1") == (100_000, 0)  # the resting sell was cancelled, capacity released
    await assert_books_balance(seq, db_url)


async def test_amend_rebuilds_the_hold(seq: Sequencer, db_url: str) -> None:
    o = await place(seq, "b1", order("o", Side.BUY, 10_000, 5_000))
    smaller = await seq.submit(AmendOp("b1", o.order_id, AmendOrder(quantity=4_000)))
    assert smaller.open_quantity == 4_000
    assert cash(seq, "b1")[1] == 20_040
    dearer = await seq.submit(AmendOp("b1", o.order_id, AmendOrder(price=6_000)))
    assert dearer.price == 6_000 and cash(seq, "b1")[1] == 24_048
    await assert_books_balance(seq, db_url)


async def test_mass_cancel_cancels_only_the_callers_orders(seq: Sequencer, db_url: str) -> None:
    await place(seq, "b1", order("a", Side.BUY, 1_000, 5_000))
    await place(seq, "b1", order("b", Side.BUY, 1_000, 4_000))
    keep = await place(seq, "b2", order("c", Side.BUY, 1_000, 4_500))
    result = await seq.submit(CancelAllOp("b1", None))
    assert len(result.cancelled) == 2
    assert cash(seq, "b1") == (1_000_000, 0)
    assert [o.order_id for o in seq.engine.book(SYM).open_orders()] == [keep.order_id]
    await assert_books_balance(seq, db_url)


async def test_gtd_orders_expire_by_the_clock_and_release(db_url: str) -> None:
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        await setup_market(s)
        o = await place(
            s,
            "b1",
            order("g", Side.BUY, 1_000, 5_000, tif=TimeInForce.GTD, expire_at_ms=clock.now + 500),
        )
        assert o.status == "open" and cash(s, "b1")[1] == 5_010
        clock.now += 1_000
        for _ in range(40):  # the sequencer's clock task notices within a second
            await asyncio.sleep(0.05)
            if cash(s, "b1")[1] == 0:
                break
        assert cash(s, "b1") == (1_000_000, 0)
        assert s.engine.book(SYM).open_orders() == []
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_restart_rebuilds_books_orders_and_idempotency(db_url: str) -> None:
    s = await Sequencer.open(db_url, clock=Clock())
    await setup_market(s)
    await place(s, "p1", order("s1", Side.SELL, 30_000, 5_000))
    await place(s, "p2", order("s2", Side.SELL, 30_000, 5_500))
    await place(s, "b1", order("b1", Side.BUY, 40_000, 5_500))
    resting = await place(s, "b2", order("b2", Side.BUY, 10_000, 4_000))
    book_hash = s.engine.state_hash()
    balances = nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances())
    await s.close()

    s = await Sequencer.open(db_url, clock=Clock())
    try:
        assert s.engine.state_hash() == book_hash
        assert nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances()) == balances
        again = await place(s, "b2", order("b2", Side.BUY, 10_000, 4_000))
        assert again.order_id == resting.order_id
        # The restored order still trades and settles.
        sold = await place(s, "p1", order("s3", Side.SELL, 10_000, 4_000))
        assert sold.status == "filled"
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


class FailOnce:
    """A commit hook whose write fails when armed (a database error mid-batch)."""

    def __init__(self) -> None:
        self.armed = False

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        if self.armed:
            self.armed = False
            await conn.execute("SELECT 1 / 0")

    async def reload(self, conn: asyncpg.Connection) -> None:
        return None


async def test_a_committed_batch_leaves_no_reference_cycles(seq: Sequencer) -> None:
    """A batch's objects (entries, orders, fills) are freed when it is answered, by
    reference counting: left to the cycle collector, they made its pauses tens of ms."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(20):
            await place(seq, "p1", order(f"s{i}", Side.SELL, 1_000, 5_000))
            await place(seq, "b1", order(f"b{i}", Side.BUY, 2_000, 5_000))
        gc.collect()
        ours = sorted(
            {
                type(o).__qualname__
                for o in gc.garbage
                if type(o).__module__.split(".")[0] in ("ledger", "market", "schemas")
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []


async def test_a_bug_in_a_batch_answers_its_requests_and_the_exchange_goes_on(
    seq: Sequencer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(flight: object) -> None:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(seq, "_stage_flight", broken)
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(place(seq, "b1", order("o1", Side.BUY, 1_000, 5_000)), 5)
    placed = await place(seq, "b1", order("o1", Side.BUY, 1_000, 5_000))
    assert placed.status == "open"


async def test_a_batch_whose_commit_fails_leaves_no_trace(db_url: str) -> None:
    hook = FailOnce()
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[hook])
    try:
        await setup_market(s)
        await place(s, "p1", order("s1", Side.SELL, 30_000, 5_000))
        book_hash = s.engine.state_hash()
        balances = nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances())
        hook.armed = True
        with pytest.raises(LedgerUnavailable):
            await place(s, "b1", order("b1", Side.BUY, 10_000, 5_000))
        assert s.engine.state_hash() == book_hash
        assert nonzero((b.account, (b.available, b.held)) for b in s.ledger.balances()) == balances
        # Nothing of it was recorded: the same client order id is new, and trades.
        retry = await place(s, "b1", order("b1", Side.BUY, 10_000, 5_000))
        assert retry.status == "filled"
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_a_deposit_or_listing_retried_later_returns_its_first_receipt(db_url: str) -> None:
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock)
    try:
        await setup_market(s)
        first = await s.submit(DepositOp(Deposit(deposit_id="x", account_id="b1", amount=7)))
        listed = await s.submit(
            ListingOp("p1", Listing(listing_id="y", instrument=SYM, quantity=1000))
        )
        clock.now += 60_000  # the retry comes a minute later
        again = await s.submit(DepositOp(Deposit(deposit_id="x", account_id="b1", amount=7)))
        relisted = await s.submit(
            ListingOp("p1", Listing(listing_id="y", instrument=SYM, quantity=1000))
        )
        assert (again, relisted) == (first, listed)
        assert cash(s, "b1") == (1_000_007, 0)
        with pytest.raises(IdempotencyConflict):
            await s.submit(DepositOp(Deposit(deposit_id="x", account_id="b1", amount=8)))
    finally:
        await s.close()


async def test_listed_capacity_is_capped_per_provider_and_instrument(seq: Sequencer) -> None:
    """One provider cannot list so much that the instrument's issuance leaves the int64
    range and every other provider's listing is refused."""
    from market.sequencer import MAX_LISTED_CAPACITY, OrderRefused

    room = MAX_LISTED_CAPACITY - 100_000  # p1 listed 100,000 in setup_market
    first = await seq.submit(
        ListingOp("p1", Listing(listing_id="big", instrument=SYM, quantity=room))
    )
    with pytest.raises(OrderRefused) as err:
        await seq.submit(ListingOp("p1", Listing(listing_id="more", instrument=SYM, quantity=1000)))
    assert err.value.code == "capacity_limit"
    # A retry of an accepted listing still gets its receipt; others still list.
    again = await seq.submit(
        ListingOp("p1", Listing(listing_id="big", instrument=SYM, quantity=room))
    )
    assert again == first
    await seq.submit(ListingOp("p2", Listing(listing_id="ok", instrument=SYM, quantity=1000)))
    assert cap(seq, "p2") == (101_000, 0)


async def test_the_exchange_comes_back_after_postgresql_restarts(db_url: str, pg: PgServer) -> None:
    s = await Sequencer.open(db_url, clock=Clock())
    try:
        await setup_market(s)
        resting = await place(s, "b1", order("r", Side.BUY, 10_000, 5_000))
        pg.restart(mode="immediate")  # a crash of PostgreSQL under the running exchange
        receipt = None
        for _ in range(100):  # the batch that meets the dead connection fails; then it heals
            try:
                receipt = await s.submit(
                    DepositOp(Deposit(deposit_id="after", account_id="b2", amount=5))
                )
                break
            except LedgerUnavailable:
                await asyncio.sleep(0.05)
        assert receipt is not None and s.healthy
        assert cash(s, "b2") == (1_000_005, 0)
        sold = await place(s, "p1", order("s", Side.SELL, 10_000, 5_000))
        assert sold.status == "filled" and sold.fills[0].order_id == sold.order_id
        assert (await s.submit(CancelAllOp("b1", None))).cancelled == []  # resting was filled
        assert resting.order_id not in {o.order_id for o in s.engine.book(SYM).open_orders()}
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


class Gate:
    """A commit hook that holds every commit until released, then fails it if told to."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False
        self.armed = False

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        if self.armed:
            self.entered.set()
            await self.release.wait()
            if self.fail:
                await conn.execute("SELECT 1 / 0")

    async def reload(self, conn: asyncpg.Connection) -> None:
        return None


async def test_reads_never_see_a_batch_before_its_commit(db_url: str) -> None:
    gate = Gate()
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[gate])
    try:
        await setup_market(s)
        gate.armed, gate.fail = True, True
        placing = asyncio.create_task(place(s, "b1", order("o", Side.BUY, 10_000, 5_000)))
        await gate.entered.wait()  # the order is staged in memory, its commit under way

        async def read() -> tuple[object, object]:
            await s.committed()
            depth = s.engine.book(SYM).depth(10)
            return [(b.account.kind, b.available, b.held) for b in s.balances_of("b1")], depth.bids

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        assert not reader.done()  # it waits for the commit instead of reading staged state
        gate.release.set()
        with pytest.raises(LedgerUnavailable):
            await placing
        balances, bids = await reader
        assert balances == [("cash", 1_000_000, 0)] and bids == []  # the failed batch is gone
    finally:
        gate.armed = False
        await s.close()


class Outage:
    """A commit hook that, when armed, cuts the database off mid-commit: no new
    connections, every existing one terminated. The batch fails and so does the rebuild."""

    def __init__(self, admin_url: str, dbname: str) -> None:
        self.admin_url, self.dbname, self.armed = admin_url, dbname, False

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        if not self.armed:
            return
        self.armed = False
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                self.dbname,
            )
        finally:
            await admin.close()
        await conn.execute("SELECT 1")  # the batch's own connection is gone

    async def heal(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()

    async def reload(self, conn: asyncpg.Connection) -> None:
        return None


async def test_during_an_outage_reads_refuse_and_the_exchange_heals_by_itself(
    db_url: str, pg: PgServer
) -> None:
    dbname = urlsplit(db_url).path.lstrip("/")
    outage = Outage(pg.url("postgres"), dbname)
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[outage])
    try:
        await setup_market(s)
        outage.armed = True
        with pytest.raises(LedgerUnavailable):
            await place(s, "b1", order("o", Side.BUY, 10_000, 5_000))
        # Memory may still hold the failed batch: nobody may read it.
        assert not s.healthy
        with pytest.raises(LedgerUnavailable):
            await s.committed()
        await outage.heal()
        for _ in range(100):  # no traffic: the clock task retries the rebuild
            await asyncio.sleep(0.05)
            if s.healthy:
                break
        assert s.healthy
        await s.committed()
        assert cash(s, "b1") == (1_000_000, 0)  # the failed order left nothing
        assert s.engine.book(SYM).depth(10).bids == []
        await assert_books_balance(s, db_url)
    finally:
        await outage.heal()
        await s.close()


async def test_a_full_queue_refuses_at_once_and_a_batch_of_orders_whole(db_url: str) -> None:
    """The queue is bounded: beyond it a submit is refused at once (`ExchangeBusy`, 503
    `exchange_busy`), and a request's orders are queued all together or not at all."""
    gate = Gate()
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[gate], queue_max=3)
    try:
        await setup_market(s)

        def bid(coid: str) -> PlaceOrder:
            return order(coid, Side.BUY, 1_000, 5_000)

        gate.armed = True
        first = asyncio.create_task(place(s, "b1", bid("q0")))
        await gate.entered.wait()  # that batch is in its commit, the queue empty behind it
        queued = [asyncio.create_task(place(s, "b1", bid(f"q{i}"))) for i in (1, 2)]
        await asyncio.sleep(0)  # both are queued: room for one more
        with pytest.raises(ExchangeBusy):
            await s.submit_all([PlaceOp("b2", bid("w0")), PlaceOp("b2", bid("w1"))])
        queued.append(asyncio.create_task(place(s, "b2", bid("q3"))))
        await asyncio.sleep(0)  # the queue is full
        with pytest.raises(ExchangeBusy):
            await place(s, "b2", bid("q4"))
        gate.armed = False
        gate.release.set()
        done = [await first] + [await task for task in queued]
        assert [o.status for o in done] == ["open"] * 4
        # Nothing of the refused ones was placed: their ids are new, and they rest now.
        again = await s.submit_all([PlaceOp("b2", bid("w0")), PlaceOp("b2", bid("w1"))])
        assert all(isinstance(r, Done) and r.value.status == "open" for r in again)
        assert len(s.engine.book(SYM).open_orders()) == 6
        await assert_books_balance(s, db_url)
    finally:
        gate.armed = False
        gate.release.set()
        await s.close()


async def test_a_closed_sequencer_says_so_and_refuses_at_once(db_url: str) -> None:
    s = await Sequencer.open(db_url, clock=Clock())
    assert (s.state, s.healthy) == (SequencerState.RUNNING, True)
    await s.close()
    assert (s.state, s.healthy) == (SequencerState.STOPPED, False)
    with pytest.raises(SequencerStopped):
        await s.submit(DepositOp(Deposit(deposit_id="late", account_id="b1", amount=1)))
    (refused,) = await s.submit_all([PlaceOp("b1", order("late", Side.BUY, 1_000, 5_000))])
    assert isinstance(refused, Failed) and refused.error.code == "sequencer_stopped"


async def test_an_account_may_have_at_most_max_open_orders(db_url: str) -> None:
    """Resting orders beyond the cap are refused (`too_many_open_orders`, pinned to their
    client order id), in one batch and across batches and a restart; an IOC order, another
    account and a freed slot are not held back."""
    clock = Clock()
    s = await Sequencer.open(db_url, clock=clock, max_open_orders=3)
    try:
        await setup_market(s)
        outcomes = await s.submit_all(
            [PlaceOp("b1", order(f"r{i}", Side.BUY, LOT, 100)) for i in range(4)]
        )
        views = [o.value for o in outcomes if isinstance(o, Done)]
        assert [v.status for v in views] == ["open", "open", "open", "rejected"]
        assert views[3].reject_reason == "too_many_open_orders"
        assert (await place(s, "b1", order("r4", Side.BUY, LOT, 100))).status == "rejected"
        ioc = await place(s, "b1", order("ioc", Side.BUY, LOT, 100, tif=TimeInForce.IOC))
        assert ioc.reject_reason is None  # cancelled unfilled, but not refused
        assert (await place(s, "b2", order("other", Side.BUY, LOT, 100))).status == "open"
        await s.submit(CancelOp("b1", views[0].order_id))
        assert (await place(s, "b1", order("r5", Side.BUY, LOT, 100))).status == "open"
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=clock, max_open_orders=3)  # counts recovered
    try:
        assert (await place(s, "b1", order("r6", Side.BUY, LOT, 100))).status == "rejected"
        retry = await place(s, "b1", order("r3", Side.BUY, LOT, 100))
        assert retry.reject_reason == "too_many_open_orders"  # a refusal stays one
        fill = await place(s, "p1", order("sell", Side.SELL, LOT, 100))
        assert fill.filled_quantity == LOT  # one of b1's orders filled: a slot is free
        assert (await place(s, "b1", order("r7", Side.BUY, LOT, 100))).status == "open"
    finally:
        await s.close()
