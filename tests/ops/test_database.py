"""Scratch data dirs (benchmarks) are deleted only once their PostgreSQL has stopped."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from ops.config import Settings
from ops.database import database_url, remove_embedded


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
