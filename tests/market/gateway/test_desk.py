"""The desk (market.gateway.desk, desk_server, desk_remote) on a real sequencer, PostgreSQL
and an embedded NATS: the reservations of two gateway processes are one book, an ended
call gives back what it did not charge, and a gateway process gone has its reservations
dropped and its late requests refused, the other's untouched."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from ledger.log import MerkleLog
from market.clearing import rules as settlement
from market.gateway import metering, routing
from market.gateway.desk import Desk
from market.gateway.desk_remote import DeskExchange, RemoteDesk
from market.gateway.desk_server import DeskServer, GatewayGone
from market.gateway.errors import InsufficientEntitlement, TooManyInFlight
from market.gateway.journal import ReceiptJournal
from market.gateway.meter import Meter
from market.sequencer import CreateInstrumentOp, DepositOp, ListingOp, PlaceOp, Sequencer
from market.sequencer.ops import Done, GatewayChargeOp
from ops.bus import EmbeddedNats, close, connect
from schemas.market import Side
from schemas.trading import CreateInstrument, Deposit, Listing, PlaceOrder
from tests.market.gateway.gateway_support import MODEL, live_symbol
from tests.market.gateway.test_receipts import ORIGIN, SIGNER
from tests.market.test_gateway_charge import receipt

ENDPOINTS = [routing.Endpoint("p1", "e1", 10)]
WANTS = metering.Demand(prompt_estimate=100, max_tokens=300)  # reserves 400


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    """A live instrument; b1 holds 1,000 tokens of entitlement from p1."""
    s = await Sequencer.open(db_url, hooks=[MerkleLog(SIGNER, ORIGIN)])
    symbol = live_symbol()
    try:
        await s.submit(CreateInstrumentOp(CreateInstrument(
            symbol=symbol, lot_size=1, tick_size=1, price_min=1, price_max=1000,
            provider_fee_bps=250, allow_started=True,
        )))  # fmt: skip
        await s.submit(DepositOp(Deposit(deposit_id="b1", account_id="b1", amount=10**6)))
        await s.submit(ListingOp("p1", Listing(listing_id="l", instrument=symbol, quantity=1000)))
        for account, side in (("p1", Side.SELL), ("b1", Side.BUY)):
            await s.submit(PlaceOp(account, PlaceOrder(
                client_order_id=f"o-{account}", instrument=symbol, side=side, quantity=1000,
                price=3,
            )))  # fmt: skip
        yield s
    finally:
        await s.close()


@pytest.fixture
async def server(
    seq: Sequencer, db_pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[DeskServer]:
    embedded = EmbeddedNats(tmp_path)
    nats = await connect(embedded.url, name="desk-test", token=embedded.token)
    desk = Desk(lambda: seq, db_pool)
    journal = ReceiptJournal(db_pool, 2)
    meter = Meter(lambda: seq, desk.reservations, 1.0, journal.bound(""))
    meter.start()
    served = DeskServer(nats, desk, meter, db_pool, 4, journal)
    await served.start()
    try:
        yield served
    finally:
        await served.close()
        await meter.close()
        await journal.close()
        await close(nats)
        embedded.stop()


def rid() -> str:
    return "rcp_" + secrets.token_hex(12)


async def test_two_gateways_reserve_from_one_book_and_a_gone_ones_calls_are_dropped(
    server: DeskServer, seq: Sequencer
) -> None:
    nats = server.nats
    a, b = RemoteDesk(nats, "gw0-a"), RemoteDesk(nats, "gw1-b")
    symbol = live_symbol()
    call_a, call_b, call_c = rid(), rid(), rid()
    route, plan = await a.reserve(call_a, "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    assert (route.instrument, route.provider, route.available, plan.reserved) == (
        symbol, "p1", 1000, 400)  # fmt: skip
    route, plan = await b.reserve(call_b, "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    assert (route.available, plan.reserved) == (600, 400)  # what the other gateway holds is out
    route, plan = await b.reserve(call_c, "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    assert (route.available, plan.completion_cap) == (200, 100)  # capped by what is left
    with pytest.raises(InsufficientEntitlement):
        await a.reserve(rid(), "b1", "k1", None, MODEL, WANTS, ENDPOINTS)

    # gateway A's process exits: its call's 400 come back, B's calls keep theirs
    await server.gone("gw0-a")
    route, plan = await b.reserve(rid(), "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    assert (route.available, plan.reserved) == (400, 400)
    with pytest.raises(GatewayGone):  # what A sent before it died, arriving late, is refused
        await a.reserve(rid(), "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    late = msgspec.structs.replace(receipt("b1", 50), receipt_id=call_a, instrument=symbol)
    with pytest.raises(GatewayGone):
        await DeskExchange(nats, "gw0-a").submit_all([GatewayChargeOp((late,))])

    # B's call_b ends served and charged 50: what it reserved beyond that comes back at
    # once, the 50 once the charge commits (then the ledger says them)
    done = msgspec.structs.replace(receipt("b1", 50), receipt_id=call_b, instrument=symbol)
    (outcome,) = await DeskExchange(nats, "gw1-b").submit_all([GatewayChargeOp((done,))])
    assert isinstance(outcome, Done)
    ledger = seq.ledger.balance(settlement.entitlement("b1", "p1", symbol)).available
    assert ledger == 950
    # call_c ends unserved: released whole
    b.ended(call_c, ("b1", "p1", symbol), "k1", ("p1", "e1"), 200, 0, served=False)
    assert await b._send()
    route, _ = await b.reserve(rid(), "b1", "k1", None, MODEL, WANTS, ENDPOINTS)
    assert route.available == 950 - 400  # only the call reserved after A's went is held
    assert server.calls == 2


async def test_an_accounts_calls_in_flight_are_counted_for_every_gateway(
    server: DeskServer,
) -> None:
    small = metering.Demand(prompt_estimate=10, max_tokens=10)
    gateways = [RemoteDesk(server.nats, f"gw{n}-x") for n in range(2)]
    calls = [rid() for _ in range(4)]
    for n, call in enumerate(calls):  # the cap is 4, over both gateways
        await gateways[n % 2].reserve(call, "b1", "k1", None, MODEL, small, ENDPOINTS)
    with pytest.raises(TooManyInFlight):
        await gateways[0].reserve(rid(), "b1", "k1", None, MODEL, small, ENDPOINTS)
    gateways[1].ended(calls[1], ("b1", "p1", ""), "k1", ("p1", "e1"), 20, 0, served=False)
    assert await gateways[1]._send()
    await gateways[0].reserve(rid(), "b1", "k1", None, MODEL, small, ENDPOINTS)


async def test_a_keys_budget_is_one_budget_over_every_gateway(server: DeskServer) -> None:
    a, b = RemoteDesk(server.nats, "gw0-k"), RemoteDesk(server.nats, "gw1-k")
    _, plan = await a.reserve(rid(), "b1", "k2", 500, MODEL, WANTS, ENDPOINTS)
    assert plan.reserved == 400
    with pytest.raises(InsufficientEntitlement, match="this key's budget"):
        await b.reserve(rid(), "b1", "k2", 500, MODEL, WANTS, ENDPOINTS)  # 100 left < 101
    _, other = await b.reserve(rid(), "b1", "k3", 500, MODEL, WANTS, ENDPOINTS)
    assert other.reserved == 400  # another key's budget: the entitlement still has 600
