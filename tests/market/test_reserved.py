"""Reports and vouchers leave the gateway's reservations to its charges, through the
sequencer on a real PostgreSQL: the tokens a call in flight reserved, or a call ended
charged and not yet committed, are not free for a provider's report or a buyer's voucher
(422 `entitlement_exceeded`), so the call's charge is never refused for them; a charge
refused all the same is logged, naming its group and tokens."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from market.gateway.meter import Reservations
from market.sequencer import EntitlementExceeded, Sequencer
from market.sequencer.ops import GatewayChargeOp
from tests.market.test_delivery import SYM, Clock, cash, ent, open_market, report, trade
from tests.market.test_gateway_charge import receipt
from tests.market.test_vouchers import redeem, voucher

GROUP = ("b1", "p1", SYM)
BOUGHT = 10_000


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url, Clock(), dispute_s=0)
    await trade(s, "b1", "p1", BOUGHT, 3_000, "1")
    yield s
    await s.close()


@pytest.fixture
def reservations(seq: Sequencer) -> Reservations:
    """The gateway's desk attached to the sequencer (as `desk.watch_deliveries` does)."""
    r = Reservations()
    seq.reserved = r.reserved
    return r


async def claim(s: Sequencer, how: str, tokens: int, tag: str) -> None:
    if how == "report":
        await report(s, "p1", f"r{tag}", "b1", tokens)
    else:
        await redeem(s, voucher(tokens, int(tag)))


@pytest.mark.parametrize("how", ["report", "voucher"])
async def test_a_claim_may_not_take_what_a_call_in_flight_reserved(
    seq: Sequencer, reservations: Reservations, how: str
) -> None:
    reservations.reserve(GROUP, "ik_1", 500)  # a call streaming
    with pytest.raises(EntitlementExceeded, match="500 of them reserved by gateway calls"):
        await claim(seq, how, BOUGHT - 499, "1")
    assert ent(seq, "b1", "p1") == BOUGHT  # refused whole
    await claim(seq, how, BOUGHT - 500, "1")  # what the call left free
    reservations.finish(GROUP, "ik_1", 500, 420)  # it ended: 420 tokens, charge on the way
    paid_before = cash(seq, "p1")
    (paid,) = await seq.submit(GatewayChargeOp((receipt("b1", 420),)))
    assert paid.refused is None and paid.transaction_id is not None
    assert cash(seq, "p1")[0] > paid_before[0]  # the provider is paid for what it served


@pytest.mark.parametrize("how", ["report", "voucher"])
async def test_a_charge_not_committed_yet_is_still_reserved(
    seq: Sequencer, reservations: Reservations, how: str
) -> None:
    reservations.reserve(GROUP, "ik_1", 500)
    reservations.finish(GROUP, "ik_1", 500, 120)  # ended, charged 120, not committed
    with pytest.raises(EntitlementExceeded, match="120 of them reserved"):
        await claim(seq, how, BOUGHT - 119, "1")
    reservations.settled(GROUP, 120)  # committed elsewhere: the ledger says it now
    await claim(seq, how, BOUGHT - 120, "1")


async def test_without_a_desk_nothing_is_reserved(seq: Sequencer) -> None:
    await claim(seq, "voucher", BOUGHT, "1")
    assert ent(seq, "b1", "p1") == 0


async def test_a_refused_charge_is_logged_with_its_group_and_tokens(
    seq: Sequencer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="market.sequencer.delivery"):
        (over,) = await seq.submit(GatewayChargeOp((receipt("b1", BOUGHT + 1),)))
        (ok,) = await seq.submit(GatewayChargeOp((receipt("b1", 10),)))
    assert over.refused == "entitlement_exceeded" and ok.refused is None
    (record,) = [r for r in caplog.records if r.name == "market.sequencer.delivery"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "gateway charge refused" in message and "entitlement_exceeded" in message
    assert f"{BOUGHT + 1} tokens" in message and "1 receipt" in message
    for name in ("b1", "p1", SYM):
        assert name in message
    assert "ik_" not in message  # no key ids (nor anything of a key) in the log
