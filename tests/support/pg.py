"""The PostgreSQL server of a test run, and throw-away databases on it."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from ops.database import _import_pgserver, with_database


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgServer:
    """Either an embedded pgserver cluster in a temp dir (deleted at the end), or the
    server named by DATABASE_URL (left as found; `restart` unsupported)."""

    def __init__(self, external_url: str | None = None) -> None:
        self.external_url = external_url
        self._server: Any = None
        self._tmp: Path | None = None
        if external_url is None:
            pgserver = _import_pgserver()
            self._tmp = Path(tempfile.mkdtemp(prefix="tokex-pg-"))
            self._server = pgserver.get_server(self._tmp / "pg", cleanup_mode="delete")

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def url(self, dbname: str = "postgres") -> str:
        if self.external_url is not None:
            return with_database(self.external_url, dbname)
        return str(self._server.get_uri(dbname))

    def stop(self, mode: str = "fast") -> None:
        """Stop PostgreSQL (`mode="immediate"` is a crash: no checkpoint, WAL replay on start)."""
        self._require_embedded()
        pg_ctl = _import_pgserver()._commands.pg_ctl  # generated at import: invisible to mypy
        pg_ctl(
            ["-w", "-m", mode, "stop"], pgdata=self._server.pgdata, user=self._server.system_user
        )

    def start(self) -> None:
        self._require_embedded()
        with self._server._lock:
            self._server.ensure_postgres_running()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def _require_embedded(self) -> None:
        if not self.embedded:
            import pytest

            pytest.skip("restarting PostgreSQL is only supported on the embedded server")

    def close(self) -> None:
        if self._server is not None:
            self._server.cleanup()
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
