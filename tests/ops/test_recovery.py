"""A real `tokex serve` that loses its PostgreSQL: 503s (never a 500) until it is back, by
itself, then every route works and nothing acknowledged is lost.

* embedded: kill -9 of the postmaster tokex started; tokex starts it again;
* DATABASE_URL: a PostgreSQL tokex did not start, stopped (a crash: immediate mode) and
  started again by the test; tokex reconnects.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from market.client import TokexApiError, TokexClient
from ops.embedded_access import running_dsn
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.pg import PgServer
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"
OUTAGE_LIMIT_S = 60.0  # the exchange must be back within this (bounded test)
#: The load must meet the database's absence, not the per-key rate limit (429).
NO_RATE_LIMIT = {"TOKEX_RATE_LIMIT": "100000", "TOKEX_RATE_BURST": "100000"}


@dataclass
class Exchange:
    operator: TokexClient
    buyer: TokexClient
    buyer_id: str
    deposits: dict[str, int] = field(default_factory=dict)  # acknowledged: id -> amount
    orders: dict[str, int] = field(default_factory=dict)  # acknowledged: client id -> order id
    withdrawals: set[str] = field(default_factory=set)
    n: int = 0


async def set_up(db_url: str, base_url: str) -> Exchange:
    operator = await operator_client(db_url, base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=1, price_min=1, price_max=1000)
    )
    provider = operator.as_account(await operator.create_account(Role.PROVIDER, "p"))
    await provider.list_capacity("cap", SYM, 10_000_000)
    b = await operator.create_account(Role.BUYER, "b")
    ex = Exchange(operator=operator, buyer=operator.as_account(b), buyer_id=b.account_id)
    await exercise(ex)
    return ex


def routes(ex: Exchange) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """One call per route family; writes record what was acknowledged."""
    ex.n += 1
    n = ex.n

    async def deposit() -> None:
        await ex.operator.deposit(f"dep-{n}", ex.buyer_id, 1_000_000)
        ex.deposits[f"dep-{n}"] = 1_000_000

    async def order() -> None:
        view = await ex.buyer.place_order(
            PlaceOrder(client_order_id=f"o-{n}", instrument=SYM, side=Side.BUY,
                       quantity=1000, price=10)
        )  # fmt: skip
        ex.orders[f"o-{n}"] = view.order_id

    async def withdraw() -> None:
        await ex.buyer.withdraw(f"w-{n}", 1)
        ex.withdrawals.add(f"w-{n}")

    async def checkpoint() -> None:
        async with httpx.AsyncClient(base_url=ex.operator.base_url) as http:
            response = await http.get("/v1/ledger/checkpoint")
        if response.status_code != 200:
            body = response.json()
            retry = response.headers.get("retry-after")
            raise TokexApiError(
                response.status_code, body["code"], body["message"],
                None if retry is None else float(retry),
            )  # fmt: skip

    return [
        ("deposit", deposit),
        ("order", order),
        ("balances", ex.buyer.balances),
        ("withdrawal", withdraw),
        ("checkpoint", checkpoint),
        ("trial balance", lambda: ex.operator.request("GET", "/v1/reports/trial-balance")),
        ("instruments", ex.buyer.instruments),
        ("me", ex.buyer.me),
        ("orders", ex.buyer.orders),
    ]


async def exercise(ex: Exchange) -> dict[str, int | str]:
    """Every route once: name -> 200, or the error status and code."""
    outcome: dict[str, int | str] = {}
    for name, call in routes(ex):
        try:
            await call()
            outcome[name] = 200
        except TokexApiError as exc:
            assert exc.retry_after is not None or exc.status != 503, f"{name}: no Retry-After"
            outcome[name] = f"{exc.status} {exc.code}"
    return outcome


async def ride_out_the_outage(ex: Exchange, restore: Callable[[], None] | None = None) -> set[str]:
    """Call every route until all answer; every failure on the way must be a 503.
    `restore` (if any) brings the database back after a few rounds. Returns the codes seen."""
    codes: set[str] = set()
    deadline = time.monotonic() + OUTAGE_LIMIT_S
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        outcome = await exercise(ex)
        failures = {k: v for k, v in outcome.items() if v != 200}
        assert all(str(v).startswith("503 ") for v in failures.values()), outcome
        codes |= {str(v) for v in failures.values()}
        if rounds == 5 and restore is not None:
            restore()
        if not failures and rounds > 5:
            return codes
        await asyncio.sleep(0.2)
    raise AssertionError(f"the exchange did not come back within {OUTAGE_LIMIT_S}s: {codes}")


async def assert_nothing_lost(ex: Exchange) -> None:
    for coid, order_id in ex.orders.items():
        assert (await ex.buyer.order(order_id)).client_order_id == coid
    mine = {w.withdrawal_id for w in await ex.buyer.withdrawals()}
    assert ex.withdrawals <= mine
    # A retried deposit id returns its first outcome rather than depositing again.
    first = next(iter(ex.deposits))
    await ex.operator.deposit(first, ex.buyer_id, ex.deposits[first])
    # Pending withdrawals and open orders hold cash; none of it left the account.
    usd = {b.asset: b for b in await ex.buyer.balances()}["USD"]
    assert usd.total == usd.available + usd.held == sum(ex.deposits.values()), usd
    assert usd.held >= len(ex.withdrawals)


async def load(ex: Exchange, tag: str, seen: list[str], stop: asyncio.Event) -> None:
    """Orders and balance reads as fast as they go, beside the rounds of `exercise`;
    `seen` gets every answer that was not a success."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            view = await ex.buyer.place_order(
                PlaceOrder(client_order_id=f"{tag}-{n}", instrument=SYM, side=Side.BUY,
                           quantity=1000, price=5)
            )  # fmt: skip
            ex.orders[f"{tag}-{n}"] = view.order_id
            await ex.buyer.balances()
        except TokexApiError as exc:
            seen.append(f"{exc.status} {exc.code}")
            assert exc.status != 503 or exc.retry_after is not None
            await asyncio.sleep(0.05)


