"""End to end: a real `tokex serve` on the embedded PostgreSQL, driven by TokexClient.

Two providers list capacity and sell, three buyers deposit and buy; balances,
holds and fills are checked to the unit; then the security rules and a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import OrderType, Side, StpMode, TimeInForce
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"  # far ahead of the wall clock: its window closes at its end


@dataclass
class Market:
    server: ServerProcess
    operator: TokexClient
    providers: list[TokexClient]
    buyers: list[TokexClient]
    ids: dict[str, str]


@pytest.fixture
def server_process(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose per-key rate limit lets one client send 200 requests at once."""
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        env={"TOKEX_RATE_LIMIT": "10000", "TOKEX_RATE_BURST": "10000"},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def market(db_url: str, server_process: ServerProcess) -> AsyncIterator[Market]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(
            symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
            maker_fee_bps=10, taker_fee_bps=20,
        )
    )  # fmt: skip
    ids: dict[str, str] = {}
    providers, buyers = [], []
    for i in range(2):
        created = await operator.create_account(Role.PROVIDER, f"provider-{i}")
        client = operator.as_account(created)
        ids[f"p{i}"] = created.account_id
        await client.list_capacity("cap-1", SYM, 100_000)
        providers.append(client)
    for i in range(3):
        created = await operator.create_account(Role.BUYER, f"buyer-{i}")
        ids[f"b{i}"] = created.account_id
        await operator.deposit(f"dep-{i}", created.account_id, 1_000_000)
        buyers.append(operator.as_account(created))
    yield Market(server_process, operator, providers, buyers, ids)
    await operator.aclose()


def order(coid: str, side: Side, qty: int, price: int | None, **kw: object) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid,
        instrument=SYM,
        side=side,
        quantity=qty,
        price=price,
        **kw,  # type: ignore[arg-type]
    )


async def cash(client: TokexClient) -> tuple[int, int]:
    for b in await client.balances():
        if b.kind == "cash":
            return b.available, b.held
    return 0, 0


async def capacity(client: TokexClient) -> tuple[int, int]:
    for b in await client.balances():
        if b.kind == "capacity":
            return b.available, b.held
    return 0, 0


async def test_trading_session_balances_holds_and_fills_to_the_unit(market: Market) -> None:
    p0, p1 = market.providers
    b0, b1, b2 = market.buyers
    # Providers rest asks at 5,000 and 5,500.
    s0 = await p0.place_order(order("s0", Side.SELL, 30_000, 5_000))
    s1 = await p1.place_order(order("s1", Side.SELL, 30_000, 5_500))
    assert await capacity(p0) == (70_000, 30_000)
    # b0 crosses both levels: 30,000 at 5,000 then 10,000 at 5,500 (taker, 20 bps).
    t = await b0.place_order(order("t", Side.BUY, 40_000, 5_500))
    assert t.status == "filled"
    assert [(f.price, f.quantity) for f in t.fills] == [(5_000, 30_000), (5_500, 10_000)]
    notional = 30 * 5_000 + 10 * 5_500  # 205,000
    fee = 150_000 * 20 // 10_000 + 55_000 * 20 // 10_000  # 300 + 110
    assert await cash(b0) == (1_000_000 - notional - fee, 0)
    # p0's ask is done; p1 keeps 20,000 on the book and on hold.
    assert (await p0.order(s0.order_id)).status == "filled"
    assert (await p1.order(s1.order_id)).open_quantity == 20_000
    assert await capacity(p1) == (70_000, 20_000)
    # b1 rests a bid (maker), p1 amends down into it? No: amends never cross. p1 sells into it.
    bid = await b1.place_order(order("bid", Side.BUY, 10_000, 5_200))
    assert await cash(b1) == (1_000_000 - 52_104, 52_104)  # 10 lots * 5,200 + 20 bps max fee
    sold = await p1.place_order(order("s2", Side.SELL, 5_000, 5_200))
    assert sold.status == "filled" and sold.fills[0].role == "taker"
    # b1 was maker: 5 lots at 5,200 = 26,000 + 10 bps = 26; the 5 lots left hold their
    # reservation, 26,000 + 52 (20 bps): the taker rate it did not pay is released.
    assert await cash(b1) == (1_000_000 - 26_026 - 26_052, 26_052)
    # Partial then cancel: the rest of b1's hold is released.
    cancelled = await b1.cancel_order(bid.order_id)
    assert cancelled.status == "cancelled" and cancelled.filled_quantity == 5_000
    assert await cash(b1) == (1_000_000 - 26_026, 0)
    # IOC and FOK
    ioc = await b2.place_order(order("ioc", Side.BUY, 30_000, 5_500, tif=TimeInForce.IOC))
    assert (ioc.filled_quantity, ioc.cancelled_quantity) == (20_000, 10_000)
    with pytest.raises(TokexApiError) as fok:
        await b2.place_order(order("fok", Side.BUY, 1_000, 5_500, tif=TimeInForce.FOK))
    assert fok.value.status == 422 and fok.value.code == "fok_unfillable"
    # Amend: a resting order shrinks and its hold with it.
    rest = await b2.place_order(order("rest", Side.BUY, 10_000, 4_000))
    amended = await b2.amend_order(rest.order_id, quantity=2_000)
    assert amended.open_quantity == 2_000
    assert (await cash(b2))[1] == 2 * 4_000 + 16
    # Fills as each account sees them.
    assert [(f.role, f.side) for f in await b0.fills()] == [("taker", Side.BUY)] * 2
    # The book over REST.
    book = await b2.book(SYM)
    assert [(lv.price, lv.quantity) for lv in book.bids] == [(4_000, 2_000)]
    assert book.asks == []
    trades = await b2.trades(SYM)
    assert sum(t.quantity for t in trades) == 30_000 + 10_000 + 5_000 + 20_000


