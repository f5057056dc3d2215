"""One statement for a batch's rows: what it stores, and a table that changes under it."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.errors import LedgerUnavailable
from ledger.rows import BatchRows, UnknownTable, forget_table_layouts
from ledger.writer import Ledger
from tests.ledger.test_writer import ALICE, BANK, BOB, assert_books_agree, transfer
from tests.ledger.writer_support import submit

CREATE = """CREATE TABLE rows_probe (
    id    bigint PRIMARY KEY,
    name  text,
    blob  bytea,
    short varchar(3),
    n     integer NOT NULL DEFAULT 7
)"""


@pytest.fixture(autouse=True)
def fresh_layouts() -> None:
    forget_table_layouts()  # each test's database is new; so is its probe table


async def test_whole_rows_and_some_columns_store_the_same(db_conn: asyncpg.Connection) -> None:
    await db_conn.execute(CREATE)
    rows = BatchRows()
    # every column in order: one array of the row type
    rows.insert("rows_probe", ("id", "name", "blob", "short", "n"), [(1, "a", b"\x00", None, 1)])
    # some columns: an array per column, the rest take their defaults
    rows.insert("rows_probe", ("id", "name"), [(2, None), (3, "c")])
    rows.insert(
        "rows_probe",
        ("id", "name"),
        [(1, "upserted")],
        on_conflict="ON CONFLICT (id) DO NOTHING",  # the CTEs share one snapshot: no conflict
    )
    assert rows.tables() == ["rows_probe", "rows_probe", "rows_probe"]
    with pytest.raises(asyncpg.UniqueViolationError):  # all or nothing
        await rows.execute(db_conn)
    assert await db_conn.fetchval("SELECT count(*) FROM rows_probe") == 0
    rows = BatchRows()
    rows.insert("rows_probe", ("id", "name", "blob", "short", "n"), [(1, "a", b"\x00", None, 1)])
    rows.insert("rows_probe", ("id", "name"), [(2, None), (3, "c")])
    await rows.execute(db_conn)
    stored = [tuple(r) for r in await db_conn.fetch("SELECT * FROM rows_probe ORDER BY id")]
    assert stored == [(1, "a", b"\x00", None, 1), (2, None, None, None, 7), (3, "c", None, None, 7)]


async def test_rows_deleted_by_key_in_the_same_statement(db_conn: asyncpg.Connection) -> None:
    await db_conn.execute(CREATE)
    rows = BatchRows()
    rows.insert("rows_probe", ("id", "name"), [(1, "a"), (2, "b"), (3, "c")])
    rows.delete("rows_probe", "id", [])  # nothing to delete: nothing staged
    assert rows.tables() == ["rows_probe"]
    await rows.execute(db_conn)
    rows = BatchRows()
    rows.insert("rows_probe", ("id", "name"), [(4, "d")])
    rows.delete("rows_probe", "id", [1, 3, 3, 99])  # repeated and absent keys are fine
    rows.delete("rows_probe", "name", ["b"])
    assert rows.tables() == ["rows_probe", "rows_probe", "rows_probe"]
    await rows.execute(db_conn)
    assert [r["id"] for r in await db_conn.fetch("SELECT id FROM rows_probe")] == [4]
    # Only deletes: a statement all the same; and all or nothing with a failing insert.
    rows = BatchRows()
    rows.delete("rows_probe", "id", [4])
    rows.insert("rows_probe", ("id", "short"), [(5, "abcdef")])
    with pytest.raises(asyncpg.StringDataRightTruncationError):
        await rows.execute(db_conn)
    assert await db_conn.fetchval("SELECT count(*) FROM rows_probe") == 1
    rows = BatchRows()
    rows.delete("rows_probe", "id", [4])
    assert rows
    await rows.execute(db_conn)
    assert await db_conn.fetchval("SELECT count(*) FROM rows_probe") == 0


async def test_a_value_too_long_is_refused_not_cut(db_conn: asyncpg.Connection) -> None:
    await db_conn.execute(CREATE)
    for columns, record in (
        (("id", "short"), (1, "abcdef")),
        (("id", "name", "blob", "short", "n"), (1, None, None, "abcdef", 1)),
    ):
        rows = BatchRows()
        rows.insert("rows_probe", columns, [record])
        with pytest.raises(asyncpg.StringDataRightTruncationError):
            await rows.execute(db_conn)
    assert await db_conn.fetchval("SELECT count(*) FROM rows_probe") == 0


async def test_an_unknown_table_is_named(db_conn: asyncpg.Connection) -> None:
    rows = BatchRows()
    rows.insert("no_such_table", ("id",), [(1,)])
    with pytest.raises(UnknownTable, match="no_such_table"):
        await rows.execute(db_conn)


async def test_a_column_added_under_a_running_writer(db_url: str) -> None:
    """A migration that adds a column while the exchange runs (a new version deploying
    beside the old one): at most the next batch fails, whole; then the writer reads the
    table's new layout and goes on."""
    ledger = await Ledger.open(db_url)
    try:
        await submit(ledger, transfer("deposit", BANK, ALICE, 100))
        admin = await asyncpg.connect(db_url)
        try:
            await admin.execute(
                "ALTER TABLE ledger_transactions ADD COLUMN note text NOT NULL DEFAULT ''"
            )
        finally:
            await admin.close()
        try:
            await submit(ledger, transfer("t1", ALICE, BOB, 10))
        except LedgerUnavailable:
            await submit(ledger, transfer("t1", ALICE, BOB, 10))
        await submit(ledger, transfer("t2", ALICE, BOB, 5))
        assert ledger.balance(ALICE).available == 85 and ledger.balance(BOB).available == 15
        await assert_books_agree(db_url, ledger)
    finally:
        await ledger.close()