async def assert_the_stream_says_try_again(proc: ServerProcess) -> None:
    """Once the outage is noticed, the websocket stream is closed with 1013 (try again later)."""
    url = proc.base_url.replace("http://", "ws://") + "/v1/stream"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        async with connect(url) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 0.5)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                assert (closed.rcvd.code, closed.rcvd.reason) == (1013, "database_unavailable")
                return
            except TimeoutError:
                pass  # not noticed yet: the stream still serves
        await asyncio.sleep(0.1)
    raise AssertionError("the stream was never closed with 1013")


def postmaster_pid(pg_path: Path) -> int:
    return int((pg_path / "postmaster.pid").read_text().split("\n", 1)[0])


def embedded_url(pg_path: Path) -> str:
    return running_dsn(pg_path)


async def test_kill_9_of_the_embedded_postgresql_is_survived(pg_data_dir: Path) -> None:
    proc = ServerProcess(database_url=None, data_dir=pg_data_dir, env=NO_RATE_LIMIT)
    proc.start()
    try:
        pg_path = pg_data_dir / "pg"
        ex = await set_up(embedded_url(pg_path), proc.base_url)
        assert set((await exercise(ex)).values()) == {200}
        stop = asyncio.Event()
        seen: list[str] = []
        loads = [asyncio.create_task(load(ex, f"load{i}", seen, stop)) for i in range(4)]
        await asyncio.sleep(0.5)
        killed = postmaster_pid(pg_path)
        os.kill(killed, signal.SIGKILL)
        try:
            codes = await ride_out_the_outage(ex)
        finally:
            stop.set()
            await asyncio.gather(*loads)  # re-raises a load's failed assertion or error
        assert all(code.startswith("503 ") for code in seen), sorted(set(seen))
        print("codes under load:", sorted(set(seen)))
        print("codes during the outage:", sorted(codes))
        assert "503 database_unavailable" in codes, codes
        assert postmaster_pid(pg_path) != killed  # tokex started a new one
        assert proc.running
        await assert_nothing_lost(ex)
        await ex.operator.aclose()
    finally:
        assert proc.stop() == 0
    assert not (pg_data_dir / "pg" / "postmaster.pid").exists()  # stopped with tokex


async def test_a_database_url_server_stopped_and_started_is_survived(
    pg: PgServer, db_url: str, tmp_path: Path
) -> None:
    if not pg.embedded:
        pg.stop()  # skips: the test must be able to stop and start the server
    proc = ServerProcess(database_url=db_url, data_dir=tmp_path, env=NO_RATE_LIMIT)
    proc.start()
    try:
        ex = await set_up(db_url, proc.base_url)
        pg.stop(mode="immediate")
        try:
            await assert_the_stream_says_try_again(proc)
            codes = await ride_out_the_outage(ex, restore=pg.start)
        finally:
            pg.start()  # idempotent: leaves the session's server running for other tests
        print("codes during the outage:", sorted(codes))
        assert "503 database_unavailable" in codes, codes
        assert proc.running
        await assert_nothing_lost(ex)
        await ex.operator.aclose()
    finally:
        assert proc.stop() == 0
