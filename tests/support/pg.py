"""The PostgreSQL server of a test run, and throw-away databases on it."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from ops.database import EmbeddedPostgres, open_embedded, with_database


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgServer:
    """Either an embedded PostgreSQL cluster in a temp dir (deleted at the end), or the
    server named by DATABASE_URL (left as found; `restart` unsupported)."""

    def __init__(self, external_url: str | None = None) -> None:
        self.external_url = external_url
        self._server: EmbeddedPostgres | None = None
        self._tmp: Path | None = None
        if external_url is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="tokex-pg-"))
            self._server = open_embedded(self._tmp / "pg", cleanup_mode="delete")

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def url(self, dbname: str = "postgres") -> str:
        if self.external_url is not None:
            return with_database(self.external_url, dbname)
        assert self._server is not None
        return self._server.url(dbname)

    def stop(self, mode: str = "fast") -> None:
        """Stop PostgreSQL (`mode="immediate"` is a crash: no checkpoint, WAL replay on start)."""
        server = self._require_embedded()
        server.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        server = self._require_embedded()
        while not server.ensure_running():  # a killed postmaster not yet reaped
            time.sleep(0.05)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def _require_embedded(self) -> EmbeddedPostgres:
        if self._server is None:
            import pytest

            pytest.skip("restarting PostgreSQL is only supported on the embedded server")
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.release()
            self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    async def create_database(self, template: str = "template0") -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(
                f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(template)}"
            )
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.url("postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        finally:
            await admin.close()

    @asynccontextmanager
    async def fresh_database(self, template: str = "template0") -> AsyncIterator[str]:
        """A new database (a copy of `template`) for the block; yields its URL, drops it after."""
        name = await self.create_database(template)
        try:
            yield self.url(name)
        finally:
            await self.drop_database(name)