async def test_a_resting_buy_holds_only_what_its_rest_needs_and_frees_the_rest(
    market: Market,
) -> None:
    """README: a buy holds notional at its limit plus the larger fee. Filled far below its
    limit, the buy keeps on hold what its open lots need, and the rest can be withdrawn."""
    p0 = market.providers[0]
    b0 = market.buyers[0]
    await p0.place_order(order("cheap", Side.SELL, 99_000, 5))
    o = await b0.place_order(order("big", Side.BUY, 100_000, 9_000))
    assert (o.filled_quantity, o.open_quantity) == (99_000, 1_000)
    # paid 99 lots * 5 = 495 (the 20 bps fee floors to 0); one lot at 9,000 + 18 held
    assert await cash(b0) == (1_000_000 - 495 - 9_018, 9_018)
    w = await b0.withdraw("all-free", 1_000_000 - 495 - 9_018)
    assert w.status == "pending"
    assert await cash(b0) == (0, 9_018 + 990_487)
    assert (await b0.order(o.order_id)).open_quantity == 1_000


async def test_self_trade_prevention_over_the_api(market: Market) -> None:
    """A provider buying back capacity never trades with its own offer."""
    p0, p1 = market.providers
    await market.operator.deposit("dep-p0", market.ids["p0"], 1_000_000)
    own_ask = await p0.place_order(order("ask", Side.SELL, 5_000, 5_000))
    other_ask = await p1.place_order(order("ask", Side.SELL, 5_000, 5_100))
    # cancel_oldest: p0's own resting ask is cancelled, the bid goes on to p1's ask.
    bid = await p0.place_order(order("bid", Side.BUY, 5_000, 5_100, stp=StpMode.CANCEL_OLDEST))
    assert [(f.price, f.quantity) for f in bid.fills] == [(5_100, 5_000)]
    assert (await p0.order(own_ask.order_id)).status == "cancelled"
    assert (await p1.order(other_ask.order_id)).status == "filled"
    assert await capacity(p0) == (100_000, 0)  # the cancelled ask's capacity came back
    # cancel_newest: the incoming order is cancelled, the resting one stays.
    rest = await p0.place_order(order("ask2", Side.SELL, 1_000, 6_000))
    newest = await p0.place_order(
        order("bid2", Side.BUY, 1_000, 6_000, stp=StpMode.CANCEL_NEWEST, tif=TimeInForce.IOC)
    )
    assert newest.filled_quantity == 0 and newest.status == "cancelled"
    assert (await p0.order(rest.order_id)).status == "open"
    # A buyer still cannot sell.
    with pytest.raises(TokexApiError) as wrong_side:
        await market.buyers[0].place_order(order("x", Side.SELL, 1_000, 5_000))
    assert wrong_side.value.status == 403


