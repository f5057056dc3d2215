"""The bank test (after Jepsen's): value moves concurrently — orders that fill, deposits,
withdrawals and their payouts — while trial balances are read mid-flight through the API.

Every read, at whatever moment it lands: each asset sums to zero, no trader's balance is
negative, and the accounts add up to the totals the report states. Each read says
the ledger index it was taken at; read again at the end at that index, it must be the
same to the unit (a read never saw value a later commit took back, or a batch in part)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "bank-model/2031-01-01T00Z/1h"
LOT = 1000
READS = 120
NO_RATE_LIMIT = {"TOKEX_RATE_LIMIT": "100000", "TOKEX_RATE_BURST": "100000"}


@pytest.fixture
def bank_server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(database_url=db_url, data_dir=tmp_path, env=NO_RATE_LIMIT)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def trial_balance(operator: TokexClient, to_index: int | None = None) -> tuple[int, Any]:
    """(the ledger index it was taken at, its rows)."""
    params: dict[str, Any] = {"format": "json"}
    if to_index is not None:
        params["to_index"] = to_index
    doc = await operator.request("GET", "/v1/reports/trial-balance", params=params)
    return int(doc["query"]["to_index"]), doc["rows"]


def units_off(rows: list[Any], traders: set[str]) -> list[str]:
    """What is wrong with one trial balance: an asset not summing to zero (by its stated
    total and by its accounts), a trader's balance below zero."""
    wrong: list[str] = []
    sums: dict[str, int] = {}
    for r in rows:
        if r["row"] == "account":
            sums[r["asset"]] = sums.get(r["asset"], 0) + r["total"]
            if r["owner"] in traders and (r["available"] < 0 or r["held"] < 0):
                wrong.append(f"negative: {r}")
        elif r["total"] != 0 or sums.get(r["asset"]) != 0:
            wrong.append(f"{r['asset']}: total {r['total']}, accounts {sums.get(r['asset'])}")
    return wrong


async def move_value(
    client: TokexClient, side: Side, tag: str, stop: asyncio.Event, seed: int
) -> int:
    """Crossing orders around 100 and, for buyers, withdrawals; returns commands acknowledged."""
    rng, n, acked = random.Random(seed), 0, 0
    while not stop.is_set():
        n += 1
        try:
            if side is Side.BUY and n % 7 == 0:
                await client.withdraw(f"{tag}-w{n}", rng.randint(1, 5000))
            else:
                await client.place_order(
                    PlaceOrder(client_order_id=f"{tag}-{n}", instrument=SYM, side=side,
                               quantity=LOT * rng.randint(1, 3), price=rng.randint(98, 102))
                )  # fmt: skip
            acked += 1
        except TokexApiError as exc:
            assert exc.status < 500, exc
    return acked


async def treasury(operator: TokexClient, buyers: list[str], stop: asyncio.Event) -> int:
    """Deposits to the buyers, and every pending withdrawal paid or failed."""
    n = acked = 0
    while not stop.is_set():
        n += 1
        await operator.deposit(f"dep-{n}", buyers[n % len(buyers)], 50_000 + n)
        acked += 1
        for w in (await operator.withdrawals(status="pending"))[:5]:
            await operator.mark_withdrawal(w.account_id, w.withdrawal_id, paid=n % 3 != 0)
            acked += 1
    return acked


async def test_trial_balances_read_mid_flight_are_never_a_unit_off(
    bank_server: ServerProcess, db_url: str
) -> None:
    operator = await operator_client(db_url, bank_server.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=1000,
                         maker_fee_bps=5, taker_fee_bps=10, provider_fee_bps=10)
    )  # fmt: skip
    movers, traders, buyers = [], set(), []
    for i in range(4):
        role = Role.PROVIDER if i % 2 == 0 else Role.BUYER
        account = await operator.create_account(role, f"{role.value}-{i}")
        client = operator.as_account(account)
        traders.add(account.account_id)
        if role is Role.PROVIDER:
            await client.list_capacity("cap", SYM, 10**9)
        else:
            await operator.deposit(f"fund-{i}", account.account_id, 10**8)
            buyers.append(account.account_id)
        movers.append((client, Side.SELL if role is Role.PROVIDER else Side.BUY, f"t{i}"))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(move_value(c, side, tag, stop, seed))
             for seed, (c, side, tag) in enumerate(movers)]  # fmt: skip
    tasks.append(asyncio.create_task(treasury(operator, buyers, stop)))
    pinned: dict[int, list[Any]] = {}
    try:
        for read in range(READS):
            index, rows = await trial_balance(operator)
            assert units_off(rows, traders) == [], f"read {read} at {index}"
            pinned.setdefault(index, rows)
    finally:
        stop.set()
        acked = await asyncio.gather(*tasks)
    assert sum(acked) >= 200, "too little value moved to mean anything"
    assert len(pinned) >= READS // 4, "the reads did not land mid-flight"
    for index, rows in pinned.items():  # read again, now that nothing moves
        assert await trial_balance(operator, index) == (index, rows), f"history at {index}"
    await operator.aclose()


def test_a_trial_balance_one_unit_off_or_a_trader_below_zero_is_flagged() -> None:
    def account(owner: str, available: int, held: int = 0) -> dict[str, Any]:
        return {"row": "account", "asset": "USD", "owner": owner, "kind": "cash",
                "available": available, "held": held, "total": available + held}  # fmt: skip

    total = {"row": "asset_total", "asset": "USD", "owner": None, "kind": None,
             "available": 0, "held": 0, "total": 0}  # fmt: skip
    sound = [account("bank", -10), account("b1", 7, 3), total]
    assert units_off(sound, {"b1"}) == []
    assert units_off([account("bank", -10), account("b1", 7, 4), total], {"b1"})
    assert units_off([account("bank", 10), account("b1", -7, -3), total], {"b1"})
    assert units_off([*sound[:2], {**total, "total": 1}], {"b1"})
