"""Settlement waits for the gateway's calls in flight, on a real PostgreSQL: a metered call
routed before its instrument's window ended, still streaming when the instrument is due
to settle, is charged and pays its provider; the instrument settles once it is, and at
the latest `settle_wait_ms` past its settlement time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
import pytest
from litestar.datastructures import State

from market.clearing import rules as settlement
from market.gateway.desk import desk_starting, watch_deliveries
from market.gateway.lifespan import gateway_lifespan
from market.gateway.meter import Reservations
from market.gateway.service import GatewayConfig
from market.sequencer import Sequencer, TickOp
from market.sequencer.batch import nothing_delivering, nothing_reserved
from market.sequencer.ops import GatewayChargeOp, GatewayProgressOp
from tests.market.gateway.gateway_support import RECEIPTS
from tests.market.gateway.test_progress import mark
from tests.market.test_delivery import SYM, WINDOW_END, Clock, open_market, trade
from tests.market.test_gateway_charge import receipt

GROUP = ("b1", "p1", SYM)
WAIT_MS = 60_000


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def seq(db_url: str, clock: Clock) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url, clock)  # grace 0: due to settle at the window's end
    s.settle_wait_ms = WAIT_MS
    await trade(s, "b1", "p1", 10_000, 3_000, "1")
    yield s
    await s.close()


def provider_cash(s: Sequencer) -> int:
    return s.ledger.balance(settlement.cash("p1", "USD")).total


async def tick_at(s: Sequencer, clock: Clock, time_ms: int) -> bool:
    """Run a batch at `time_ms`; whether the instrument is settled after it."""
    clock.now = time_ms
    await s.submit(TickOp())
    return s.market.instruments[SYM].settlement is not None


async def test_a_call_streaming_at_the_windows_end_is_charged_and_paid(
    seq: Sequencer, clock: Clock
) -> None:
    reservations = Reservations()
    seq.delivering = reservations.delivering
    reservations.reserve(GROUP, "ik_1", 500)  # routed before the window ended
    before = provider_cash(seq)
    assert not await tick_at(seq, clock, WINDOW_END + 1)  # closed to trading, not settled
    assert seq.market.instruments[SYM].trading_closed
    assert not await tick_at(seq, clock, WINDOW_END + 5_000)  # still streaming
    reservations.finish(GROUP, "ik_1", 500, 120)  # it ended: 120 tokens, charge on the way
    assert not await tick_at(seq, clock, WINDOW_END + 7_000)
    (paid,) = await seq.submit(GatewayChargeOp((receipt("b1", 120),)))
    assert paid.refused is None and paid.transaction_id is not None
    assert provider_cash(seq) > before
    reservations.settled(GROUP, 120)
    assert await tick_at(seq, clock, WINDOW_END + 9_000)  # nothing in flight: settles
    view = seq.market.instruments[SYM].settlement
    assert view is not None and view.entitlement_burned == 10_000 - 120


async def test_settlement_waits_at_most_settle_wait_ms(seq: Sequencer, clock: Clock) -> None:
    reservations = Reservations()
    seq.delivering = reservations.delivering
    reservations.reserve(GROUP, "ik_1", 500)  # a call that never ends (or a lost end)
    assert not await tick_at(seq, clock, WINDOW_END + WAIT_MS - 1)
    assert await tick_at(seq, clock, WINDOW_END + WAIT_MS)
    (late,) = await seq.submit(GatewayChargeOp((receipt("b1", 50),)))
    assert late.refused == "instrument_settled"


async def test_without_calls_in_flight_it_settles_at_its_time(seq: Sequencer, clock: Clock) -> None:
    seq.delivering = Reservations().delivering
    assert await tick_at(seq, clock, WINDOW_END)


async def test_the_desk_is_watched_by_the_sequencer_now_and_after_a_reopen(
    seq: Sequencer,
) -> None:
    """`watch_deliveries` sets the running sequencer's hooks (what is in flight, what is
    reserved) and leaves them on the app's state, where `ops.exchange` reads them for
    each sequencer it opens."""

    class FakeDesk:
        reservations = Reservations()

    state = State({"sequencer": seq})
    watch_deliveries(state, FakeDesk())  # type: ignore[arg-type]
    FakeDesk.reservations.reserve(GROUP, "ik_1", 10)
    assert seq.delivering(SYM) and state.delivering(SYM)
    assert not seq.delivering("other/2026-12-01T00Z/1h")
    assert seq.reserved(*GROUP) == state.reserved(*GROUP) == 10  # reports may not use them
    assert seq.reserved("b2", "p1", SYM) == 0
    watch_deliveries(state, None)
    assert seq.delivering is nothing_delivering and state.delivering is nothing_delivering
    assert seq.reserved is nothing_reserved and state.reserved is nothing_reserved


async def test_a_restart_past_the_settlement_pays_the_calls_a_crash_cut(
    seq: Sequencer, clock: Clock, db_pool: asyncpg.Pool
) -> None:
    """The exchange crashed with a call streaming and restarts after the instrument's
    settlement time: the gateway's start-up owes the call's charge (by its last progress
    mark) before anything can settle, so the provider is paid and the instrument settles
    after it. Until the desk is attached the sequencer waits (`desk_starting`)."""
    clock.now = WINDOW_END - 60_000
    await seq.submit(GatewayProgressOp((mark(6),)))  # a call streaming, then the crash
    clock.now = WINDOW_END + 1_000  # the restart: the outage spanned the settlement time
    seq.delivering = desk_starting  # as `tokex serve` opens it (ops.cli, ops.exchange)
    assert not await tick_at(seq, clock, WINDOW_END + 1_000)
    app = SimpleNamespace(state=State({"pool": db_pool, "sequencer": seq}))
    async with gateway_lifespan(GatewayConfig(allow_hosts=frozenset()))(app):
        await app.state.gateway.meter.written()
        await app.state.gateway.meter.flush()  # its charge, after its receipt's journal commit
        (paid,) = await db_pool.fetch(
            f"SELECT tokens, charged_in AS transaction_id FROM {RECEIPTS}"
        )
        assert paid["tokens"] == 6 and paid["transaction_id"] is not None
    assert await tick_at(seq, clock, WINDOW_END + 3_000)
    view = seq.market.instruments[SYM].settlement
    assert view is not None and view.entitlement_burned == 10_000 - 6
