"""A real `tokex serve` whose embedded PostgreSQL freezes (SIGSTOP of the postmaster and
its backends, as a partition or an I/O stall would leave it): the requests already
waiting on it answer 503 with Retry-After within seconds, when the supervisor finds the
database down, not at their query's 30 s timeout; after SIGCONT the exchange heals and
what was acknowledged is there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import httpx
import pytest

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


#: What a test waits for a request at most (the server must answer, not the client).
CLIENT_TIMEOUT_S = 60.0


def _order(coid: str) -> PlaceOrder:
    return PlaceOrder(client_order_id=coid, instrument=SYM, side=Side.BUY, quantity=1000, price=10)


async def _writer_pids(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tokex-writer'"
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


def _signal(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


async def test_an_order_in_flight_on_a_frozen_postgresql_is_answered_and_the_writer_let_go(
    pg_data_dir: Path,
) -> None:
    """The order's batch waits on the frozen database: answered 503 `ledger_unavailable`
    (it may have committed) once the supervisor finds it down, not at the end of the
    freeze; the writer's backend stays frozen after the rest thawed (its session holds the
    writer lock): once it thaws the exchange reopens, and the retry has one order."""
    proc = ServerProcess(database_url=None, data_dir=pg_data_dir, env=NO_RATE_LIMIT)
    proc.start()
    try:
        pg_path = pg_data_dir / "pg"
        ex = await set_up(embedded_url(pg_path), proc.base_url)
        ex.buyer._http.timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
        writers = await _writer_pids(embedded_url(pg_path))
        frozen = _postgres_pids(pg_path)
        _signal(frozen, signal.SIGSTOP)
        try:
            in_flight = _answer(ex.buyer.place_order(_order("in-flight")))
            code, took = await asyncio.wait_for(in_flight, CUT_WITHIN_S)
            _signal([pid for pid in frozen if pid not in writers], signal.SIGCONT)
            await asyncio.sleep(3)  # the supervisor reopens: the old writer's lock is held
        finally:
            _signal(frozen, signal.SIGCONT)
        assert (code, took < CUT_WITHIN_S) == ("ledger_unavailable", True), (code, took)
        await ride_out_the_outage(ex)
        retried = await ex.buyer.place_order(_order("in-flight"))
        assert (await ex.buyer.order_by_client_id("in-flight")).order_id == retried.order_id
        await ex.operator.aclose()
    finally:
        assert proc.stop() == 0


async def test_gateways_refuse_at_once_while_postgresql_is_frozen_and_commit_nothing_refused(
    pg_data_dir: Path,
) -> None:
    """`--workers`: each gateway watches the database too: once it is found down, a read
    and an order answer 503 at once (not at the bus's 10 s timeout), and an order refused
    then is not committed when the database comes back."""
    proc = ServerProcess(
        database_url=None, data_dir=pg_data_dir, env=NO_RATE_LIMIT, extra_args=("--workers", "1")
    )
    proc.start(timeout=90)
    try:
        pg_path = pg_data_dir / "pg"
        ex = await set_up(embedded_url(pg_path), proc.base_url)
        ex.buyer._http.timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
        frozen = _postgres_pids(pg_path)
        _signal(frozen, signal.SIGSTOP)
        try:
            in_flight = asyncio.create_task(_answer(ex.buyer.place_order(_order("in-flight"))))
            await asyncio.sleep(6)  # both supervisors have found it down by now
            late = await asyncio.gather(
                _answer(ex.buyer.place_order(_order("refused"))),
                _answer(ex.buyer.me()),
                _answer(ex.buyer.request("GET", "/ready")),
            )
            first = await asyncio.wait_for(in_flight, CUT_WITHIN_S)
        finally:
            _signal(frozen, signal.SIGCONT)
        print("in flight:", first, "6 s into the freeze:", late)
        assert first[0] == "ledger_unavailable", first
        assert all(code != "200" and took < 2.0 for code, took in late), late
        assert late[0][0] == "database_unavailable", late
        await ride_out_the_outage(ex)
        with pytest.raises(TokexApiError) as refused:
            await ex.buyer.order_by_client_id("refused")
        assert refused.value.status == 404
        await ex.operator.aclose()
    finally:
        assert proc.stop() == 0