async def test_an_account_sees_and_touches_only_its_own_orders(market: Market) -> None:
    b0, b1 = market.buyers[0], market.buyers[1]
    mine = await b0.place_order(order("mine", Side.BUY, 1_000, 4_000))
    for call in (b1.order(mine.order_id), b1.cancel_order(mine.order_id),
                 b1.amend_order(mine.order_id, quantity=1_000)):  # fmt: skip
        with pytest.raises(TokexApiError) as err:
            await call
        assert err.value.status == 404
    assert [o.order_id for o in await b1.orders()] == []
    assert (await b0.order(mine.order_id)).status == "open"


async def test_a_provider_cannot_sell_capacity_it_has_not_listed(market: Market) -> None:
    with pytest.raises(TokexApiError) as err:
        await market.providers[0].place_order(order("big", Side.SELL, 101_000, 5_000))
    assert (err.value.status, err.value.code) == (422, "insufficient_capacity")
    # A buyer cannot list capacity, nor place a sell.
    with pytest.raises(TokexApiError) as err:
        await market.buyers[0].list_capacity("l", SYM, 1_000)
    assert err.value.status == 403


async def test_200_concurrent_orders_over_one_balance(market: Market) -> None:
    """Each reserves 10 lots * 5,000 + 20 bps = 50,100: 19 fit in 1,000,000. Sent as 200
    concurrent requests (one key's default rate limit is a burst of 100, so this test's
    server allows more), then again as four concurrent batches of 50 by another buyer."""
    b0, b1 = market.buyers[0], market.buyers[1]
    results = await asyncio.gather(
        *(b0.place_order(order(f"c{i}", Side.BUY, 10_000, 5_000)) for i in range(200)),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, TokexApiError)]
    assert len(accepted) == 19 and len(refused) == 181
    assert {r.code for r in refused} == {"insufficient_funds"}
    assert await cash(b0) == (1_000_000 - 19 * 50_100, 19 * 50_100)
    assert len(await b0.orders()) == 19

    batches = await asyncio.gather(
        *(
            b1.place_orders([order(f"c{k}-{i}", Side.BUY, 10_000, 5_000) for i in range(50)])
            for k in range(4)
        )
    )
    in_batches = [r for batch in batches for r in batch]
    assert sum(r.order is not None for r in in_batches) == 19
    assert {r.code for r in in_batches if r.order is None} == {"insufficient_funds"}
    assert await cash(b1) == (1_000_000 - 19 * 50_100, 19 * 50_100)


async def test_a_batch_answers_each_order_on_its_own_in_order(market: Market) -> None:
    p0 = market.providers[0]  # a provider may sell and buy
    b0 = market.buyers[0]
    orders = [
        order("ok-1", Side.BUY, 1_000, 4_000),
        order("dup", Side.BUY, 1_000, 4_000),
        order("dup", Side.BUY, 2_000, 4_000),  # the same id for another order
        order("ok-2", Side.BUY, 1_000, 4_005),
        order("too-big", Side.BUY, 10**9, 4_000),
    ]
    sell = order("sell", Side.SELL, 1_000, 6_000)  # a buyer may not sell: refused in place
    first = await b0.place_orders([*orders[:2], sell, *orders[2:]])
    assert [r.client_order_id for r in first] == ["ok-1", "dup", "sell", "dup", "ok-2", "too-big"]
    assert [r.code for r in first] == [
        None, None, "forbidden_side", "idempotency_conflict", None, "insufficient_funds",
    ]  # fmt: skip
    assert all(r.message for r in first if r.code is not None)
    placed = {r.client_order_id: r.order.order_id for r in first if r.order is not None}
    assert len(set(placed.values())) == 3
    # The whole batch again: the same orders, the same refusals.
    again = await b0.place_orders(orders)
    assert [r.order.order_id if r.order else r.code for r in again] == [
        placed["ok-1"], placed["dup"], "idempotency_conflict", placed["ok-2"],
        "insufficient_funds",
    ]  # fmt: skip
    # A provider's batch may sell.
    sold = await p0.place_orders([order("ask-b", Side.SELL, 1_000, 6_000)])
    assert sold[0].order is not None and sold[0].order.status == "open"


