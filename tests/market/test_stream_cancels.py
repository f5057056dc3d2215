"""market.stream_cancels: a cancel on disconnect the sequencer refused (a database outage)
is retried until it is taken, drained at shutdown, and bounded."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ledger.errors import LedgerUnavailable
from market.sequencer.ops import CancelAllOp
from market.stream_cancels import OwedCancels
from schemas.errors import DomainError
from schemas.trading import CancelledOrders


class OutageSequencer:
    """Refuses every submit (503, as in a database outage) until `down` is cleared;
    records the cancels it took."""

    def __init__(self, refusals: int = 1_000_000, error: DomainError | None = None) -> None:
        self.refusals = refusals
        self.error = error or LedgerUnavailable("the ledger's database is unreachable")
        self.tries = 0
        self.taken: list[str] = []
        self.instruments: list[str | None] = []

    async def submit(self, op: Any) -> CancelledOrders:
        assert isinstance(op, CancelAllOp)
        self.tries += 1
        if self.tries <= self.refusals:
            raise self.error
        self.taken.append(op.account_id)
        self.instruments.append(op.instrument)
        return CancelledOrders(cancelled=[])


async def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_an_owed_cancel_is_retried_until_the_sequencer_takes_it() -> None:
    owed = OwedCancels(first_delay_s=0.01, max_delay_s=0.04)
    sequencer = OutageSequencer(refusals=5)
    assert owed.owe(lambda: sequencer, "alice") and "alice" in owed
    assert owed.owe(lambda: sequencer, "alice")  # owed once, however often
    await wait_for(lambda: sequencer.taken)
    assert sequencer.taken == ["alice"] and sequencer.tries == 6
    assert sequencer.instruments == [None]  # every instrument's orders
    assert len(owed) == 0
    await asyncio.sleep(0.1)
    assert sequencer.tries == 6  # taken: no more tries


async def test_a_refusal_that_is_an_answer_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    owed = OwedCancels(first_delay_s=0.01)
    sequencer = OutageSequencer(refusals=1, error=DomainError("no such account"))
    owed.owe(lambda: sequencer, "alice")
    await wait_for(lambda: len(owed) == 0)
    assert sequencer.tries == 1
    assert any(r.levelno == logging.ERROR and "refused" in r.getMessage() for r in caplog.records)


async def test_shutdown_gives_each_owed_cancel_a_few_more_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owed = OwedCancels(first_delay_s=60)  # the retrying never comes round before shutdown
    back = OutageSequencer(refusals=2)  # taken at the drain's third try
    away = OutageSequencer()  # still away: lost, and said so
    owed.owe(lambda: back, "alice")
    owed.owe(lambda: away, "bob")
    await owed.drain(tries=3, delay_s=0.01)
    assert back.taken == ["alice"] and (away.tries, away.taken) == (3, [])
    assert len(owed) == 0
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("bob" in m and "stay open" in m for m in lost), lost


async def test_past_its_bound_a_cancel_is_not_owed(caplog: pytest.LogCaptureFixture) -> None:
    owed = OwedCancels(max_accounts=1, first_delay_s=60)
    sequencer = OutageSequencer()
    assert owed.owe(lambda: sequencer, "alice")
    assert not owed.owe(lambda: sequencer, "bob")
    assert "bob" not in owed and len(owed) == 1
    await owed.drain(tries=1)


async def test_an_owed_cancel_of_one_instrument_stays_of_that_instrument() -> None:
    """Armed by a subscribe to one instrument's orders: the retried cancel is of that
    instrument's orders only, and owed apart from one of every instrument."""
    owed = OwedCancels(first_delay_s=0.01, max_delay_s=0.04)
    sequencer = OutageSequencer(refusals=2)
    assert owed.owe(lambda: sequencer, "alice", "llama/1h")
    assert owed.owe(lambda: sequencer, "alice") and len(owed) == 2
    await wait_for(lambda: len(sequencer.taken) == 2)
    assert set(sequencer.instruments) == {None, "llama/1h"}
