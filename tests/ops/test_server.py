"""End to end: a real `tokex serve` process over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx

from ledger.migrate import load_migrations
from tests.support.server import ServerProcess


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


def test_serve_on_embedded_postgres_and_clean_stop(tmp_path: Path) -> None:
    """No DATABASE_URL: `tokex serve --data-dir` runs its own PostgreSQL, migrates, serves,
    and on SIGTERM shuts down cleanly and stops PostgreSQL (it held the last handle)."""
    data_dir = tmp_path / "data"
    proc = ServerProcess(database_url=None, data_dir=data_dir)
    proc.start()
    try:
        body = httpx.get(proc.base_url + "/health").json()
        assert body["schema_version"] == len(load_migrations())
        assert (data_dir / "pg" / "postmaster.pid").exists()
    finally:
        assert proc.stop() == 0
    assert not (data_dir / "pg" / "postmaster.pid").exists()