async def test_client_order_id_idempotency_survives_a_crash(market: Market) -> None:
    b0, p0 = market.buyers[0], market.providers[0]
    placed = await b0.place_order(order("keep", Side.BUY, 10_000, 4_000))
    await p0.place_order(order("ask", Side.SELL, 5_000, 4_000))
    before = (await cash(b0), await b0.orders(), await b0.fills())
    market.server.kill()  # SIGKILL: no shutdown code runs
    market.server.start()
    after = (await cash(b0), await b0.orders(), await b0.fills())
    assert after == before
    again = await b0.place_order(order("keep", Side.BUY, 10_000, 4_000))
    assert again.order_id == placed.order_id and again.filled_quantity == 5_000
    # The restored book still trades.
    sold = await p0.place_order(order("ask2", Side.SELL, 5_000, 4_000))
    assert sold.status == "filled"
    assert (await b0.order(placed.order_id)).status == "filled"


async def test_market_orders_are_protected_and_never_rest(market: Market) -> None:
    p0, b0 = market.providers[0], market.buyers[0]
    await p0.place_order(order("a1", Side.SELL, 2_000, 5_000))
    await p0.place_order(order("a2", Side.SELL, 2_000, 9_000))
    m = await b0.place_order(order("m", Side.BUY, 5_000, 6_000, order_type=OrderType.MARKET))
    assert (m.filled_quantity, m.cancelled_quantity) == (2_000, 3_000)  # capped at 6,000
    assert (await cash(b0))[1] == 0


async def test_a_full_queue_answers_503_exchange_busy_and_places_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """With room for one op (TOKEX_QUEUE_MAX=1), a batch of two orders can never be
    queued whole: 503 `exchange_busy` with Retry-After, and none of it is placed."""
    proc = ServerProcess(database_url=db_url, data_dir=tmp_path, env={"TOKEX_QUEUE_MAX": "1"})
    proc.start()
    operator = await operator_client(db_url, proc.base_url)
    try:
        await operator.create_instrument(
            CreateInstrument(
                symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
            )
        )  # fmt: skip
        created = await operator.create_account(Role.BUYER, "buyer")
        await operator.deposit("dep", created.account_id, 1_000_000)
        buyer = operator.as_account(created)
        bids = [order("a", Side.BUY, 1000, 5_000), order("b", Side.BUY, 1000, 5_000)]
        with pytest.raises(TokexApiError) as busy:
            await buyer.place_orders(bids)
        assert (busy.value.status, busy.value.code) == (503, "exchange_busy")
        assert busy.value.retry_after == 1
        assert await buyer.orders(status="all") == []
        assert (await buyer.place_order(bids[0])).status == "open"  # one at a time fits
    finally:
        await operator.aclose()
        proc.stop()


async def test_a_window_that_has_ended_or_started_is_refused_unless_the_operator_says_so(
    market: Market,
) -> None:
    """An instrument whose window is over is refused `window_over` (it would settle at
    once); one whose window is running is refused `window_started` unless the request
    says `allow_started: true`, which lists it open."""
    op = market.operator
    over = "llama-3.1-70b/2020-01-01T00Z/1h"
    with pytest.raises(TokexApiError) as refused:
        await op.create_instrument(CreateInstrument(
            symbol=over, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
            allow_started=True,
        ))  # fmt: skip
    assert (refused.value.status, refused.value.code) == (422, "window_over")
    hour = int(time.time()) // 3600 * 3600
    running = f"llama-3.1-70b/{time.strftime('%Y-%m-%dT%HZ', time.gmtime(hour))}/2h"
    terms = CreateInstrument(
        symbol=running, lot_size=1000, tick_size=5, price_min=5, price_max=100_000
    )
    with pytest.raises(TokexApiError) as refused:
        await op.create_instrument(terms)
    assert (refused.value.status, refused.value.code) == (422, "window_started")
    listed = await op.create_instrument(msgspec.structs.replace(terms, allow_started=True))
    assert (listed.symbol, listed.state) == (running, "open")
    assert {i.symbol for i in await op.instruments()} == {SYM, running}


