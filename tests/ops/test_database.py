"""The embedded PostgreSQL: which major runs a data dir, and scratch data dirs (benchmarks)
are deleted only once their PostgreSQL has stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from ops.config import Settings
from ops.database import _import_pgserver, database_url, remove_embedded, shipped_majors
from tests.support.server import REPO_ROOT


async def _server_major(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10_000
    finally:
        await conn.close()


async def test_a_scratch_data_dir_is_stopped_and_deleted(tmp_path: Path) -> None:
    data_dir = tmp_path / "scratch"
    url = database_url(Settings(data_dir=str(data_dir)))
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()
    assert (data_dir / "pg" / "postmaster.pid").exists()
    assert remove_embedded(data_dir)
    assert not data_dir.exists()


def test_a_data_dir_whose_server_still_runs_is_kept(tmp_path: Path) -> None:
    # Another process's server: its postmaster.pid is there, and this process has no handle.
    pg = tmp_path / "other" / "pg"
    pg.mkdir(parents=True)
    (pg / "postmaster.pid").write_text("12345\n")
    assert not remove_embedded(tmp_path / "other")
    assert (pg / "postmaster.pid").exists()


async def test_a_new_data_dir_runs_the_newest_shipped_postgresql(pg_data_dir: Path) -> None:
    url = database_url(Settings(data_dir=str(pg_data_dir)))
    try:
        assert await _server_major(url) == max(shipped_majors()) == 18
        assert (pg_data_dir / "pg" / "PG_VERSION").read_text().strip() == "18"
    finally:
        assert remove_embedded(pg_data_dir)


async def test_a_postgresql_16_data_dir_as_pgserver_made_it_opens_with_its_data(
    pg_data_dir: Path,
) -> None:
    """pgserver (which tokex used before) made PostgreSQL 16 clusters: they open as they are."""
    pg_data_dir.mkdir(parents=True)
    made = _import_pgserver().get_server(
        pg_data_dir / "pg", cleanup_mode="stop", postgres_version=16
    )
    conn = await asyncpg.connect(made.get_uri("postgres"))
    await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (16)")
    await conn.close()
    made.cleanup()  # stopped, as a data dir is between two runs of tokex
    assert not (pg_data_dir / "pg" / "postmaster.pid").exists()

    url = database_url(Settings(data_dir=str(pg_data_dir)))
    try:
        assert await _server_major(url) == 16
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT n FROM kept") == 16
        await conn.close()
    finally:
        assert remove_embedded(pg_data_dir)


def test_a_cluster_of_a_major_the_wheel_lacks_is_refused_in_one_line(tmp_path: Path) -> None:
    pg = tmp_path / "data" / "pg"
    pg.mkdir(parents=True)
    (pg / "PG_VERSION").write_text("15\n")
    result = subprocess.run(
        [sys.executable, "-m", "ops", "migrate", "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tokex: error: embedded_postgres_version: ")
    assert "holds a PostgreSQL 15 cluster" in result.stderr
    assert "runs 16 and 18 only" in result.stderr
    assert not (pg / "postmaster.pid").exists()
