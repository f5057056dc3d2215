"""The exchange refuses a database whose ledger went back in time (`ops.ledger_head`).

A restore from an older backup (here: PostgreSQL's data directory copied back) drops
acknowledged entries; serving it would sign a fork of the exchange's own log. After an
outage and at a cold start alike the exchange answers 503 `ledger_regressed` instead,
until the right database is back, or an operator accepts the restore on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from market.client import TokexApiError
from ops.ledger_head import CHECKPOINT_FILE
from tests.ops.test_recovery import NO_RATE_LIMIT, set_up
from tests.support.pg import PgServer
from tests.support.server import ServerProcess


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL of this test's own: its data directory is copied and put back."""
    server = PgServer()
    if not server.embedded:
        pytest.skip("copying a data directory needs the embedded PostgreSQL")
    try:
        yield server
    finally:
        server.close()


def pg_dir(pg: PgServer) -> Path:
    assert pg._tmp is not None
    return pg._tmp / "pg"


#: `serve --workers N` (the suite against gateway processes): they answer /health themselves.
WORKERS = bool(os.environ.get("TOKEX_TEST_SERVE_WORKERS"))
#: Longer than the supervisor's probe interval: the outage is seen, whatever the timing.
DOWN_S = 1.5


def copy_data(pg: PgServer, to: Path) -> None:
    """A copy of the stopped cluster's data directory, as a backup would be."""
    pg.stop("fast")
    shutil.copytree(pg_dir(pg), to, symlinks=True)
    time.sleep(DOWN_S)
    pg.start()


def restore_data(pg: PgServer, copy: Path) -> None:
    """Put `copy` back in place of the cluster's data directory and start it."""
    data = pg_dir(pg)
    owner = data.stat()
    pg.stop("immediate")
    shutil.rmtree(data)
    shutil.copytree(copy, data, symlinks=True, ignore=shutil.ignore_patterns("postmaster.pid"))
    for path in (data, *data.rglob("*")):
        shutil.chown(path, owner.st_uid, owner.st_gid)
    time.sleep(DOWN_S)
    pg.start()


async def answer(
    base_url: str, path: str, status: int, code: str | None = None, timeout_s: float = 30.0
) -> httpx.Response:
    """GET `path` until it answers `status` (with this error `code`, if given)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while True:
            try:
                got = await client.get(path)
                if got.status_code == status and (code is None or code_of(got) == code):
                    return got
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{path} never answered {status}"
            await asyncio.sleep(0.1)


def log_lines(proc: ServerProcess, needle: str) -> list[str]:
    return [line for line in proc.log_path.read_text().splitlines() if needle in line]


async def reopened(proc: ServerProcess, before: int) -> None:
    """Until the exchange has reopened after an outage more than `before` times."""
    deadline = time.monotonic() + 30
    while len(log_lines(proc, "exchange reopened")) <= before:
        assert time.monotonic() < deadline, proc.log()
        await asyncio.sleep(0.1)


def code_of(response: httpx.Response) -> str:
    code: str = response.json()["code"]
    return code


async def test_a_database_restored_from_an_older_copy_is_refused_until_the_right_one_is_back(
    own_pg: PgServer, tmp_path: Path
) -> None:
    url = own_pg.url("postgres")
    proc = ServerProcess(database_url=url, data_dir=tmp_path / "data", env=NO_RATE_LIMIT)
    proc.start(60)
    try:
        ex = await set_up(url, proc.base_url)
        for i in range(3):
            await ex.operator.deposit(f"a{i}", ex.buyer_id, 100)
        copy_data(own_pg, tmp_path / "old")
        await reopened(proc, 0)
        for i in range(5):  # acknowledged: committed, in a signed checkpoint
            await ex.operator.deposit(f"b{i}", ex.buyer_id, 7)
        head = (await answer(proc.base_url, "/ready", 200)).json()["ledger_size"]
        balances = await ex.buyer.balances()

        copy_data(own_pg, tmp_path / "new")
        restore_data(own_pg, tmp_path / "old")
        await answer(proc.base_url, "/ready", 503, "ledger_regressed")
        if not WORKERS:  # a gateway process's /health is its own: its database answers
            assert code_of(await answer(proc.base_url, "/health", 503)) == "ledger_regressed"
        with pytest.raises(TokexApiError) as refused:
            await ex.operator.deposit("refused", ex.buyer_id, 1)
        assert (refused.value.status, refused.value.code) == (503, "ledger_regressed")
        await asyncio.sleep(2)  # several probes and reopen attempts: still refused
        assert code_of(await answer(proc.base_url, "/ready", 503)) == "ledger_regressed"
        refusals = log_lines(proc, "refusing the database")
        assert len(refusals) == 1 and '"level":"error"' in refusals[0], refusals

        before = len(log_lines(proc, "exchange reopened"))
        restore_data(own_pg, tmp_path / "new")  # the right database is back: served again
        await reopened(proc, before)
        ready = await answer(proc.base_url, "/ready", 200)
        assert ready.json()["ledger_size"] == head
        assert await ex.buyer.balances() == balances
        await ex.operator.deposit("c0", ex.buyer_id, 1)
        await ex.operator.aclose()
    finally:
        proc.stop()


async def test_a_cold_start_on_a_database_behind_the_saved_checkpoint_is_refused(
    own_pg: PgServer, tmp_path: Path
) -> None:
    url = own_pg.url("postgres")
    data_dir = tmp_path / "data"
    proc = ServerProcess(database_url=url, data_dir=data_dir, env=NO_RATE_LIMIT)
    proc.start(60)
    try:
        ex = await set_up(url, proc.base_url)
        copy_data(own_pg, tmp_path / "old")
        await reopened(proc, 0)
        for i in range(3):
            await ex.operator.deposit(f"b{i}", ex.buyer_id, 7)
        head = (await answer(proc.base_url, "/ready", 200)).json()["ledger_size"]
        await ex.operator.aclose()
    finally:
        proc.stop()
    saved = (data_dir / CHECKPOINT_FILE).read_text()
    assert saved.splitlines()[1] == str(head)  # the last checkpoint it signed, kept

    restore_data(own_pg, tmp_path / "old")
    proc.start(wait=False)
    try:
        await answer(proc.base_url, "/ready", 503, "ledger_regressed", 60)
        if not WORKERS:
            assert code_of(await answer(proc.base_url, "/health", 503)) == "ledger_regressed"
    finally:
        proc.stop()

    accepting = ServerProcess(
        database_url=url,
        data_dir=data_dir,
        env={**NO_RATE_LIMIT, "TOKEX_ACCEPT_LEDGER_REGRESSION": "1"},
    )
    accepting.start(60)  # a deliberate restore: served, and its head saved from now on
    try:
        ready = await answer(accepting.base_url, "/ready", 200)
        assert ready.json()["ledger_size"] < head
    finally:
        accepting.stop()
    assert json.dumps(saved) != json.dumps((data_dir / CHECKPOINT_FILE).read_text())
