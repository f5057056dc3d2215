"""A real `tokex serve` whose embedded PostgreSQL freezes (SIGSTOP of the postmaster and
its backends, as a partition or an I/O stall would leave it): the requests already
waiting on it answer 503 with Retry-After within seconds, when the supervisor finds the
database down, not at their query's 30 s timeout; after SIGCONT the exchange heals and
what was acknowledged is there."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path

import httpx

from market.client import TokexApiError
from schemas.market import Side
from schemas.trading import PlaceOrder
from tests.ops.test_recovery import (
    NO_RATE_LIMIT,
    SYM,
    assert_nothing_lost,
    embedded_url,
    postmaster_pid,
    ride_out_the_outage,
    set_up,
)
from tests.support.server import ServerProcess

#: The supervisor finds a frozen database down after its probe's 3 s timeout; a request
#: waiting on it must answer soon after (before this fix: at the 30 s command timeout).
CUT_WITHIN_S = 9.0


def _postgres_pids(pg_path: Path) -> list[int]:
    postmaster = postmaster_pid(pg_path)
    found = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True)
    return [postmaster, *(int(pid) for pid in found.stdout.split())]


async def _answer(call: Awaitable[object]) -> tuple[str, float]:
    began = time.monotonic()
    try:
        await call
    except TokexApiError as exc:
        assert exc.status == 503 and exc.retry_after is not None, exc
        return exc.code, time.monotonic() - began
    return "200", time.monotonic() - began


async def test_a_frozen_postgresql_cuts_the_requests_waiting_on_it_and_heals(
    pg_data_dir: Path,
) -> None:
    proc = ServerProcess(database_url=None, data_dir=pg_data_dir, env=NO_RATE_LIMIT)
    proc.start()
    try:
        pg_path = pg_data_dir / "pg"
        ex = await set_up(embedded_url(pg_path), proc.base_url)
        for client in (ex.buyer, ex.operator):
            client._http.timeout = httpx.Timeout(60)  # the server must answer, not the client
        acked = await ex.buyer.place_order(
            PlaceOrder(client_order_id="before-freeze", instrument=SYM, side=Side.BUY,
                       quantity=1000, price=10)
        )  # fmt: skip
        # connections idle in the pool, which the reads below take and then wait on
        await asyncio.gather(*(ex.buyer.me() for _ in range(6)))
        frozen = _postgres_pids(pg_path)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.2)
            answers = await asyncio.gather(  # reads on the pool, under way when it froze
                _answer(ex.operator.request("GET", "/v1/reports/trial-balance")),
                _answer(ex.buyer.me()),
                _answer(ex.buyer.withdrawals()),
            )
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        print("answers while frozen:", answers)
        assert all(code != "200" for code, _ in answers), answers
        assert max(took for _, took in answers) < CUT_WITHIN_S, answers
        assert re.search(r"\(([1-9]\d*) pool connections cut\)", proc.log_path.read_text())
        await ride_out_the_outage(ex)
        assert (await ex.buyer.order(acked.order_id)).client_order_id == "before-freeze"
        await assert_nothing_lost(ex)
        await ex.operator.aclose()
    finally:
        assert proc.stop() == 0