async def test_an_order_is_found_and_cancelled_by_its_client_order_id(market: Market) -> None:
    """`GET` and `DELETE /v1/orders/by-client-id/{id}` act on the caller's own order by the
    id the client chose (percent-encoded: this one holds a slash and a percent sign); the
    fill views carry it too; another account's id is not found."""
    p0 = market.providers[0]
    b0, b1 = market.buyers[:2]
    coid = "bot/7%a"
    placed = await b0.place_order(order(coid, Side.BUY, 10_000, 4_000))
    found = await b0.order_by_client_id(coid)
    assert (found.order_id, found.client_order_id, found.status) == (placed.order_id, coid, "open")
    with pytest.raises(TokexApiError) as other:
        await b1.order_by_client_id(coid)
    assert (other.value.status, other.value.code) == (404, "unknown_order")
    with pytest.raises(TokexApiError) as other:
        await b1.cancel_by_client_id(coid)
    assert (other.value.status, other.value.code) == (404, "unknown_order")
    sold = await p0.place_order(order("ask/1", Side.SELL, 4_000, 4_000))
    assert [f.client_order_id for f in sold.fills] == ["ask/1"]
    assert [f.client_order_id for f in await b0.fills()] == [coid]
    assert [f.client_order_id for f in await p0.fills()] == ["ask/1"]
    cancelled = await b0.cancel_by_client_id(coid)
    assert (cancelled.order_id, cancelled.status) == (placed.order_id, "cancelled")
    assert cancelled.filled_quantity == 4_000
    assert (await b0.order_by_client_id(coid)).status == "cancelled"


async def test_unknown_query_parameters_are_refused_by_the_name_sent(market: Market) -> None:
    """A query parameter a route does not take is a 400 naming it (it used to be ignored:
    `?client_order_id=x` listed every order); a bad value names the parameter as sent."""
    b0 = market.buyers[0]
    with pytest.raises(TokexApiError) as unknown:
        await b0.request("GET", "/v1/orders", params={"client_order_id": "x"})
    assert (unknown.value.status, unknown.value.code) == (400, "unknown_query_parameter")
    assert "'client_order_id'" in unknown.value.message
    page = await b0.request("GET", "/v1/orders", params={"status": "all", "limit": 5})
    assert page["items"] == []
    with pytest.raises(TokexApiError) as bad:
        await b0.request("GET", "/v1/reports/statement", params={"format": "pdf"})
    assert (bad.value.status, bad.value.code) == (400, "invalid_request")
    assert "format" in bad.value.message and "fmt" not in bad.value.message


async def test_the_trades_of_an_unknown_instrument_are_404_as_its_book_is(
    market: Market,
) -> None:
    """`GET /v1/trades` of a symbol the exchange never listed is 404 `unknown_instrument`,
    as `GET /v1/book` is (it used to be 200 and an empty page, as for a quiet instrument);
    a listed instrument with no trades yet is an empty page, even past its last cursor."""
    b0 = market.buyers[0]
    for path in ("/v1/trades", "/v1/book"):
        with pytest.raises(TokexApiError) as unknown:
            await b0.request("GET", path, params={"instrument": "nope/2030-12-01T00Z/1h"})
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_instrument"), path
    assert await b0.trades(SYM) == []


async def test_server_time_and_rate_limit_headers(market: Market) -> None:
    """`GET /v1/time` is the clock signatures are checked against; every signed answer
    says the key's rate-limit bucket: its size, what is left, and when it is full."""
    b0 = market.buyers[0]
    before = int(time.time() * 1000)
    server_ms = await b0.server_time_ms()
    assert before - 1_000 <= server_ms <= int(time.time() * 1000) + 1_000
    first = await b0._http.send(b0.build_request("GET", "/v1/balances"))
    second = await b0._http.send(b0.build_request("GET", "/v1/orders/999999"))
    assert first.status_code == 200 and second.status_code == 404
    assert first.headers["x-ratelimit-limit"] == second.headers["x-ratelimit-limit"] == "10000"
    left = int(first.headers["x-ratelimit-remaining"])
    assert int(second.headers["x-ratelimit-remaining"]) in (left - 1, left)
    assert int(first.headers["x-ratelimit-reset"]) >= 0


