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
from tests.support import pg_reuse


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgServer:
    """Either an embedded PostgreSQL cluster in a temp dir (deleted at the end), or the
    server named by DATABASE_URL (left as found; `restart` unsupported)."""

    def __init__(self, external_url: str | None = None) -> None:
        self.external_url = external_url
        #: Per template: what a fresh copy holds, and emptied copies ready for a test.
        self._seeds: dict[str, pg_reuse.Seed] = {}
        self._spare: dict[str, list[str]] = {}
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
        """A fresh database (as a copy of `template` is) for the block; yields its URL.
        A copy of a template other than template0 is emptied after and used again if
        that makes it fresh (`pg_reuse`), else dropped."""
        spare = self._spare.get(template)
        name = spare.pop() if spare else await self.create_database(template)
        try:
            yield self.url(name)
        finally:
            if template != "template0" and await self._emptied(name, template):
                self._spare.setdefault(template, []).append(name)
            else:
                await self.drop_database(name)

    async def remember_seed(self, template: str, conn: asyncpg.Connection) -> None:
        """Read what a fresh copy of `template` holds (`conn` is on it)."""
        self._seeds[template] = await pg_reuse.read_seed(conn)

    async def _emptied(self, name: str, template: str) -> bool:
        """Whether database `name` is now as a fresh copy of `template` (see `pg_reuse`)."""
        try:
            if template not in self._seeds:
                conn = await asyncpg.connect(self.url(template))
                try:
                    self._seeds[template] = await pg_reuse.read_seed(conn)
                finally:
                    await conn.close()
            admin = await asyncpg.connect(self.url("postgres"))
            try:
                if not await pg_reuse.end_sessions(admin, name):
                    return False
            finally:
                await admin.close()
            conn = await asyncpg.connect(self.url(name))
            try:
                return await pg_reuse.empty(conn, self._seeds[template])
            finally:
                await conn.close()
        except (asyncpg.PostgresError, OSError):
            return False

    async def drop_spares(self, template: str) -> None:
        """Drop the emptied copies of `template` (before the template itself)."""
        for name in self._spare.pop(template, []):
            await self.drop_database(name)
