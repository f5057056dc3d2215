"""The migration runner, on real PostgreSQL databases with migrations of our own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from ledger.migrate import (
    Migration,
    MigrationChecksumMismatch,
    MigrationError,
    MigrationFailed,
    SchemaNotCurrent,
    load_migrations,
    migrate,
    require_current,
    schema_version,
)
from market import schema


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


THREE = {
    "0001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY);",
    "0002_entries.sql": (
        "CREATE TABLE entries (id int PRIMARY KEY, account int REFERENCES accounts);"
        "INSERT INTO accounts VALUES (1);"
    ),
    "0003_more.sql": "ALTER TABLE accounts ADD COLUMN name text; SELECT pg_sleep(0.05);",
}


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_applies_in_order_and_records_each(empty_db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await schema_version(conn) == 0
        assert await migrate(conn, write(tmp_path, THREE)) == 3
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows] == [
            (1, "accounts"),
            (2, "entries"),
            (3, "more"),
        ]
        assert [r["checksum"] for r in rows] == [m.checksum for m in load_migrations(tmp_path)]
        assert {"accounts", "entries"} <= await tables(conn)
        assert await schema_version(conn) == 3
    finally:
        await conn.close()


async def test_rerun_is_a_no_op_and_new_files_apply(empty_db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        first = dict(list(THREE.items())[:2])
        assert await migrate(conn, write(tmp_path, first)) == 2
        assert await migrate(conn, tmp_path) == 2  # would fail on CREATE TABLE if re-applied
        write(tmp_path, {"0003_more.sql": THREE["0003_more.sql"]})
        assert await migrate(conn, tmp_path) == 3
        assert await conn.fetchval("SELECT count(*) FROM accounts") == 1
    finally:
        await conn.close()


async def test_changed_applied_file_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, write(tmp_path, THREE))
        (tmp_path / "0002_entries.sql").write_text(THREE["0002_entries.sql"] + "\n-- edited\n")
        with pytest.raises(MigrationChecksumMismatch) as info:
            await migrate(conn, tmp_path)
        assert info.value.code == "migration_checksum_mismatch"
        assert "0002_entries" in info.value.message
    finally:
        await conn.close()


async def test_require_current_checks_without_applying(empty_db_url: str, tmp_path: Path) -> None:
    """What `tokex serve` does with `TOKEX_MIGRATE=0`: names what is missing, changes nothing."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        write(tmp_path, THREE)
        with pytest.raises(SchemaNotCurrent, match="at schema version 0, this code needs 3"):
            await require_current(conn, tmp_path)
        assert await tables(conn) == set()  # not even schema_migrations
        await migrate(conn, load_migrations(tmp_path)[:2])
        with pytest.raises(SchemaNotCurrent, match=r"missing 0003_more\)"):
            await require_current(conn, tmp_path)
        assert await migrate(conn, tmp_path) == 3
        assert await require_current(conn, tmp_path) == 3
        (tmp_path / "0002_entries.sql").write_text(THREE["0002_entries.sql"] + "\n-- edited\n")
        with pytest.raises(MigrationChecksumMismatch):
            await require_current(conn, tmp_path)
    finally:
        await conn.close()


async def test_failing_file_rolls_back_only_itself_and_stops(
    empty_db_url: str, tmp_path: Path
) -> None:
    files = {
        "0001_ok.sql": "CREATE TABLE ok (id int);",
        "0002_bad.sql": "CREATE TABLE half (id int); SELECT no_such_function();",
        "0003_later.sql": "CREATE TABLE later (id int);",
    }
    conn = await asyncpg.connect(empty_db_url)
    try:
        with pytest.raises(MigrationFailed, match="0002_bad"):
            await migrate(conn, write(tmp_path, files))
        assert await schema_version(conn) == 1
        assert await tables(conn) == {"ok", "schema_migrations"}  # no `half`, no `later`
        # The lock was released: fixing the file lets a new run finish.
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
        assert await migrate(conn, tmp_path) == 3
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_file_once(empty_db_url: str, tmp_path: Path) -> None:
    directory = write(tmp_path, THREE)
    conns = [await asyncpg.connect(empty_db_url) for _ in range(4)]
    try:
        versions = await asyncio.gather(*(migrate(c, directory) for c in conns))
        assert versions == [3, 3, 3, 3]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == 3
        assert await conns[0].fetchval("SELECT count(*) FROM accounts") == 1
    finally:
        for c in conns:
            await c.close()


def test_numbering_must_be_contiguous(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "", "0003_c.sql": ""})
    with pytest.raises(MigrationError, match="expected 0002"):
        load_migrations(tmp_path)


