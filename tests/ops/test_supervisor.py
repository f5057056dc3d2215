"""The database supervisor on a real embedded PostgreSQL: it restarts a killed one, gives up
after its bounded attempts when it cannot start, and reopens the exchange once the database
answers again, however it came back."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.database import EmbeddedPostgres, open_embedded, postmaster_pid
from ops.supervisor import DatabaseState, DatabaseSupervisor


@pytest.fixture
def embedded(pg_data_dir: Path) -> Iterator[EmbeddedPostgres]:
    pg_data_dir.mkdir(parents=True)
    server = open_embedded(pg_data_dir / "pg", cleanup_mode="stop")
    try:
        yield server
    finally:
        server.release()


def kill_postmaster(server: EmbeddedPostgres) -> int:
    pid = postmaster_pid(server.pg_path)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_for(supervisor: DatabaseSupervisor, state: DatabaseState, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while supervisor.state is not state:
        assert time.monotonic() < deadline, f"still {supervisor.state}, not {state}"
        await asyncio.sleep(0.05)


async def test_a_killed_postgresql_is_restarted_and_the_exchange_reopened(
    embedded: EmbeddedPostgres,
) -> None:
    reopened: list[float] = []

    async def reopen() -> None:
        reopened.append(time.monotonic())

    supervisor = DatabaseSupervisor(
        embedded.url(), embedded=embedded, reopen=reopen, probe_interval_ms=100
    )
    supervisor.start()
    try:
        await asyncio.sleep(0.3)
        assert supervisor.ready and reopened == []  # nothing lost, nothing to reopen
        killed = kill_postmaster(embedded)
        deadline = time.monotonic() + 30.0
        while not reopened:
            assert time.monotonic() < deadline, supervisor.state
            await asyncio.sleep(0.05)
        assert supervisor.ready and supervisor.outages == 1 and len(reopened) == 1
        assert postmaster_pid(embedded.pg_path) not in (None, killed)
    finally:
        await supervisor.close()


async def test_restarts_are_bounded_and_a_database_started_by_someone_else_is_taken_back(
    embedded: EmbeddedPostgres,
) -> None:
    reopened: list[float] = []

    async def reopen() -> None:
        reopened.append(time.monotonic())

    supervisor = DatabaseSupervisor(
        embedded.url(),
        embedded=embedded,
        reopen=reopen,
        probe_interval_ms=100,
        restart_attempts=3,
        first_backoff_ms=50,
        max_backoff_ms=100,
    )
    conf = embedded.pg_path / "postgresql.conf"
    good = conf.read_text()
    supervisor.start()
    try:
        await asyncio.sleep(0.3)
        conf.write_text(good + "\nnot a setting at all\n")  # PostgreSQL cannot start now
        kill_postmaster(embedded)
        await wait_for(supervisor, DatabaseState.GAVE_UP, 60.0)
        assert supervisor.retry_after_s > 1
        assert reopened == []
        conf.write_text(good)
        await asyncio.sleep(1.0)
        assert supervisor.state is DatabaseState.GAVE_UP  # it gave up: no more restarts
        while not await asyncio.to_thread(embedded.ensure_running):  # an operator starts it
            await asyncio.sleep(0.1)
        await wait_for(supervisor, DatabaseState.UP, 30.0)
        assert len(reopened) == 1
    finally:
        await supervisor.close()
