"""End to end: a real `tokex serve` process over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from market.schema import load_migrations
from tests.support.server import REPO_ROOT, ServerProcess


def test_health_over_http(server: str) -> None:
    response = httpx.get(server + "/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "reachable",
        "schema_version": len(load_migrations()),
    }


def test_openapi_and_json_errors_over_http(server: str) -> None:
    schema = httpx.get(server + "/schema/openapi.json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "tokex"
    missing = httpx.get(server + "/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_killed_server_restarts_on_same_database(server_process: ServerProcess) -> None:
    server_process.kill()
    assert not server_process.running
    server_process.start()
    assert httpx.get(server_process.base_url + "/health").status_code == 200
    assert server_process.stop() == 0  # SIGTERM is a clean shutdown


def test_serve_on_embedded_postgres_and_clean_stop(pg_data_dir: Path) -> None:
    """No DATABASE_URL: `tokex serve --data-dir` runs its own PostgreSQL, migrates, serves,
    and on SIGTERM shuts down cleanly and stops PostgreSQL (it held the last handle)."""
    data_dir = pg_data_dir
    proc = ServerProcess(database_url=None, data_dir=data_dir)
    proc.start()
    try:
        body = httpx.get(proc.base_url + "/health").json()
        assert body["schema_version"] == len(load_migrations())
        assert (data_dir / "pg" / "postmaster.pid").exists()
    finally:
        assert proc.stop() == 0
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_embedded_postgres_outlives_a_killed_server_until_the_last_handle(
    pg_data_dir: Path,
) -> None:
    """kill -9 leaves PostgreSQL running with a stale handle pid; the next tokex process
    forgets the dead pid, and being the last handle out, stops PostgreSQL when done."""
    data_dir = pg_data_dir
    proc = ServerProcess(database_url=None, data_dir=data_dir)
    proc.start()
    proc.kill()
    assert (data_dir / "pg" / "postmaster.pid").exists()
    result = subprocess.run(
        [sys.executable, "-m", "ops", "migrate", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert not (data_dir / "pg" / "postmaster.pid").exists()
