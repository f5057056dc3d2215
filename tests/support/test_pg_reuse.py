"""Emptied test databases (`tests.support.pg_reuse`): one used again is as a fresh copy
of the template; one a test changed otherwise is dropped, not used again."""

from __future__ import annotations

import asyncpg
import pytest

from market.sequencer import DepositOp, Sequencer
from schemas.trading import Deposit
from tests.support.pg import PgServer


async def _state(url: str) -> tuple[dict[str, int], list[tuple[str, str]], int | None]:
    conn = await asyncpg.connect(url)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )]  # fmt: skip
        counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        snapshot = await conn.fetch("SELECT * FROM ledger_snapshot")
        next_seq = await conn.fetchval("SELECT nextval('gateway_receipts_seq_seq')")
        return counts, [tuple(map(str, r.values())) for r in snapshot], next_seq
    finally:
        await conn.close()


async def test_a_used_database_is_emptied_back_to_a_fresh_copy(
    pg: PgServer, pg_template: str
) -> None:
    async with pg.fresh_database(pg_template) as url:
        fresh = await _state(url)
    async with pg.fresh_database(pg_template) as url:
        s = await Sequencer.open(url)  # rows in the append-only ledger tables
        try:
            await s.submit(DepositOp(Deposit(deposit_id="d1", account_id="b1", amount=100)))
        finally:
            await s.close()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ledger_entries") > 0
            await conn.execute("SELECT nextval('gateway_receipts_seq_seq')")
            await conn.execute("DELETE FROM schema_migrations WHERE version = 1")  # a seed row
        finally:
            await conn.close()
        used = url
    async with pg.fresh_database(pg_template) as url:
        assert url == used  # the emptied one, used again
        assert await _state(url) == fresh


async def test_a_database_changed_beyond_its_rows_is_not_used_again(
    pg: PgServer, pg_template: str
) -> None:
    async with pg.fresh_database(pg_template) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        finally:
            await conn.close()
        changed = url
    async with pg.fresh_database(pg_template) as url:
        assert url != changed
        conn = await asyncpg.connect(url)
        try:
            disabled = await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D'"
            )
        finally:
            await conn.close()
        assert disabled == 0


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE ledger_snapshot DROP CONSTRAINT ledger_snapshot_next_index_check",
        "ALTER TABLE ledger_snapshot ALTER COLUMN one DROP DEFAULT",
        "ALTER TABLE ledger_entries ENABLE ROW LEVEL SECURITY",
        "CREATE TYPE a_mood AS ENUM ('x')",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
        "CREATE INDEX ON ledger_entries (amount)",
        "GRANT SELECT (amount) ON ledger_entries TO PUBLIC",
        "CREATE VIEW a_view AS SELECT 1 AS one",
        "ALTER SEQUENCE gateway_receipts_seq_seq INCREMENT BY 2",
        "SELECT lo_create(0)",
    ],
)
async def test_a_schema_change_is_seen_and_the_database_dropped(
    pg: PgServer, pg_template: str, change: str
) -> None:
    async with pg.fresh_database(pg_template) as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(change)
        finally:
            await conn.close()
        changed = url
    async with pg.fresh_database(pg_template) as url:
        assert url != changed