def test_duplicate_numbers_and_bad_names_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "dup", {"0001_a.sql": "", "0001_b.sql": ""})
    with pytest.raises(MigrationError):
        load_migrations(tmp_path / "dup")
    write(tmp_path / "bad", {"1_a.sql": ""})
    with pytest.raises(MigrationError, match="NNNN_"):
        load_migrations(tmp_path / "bad")


def test_non_sql_files_are_ignored_and_missing_dir_is_empty(tmp_path: Path) -> None:
    write(tmp_path, {"0001_a.sql": "SELECT 1;", "README.md": "notes"})
    assert [m.name for m in load_migrations(tmp_path)] == ["a"]
    assert load_migrations(tmp_path / "nowhere") == []


async def test_database_ahead_of_code_is_refused(empty_db_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate(conn, write(tmp_path / "new", THREE))
        older = [m for m in load_migrations(tmp_path / "new") if m.version < 3]
        with pytest.raises(MigrationError, match="does not know"):
            await migrate(conn, older)
    finally:
        await conn.close()


async def test_list_of_migrations_is_accepted(empty_db_url: str) -> None:
    migrations = [Migration.from_text("0001_x.sql", b"CREATE TABLE x (id int);")]
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await migrate(conn, migrations) == 1
    finally:
        await conn.close()


def test_package_migrations_are_well_formed() -> None:
    # Whatever ships in ledger/migrations and market/migrations must load (names, numbering).
    schema.load_migrations()


async def test_template_database_is_fully_migrated(db_conn: asyncpg.Connection) -> None:
    assert await schema_version(db_conn) == len(schema.load_migrations())


# The exchange's files as main recorded them before they were split between ledger/ and
# market/ (sha256 of each file at commit 7cbf26d): a database that applied them must
# find the same names and checksums, or the runner would refuse it.
RECORDED = [
    (1, "ledger", "ledger/migrations"),
    (2, "merkle_log", "ledger/migrations"),
    (3, "accounts", "market/migrations"),
    (4, "market", "market/migrations"),
    (5, "settlement", "market/migrations"),
    (6, "market_snapshots", "market/migrations"),
    (7, "open_holds", "ledger/migrations"),
    (8, "gateway", "market/migrations"),
    (9, "receipts_evidence", "market/migrations"),
    (10, "cancel_after", "market/migrations"),
    (11, "vouchers_disputes", "market/migrations"),
    (12, "retired_accounts", "ledger/migrations"),
    (13, "retire_settled_accounts", "market/migrations"),
    (14, "gateway_calls", "market/migrations"),
    (15, "gateway_call_owner", "market/migrations"),
    (16, "inference_key_signature", "market/migrations"),
    (17, "stream_signatures", "market/migrations"),
    (18, "snapshot_seal", "ledger/migrations"),
    (19, "market_snapshot_seal", "market/migrations"),
    (20, "receipts_owed", "market/migrations"),
]


def test_exchange_migrations_keep_their_numbers_names_and_places() -> None:
    found = schema.load_migrations()
    assert [(m.version, m.name) for m in found] == [(v, n) for v, n, _ in RECORDED]
    for migration, (version, name, where) in zip(found, RECORDED, strict=True):
        path = Path(__file__).parents[2] / where / f"{version:04d}_{name}.sql"
        assert path.read_text() == migration.sql


def test_several_directories_are_one_sequence(tmp_path: Path) -> None:
    write(tmp_path / "low", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 3;"})
    write(tmp_path / "high", {"0002_b.sql": "SELECT 2;"})
    both = load_migrations([tmp_path / "high", tmp_path / "low"])
    assert [(m.version, m.name) for m in both] == [(1, "a"), (2, "b"), (3, "c")]
    with pytest.raises(MigrationError, match="expected 0002"):
        load_migrations(tmp_path / "low")  # one directory alone has a gap
    write(tmp_path / "clash", {"0002_other.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match="repeats"):
        load_migrations([tmp_path / "low", tmp_path / "high", tmp_path / "clash"])


async def test_several_directories_are_applied_in_one_order(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Numbers decide the order, not directories: 0002 of the second directory runs before
    0003 of the first (it creates the table 0003 alters)."""
    write(tmp_path / "a", {"0001_a.sql": "CREATE TABLE a (id int);",
                           "0003_c.sql": "ALTER TABLE b ADD COLUMN c int;"})  # fmt: skip
    write(tmp_path / "b", {"0002_b.sql": "CREATE TABLE b (id int);"})
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await migrate(conn, [tmp_path / "a", tmp_path / "b"]) == 3
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
    finally:
        await conn.close()