async def test_times_on_the_wire_are_ms_and_the_old_order_name_still_places(
    market: Market,
) -> None:
    """Answers name times `_ms` (window seconds `_s`); a GTD order sent with the old
    `expire_at` is placed, and its retry under the new name is the same order."""
    b0 = market.buyers[0]
    expire_ms = int(time.time() * 1000) + 3_600_000
    body = {"client_order_id": "gtd-old", "instrument": SYM, "side": "buy", "quantity": 1000,
            "price": 100, "tif": "gtd"}  # fmt: skip
    placed = await b0.request("POST", "/v1/orders", json={**body, "expire_at": expire_ms})
    assert placed["status"] == "open" and placed["created_at_ms"] >= expire_ms - 3_700_000
    assert "created_at" not in placed and "updated_at" not in placed
    again = await b0.request("POST", "/v1/orders", json={**body, "expire_at_ms": expire_ms})
    assert again["order_id"] == placed["order_id"]
    with pytest.raises(TokexApiError) as both:
        await b0.request(
            "POST", "/v1/orders", json={**body, "expire_at": expire_ms, "expire_at_ms": 1}
        )
    assert (both.value.status, both.value.code) == (400, "invalid_request")
    assert "deprecated name of `expire_at_ms`" in both.value.message
    listed = await b0.request("GET", f"/v1/instruments/{SYM}")
    assert {"window_start_s", "duration_s", "delivery_grace_s"} <= listed.keys()
    assert "window_start" not in listed


async def test_a_cursor_is_refused_by_every_list_but_its_own(market: Market) -> None:
    """Orders, trades and receipts all page by one integer: a cursor of one of them used on
    another is 400 `invalid_cursor`, not a page of the wrong list."""
    p0, b0 = market.providers[0], market.buyers[0]
    for i in range(3):
        await p0.place_order(order(f"ask-{i}", Side.SELL, 1_000, 5_000))
        await b0.place_order(order(f"buy-{i}", Side.BUY, 1_000, 5_000, tif=TimeInForce.IOC))

    async def get(path: str, cursor: str | None = None, **params: object) -> dict[str, Any]:
        query = {**params, "limit": 1, **({"cursor": cursor} if cursor else {})}
        return await b0.request("GET", path, params=query)

    lists = {
        "/v1/orders": {"status": "all"}, "/v1/trades": {"instrument": SYM}, "/v1/fills": {},
    }  # fmt: skip
    cursors: dict[str, list[str]] = {}
    for path, params in lists.items():
        first = await get(path, **params)
        second = await get(path, first["next_cursor"], **params)  # its own cursor still pages
        assert len(first["items"]) == len(second["items"]) == 1
        assert first["items"] != second["items"]
        back = await get(path, second["prev_cursor"], **params)
        assert back["items"] == first["items"]
        cursors[path] = [first["next_cursor"], first["prev_cursor"]]
    for made_by, made in cursors.items():
        for path in [*lists, "/v1/receipts"]:
            if path == made_by:
                continue
            for cursor in made:
                with pytest.raises(TokexApiError) as foreign:
                    await get(path, cursor, **lists.get(path, {}))
                assert (foreign.value.status, foreign.value.code) == (400, "invalid_cursor")


async def test_the_client_finds_and_cancels_orders_whose_id_is_a_dot_segment(
    market: Market,
) -> None:
    """ "." and ".." are valid client order ids; the client sends them as path segments,
    not as the relative steps httpx would otherwise resolve before signing."""
    buyer = market.buyers[0]
    for coid in ("..", "."):
        placed = await buyer.place_order(order(coid, Side.BUY, 1000, 4000))
        found = await buyer.order_by_client_id(coid)
        assert found.order_id == placed.order_id
        cancelled = await buyer.cancel_by_client_id(coid)
        assert (cancelled.order_id, cancelled.status) == (placed.order_id, "cancelled")
