"""The `tokex` CLI against an embedded PostgreSQL in a throw-away data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from market.schema import load_migrations
from ops.cli import build_parser
from tests.support.server import REPO_ROOT


def tokex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_on_a_data_dir(pg_data_dir: Path) -> None:
    """Two `tokex migrate` at once on a fresh data dir: one cluster, both see the same version,
    and the embedded server is stopped when the last of them exits."""
    data_dir = pg_data_dir
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: tokex("migrate", "--data-dir", str(data_dir)), [0, 1]))
    for result in results:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(len(load_migrations()))
    assert (data_dir / "pg" / "PG_VERSION").exists()
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # last handle out stopped it


def test_migrate_honours_database_url(db_url: str, tmp_path: Path) -> None:
    result = tokex("migrate", "--data-dir", str(tmp_path / "unused"), env={"DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(load_migrations()))
    assert not (tmp_path / "unused").exists()


def test_db_url_prints_dsn(db_url: str) -> None:
    result = tokex("db-url", env={"DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == db_url


def test_parser_knows_the_core_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "9001", "--data-dir", "/x"])
    assert (args.command, args.port, args.data_dir, args.host) == ("serve", 9001, "/x", "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_unreachable_database_is_a_one_line_error(tmp_path: Path) -> None:
    url = f"postgresql://postgres@/postgres?host={tmp_path}"  # no server on that socket
    result = tokex("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr
