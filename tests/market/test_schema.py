"""A database made by main before the clearing left `ledger/` (commit 7cbf26d) opens,
migrates and verifies under this code.

The fixture (`fixtures/main_7cbf26d.sql`) is a pg_dump of a database that main's own code
migrated and filled (`fixtures/make_main_7cbf26d.py` says how, and rebuilds it): accounts,
two instruments, fills, resting orders, a delivery, a paid and a pending withdrawal, one
instrument settled. `fixtures/main_7cbf26d.json` holds what main's database said then:
its balances, open orders, ledger size and recorded migrations.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.audit.export import export
from ledger.audit.verify import verify_file
from ledger.log import MerkleLog
from ledger.note import Signer
from market import schema
from market.sequencer import DepositOp, PlaceOp, Sequencer
from schemas.ledger import Account
from schemas.market import Side
from schemas.trading import Deposit, OrderView, PlaceOrder

FIXTURES = Path(__file__).parent / "fixtures"
ORIGIN = "fixture.tokex/ledger"
SIGNER = Signer(ORIGIN, bytes(range(32)))  # the fixture's published test key
OPEN = "qwen-2.5-72b/2031-02-01T00Z/1h"
CLOSED = "llama-3.1-70b/2027-02-01T00Z/1h"


@pytest.fixture
def main_facts() -> dict[str, Any]:
    facts: dict[str, Any] = json.loads((FIXTURES / "main_7cbf26d.json").read_text())
    return facts


@pytest.fixture
async def main_db(empty_db_url: str) -> str:
    """A fresh database holding main's dump (restored statement by statement; the dump
    sets an empty search_path for its own session, which is closed afterwards)."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        await conn.execute((FIXTURES / "main_7cbf26d.sql").read_text())
    finally:
        await conn.close()
    return empty_db_url


async def test_mains_database_migrates_only_what_came_after_it(
    main_db: str, main_facts: dict[str, Any]
) -> None:
    conn = await asyncpg.connect(main_db)
    try:
        assert len(main_facts["migrations"]) == 5
        assert await schema.migrate(conn) == len(schema.load_migrations())
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()
    recorded = [list(r.values()) for r in rows]
    # Main's five as they were (nothing re-applied or rewritten), then the newer ones.
    assert recorded[:5] == sorted(main_facts["migrations"])
    assert recorded == [[m.version, m.name, m.checksum] for m in schema.load_migrations()]


async def test_mains_database_opens_trades_and_verifies(
    main_db: str, main_facts: dict[str, Any]
) -> None:
    conn = await asyncpg.connect(main_db)
    try:
        await schema.migrate(conn)
        ids = {r["name"]: r["account_id"] for r in await conn.fetch("SELECT * FROM accounts")}
    finally:
        await conn.close()
    seq = await Sequencer.open(main_db, hooks=[MerkleLog(SIGNER, ORIGIN)])
    try:
        # Recovered exactly as main left it: balances, resting orders, instrument states.
        held = {
            (b.account.owner, b.account.asset, b.account.kind): [b.available, b.held]
            for b in seq.ledger.balances()
            if b.available or b.held
        }
        assert held == {tuple(row[:3]): row[3:] for row in main_facts["balances"]}
        assert seq.ledger.size == main_facts["ledger_size"]
        resting = sorted(
            [o.order_id, o.open_quantity] for book in seq.engine.books() for o in book.open_orders()
        )
        assert resting == main_facts["open_orders"]
        assert seq.instrument_view(CLOSED).state == "settled"
        assert seq.instrument_view(OPEN).state == "open"
        # The settled instrument's accounts (all at zero) were retired by the migration:
        # not loaded; the open one's are.
        loaded = {(b.account.asset, b.account.kind) for b in seq.ledger.balances()}
        assert not any(CLOSED in asset or CLOSED in kind for asset, kind in loaded)
        assert any(OPEN in asset for asset, _ in loaded)
        # And it goes on: a deposit, and a buy that fills against p1's resting sell (the best
        # ask, 4,000; p2 rests at 4,500).
        b1, p1 = ids["b1"], ids["p1"]
        await seq.submit(DepositOp(Deposit(deposit_id="after", account_id=b1, amount=10_000)))
        order = await seq.submit(PlaceOp(b1, PlaceOrder(
            client_order_id="after", instrument=OPEN, side=Side.BUY, quantity=2_000, price=4_500,
        )))  # fmt: skip
        assert isinstance(order, OrderView) and order.status == "filled"
        entitlement = Account(f"{b1}@{p1}", f"tok:{OPEN}", "entitlement")
        assert seq.ledger.balance(entitlement).available == 2_000
        size = seq.ledger.size
        accounts = sum(1 for b in seq.ledger.balances() if b.available or b.held)
    finally:
        await seq.close()
    # The whole ledger, main's part and ours, exports and verifies offline under main's key.
    conn = await asyncpg.connect(main_db)
    try:
        out = io.BytesIO()
        summary = await export(conn, out)
    finally:
        await conn.close()
    # deposit, the order's hold, the fill, and the release of what the hold kept back (the
    # buy's limit was 4,500, it paid 4,000)
    assert summary.to_index == size == main_facts["ledger_size"] + 4
    report = verify_file(io.BytesIO(out.getvalue()), SIGNER.verifier())
    assert (report.from_index, report.to_index, report.trusted_key) == (
        0, size, SIGNER.verifier().encode()
    )  # fmt: skip
    # closing balances as the exchange holds them: main's, and b1's new entitlement and
    # escrow with p1
    assert report.accounts == accounts == len(main_facts["balances"]) + 2
