"""Property test on the real database: random transfers, holds, posts and voids,
with the books checked after every step.

One database serves every example; each example draws its accounts and
assets in a namespace of its own, so the examples cannot see each other.
"""

from __future__ import annotations

import itertools

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.accounts import may_go_negative
from ledger.store import nonzero, recomputed_balances, stored_balances
from ledger.writer import Ledger
from schemas.ledger import Transaction
from tests.ledger.strategies import steps
from tests.ledger.writer_support import submit

_namespaces = itertools.count()


@pytest.fixture
async def shared(db_url: str):  # type: ignore[no-untyped-def]
    writer = await Ledger.open(db_url)
    conn = await asyncpg.connect(db_url)
    yield writer, conn
    await conn.close()
    await writer.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_books_balance_after_every_step_on_the_database(
    shared: tuple[Ledger, asyncpg.Connection], data: st.DataObject
) -> None:
    writer, conn = shared
    ns = f"n{next(_namespaces)}."
    txs: list[Transaction] = data.draw(steps(ns))
    for tx in txs:
        await submit(writer, tx)
        assert all(total == 0 for total in writer.asset_totals().values())
        await writer.snapshot()
        stored = nonzero((await stored_balances(conn)).items())
        for account, (available, held) in stored.items():
            if not may_go_negative(account):
                assert available >= 0 and held >= 0
        assert stored == nonzero((await recomputed_balances(conn)).items())
        assert stored == nonzero((b.account, (b.available, b.held)) for b in writer.balances())
