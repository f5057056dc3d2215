"""Where the database is, and how to talk to it.

`DATABASE_URL` set: that PostgreSQL is used as is. Unset: an embedded
PostgreSQL from the `pgserver` wheel runs in `<data-dir>/pg`, listening on a
unix socket only, so a fresh machine needs nothing but pip.

Sharing one data dir between several `tokex` processes (say `tokex serve` and
a `tokex migrate` or `tokex db-url` next to it) is safe because:

* pgserver serialises start-up under an inter-process file lock, and
  PostgreSQL itself refuses a second postmaster on the same cluster
  (`postmaster.pid`), so there is only ever one server per data dir;
* every process that holds a handle records its pid in
  `<data-dir>/pg/.handle_pids.json`; with `stop_on_exit=True` the server is
  stopped only by the *last* handle to exit, never under a live process.
  A process killed with SIGKILL cannot remove its pid, which would keep the
  server running forever; so before taking a handle we drop the pids of
  processes that no longer exist (under pgserver's own lock).

Durability stays on: we never touch `fsync`, `synchronous_commit` or
`full_page_writes`, and `durability_problems` lets `tokex serve` warn loudly
if a server it was pointed at has them off.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ops.config import Settings
from schemas.errors import DomainError, ErrorKind

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

#: Handles we hold, keyed by cluster path: keeps them alive for the process lifetime.
_handles: dict[Path, PostgresServer] = {}


def _import_pgserver() -> Any:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.postgres_server

    return pgserver


def _prune_dead_handle_pids(pg_path: Path) -> None:
    """Forget handle pids of processes that died without cleaning up (kill -9)."""
    pid_file = pg_path / ".handle_pids.json"
    if not pid_file.exists():
        return
    try:
        pids = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
    if alive != pids:
        pid_file.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    """Running, and not a zombie (a killed process nobody has reaped yet is not alive)."""
    import psutil  # a dependency of pgserver

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but we may not look at it: assume alive (the safe side)


def embedded_server(data_dir: Path, *, stop_on_exit: bool = True) -> PostgresServer:
    """Start (or join) the embedded PostgreSQL in `<data_dir>/pg` and return its handle.

    With `stop_on_exit` the server stops when the last process holding a handle
    exits; without it, the server is left running (what `tokex db-url` wants,
    so the printed DSN stays usable).
    """
    pgserver = _import_pgserver()
    data_dir = data_dir.expanduser().resolve()
    pg_path = data_dir / "pg"
    if pg_path in _handles:
        return _handles[pg_path]
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lock = pgserver.postgres_server.PostgresServer._lock
        with lock:
            _prune_dead_handle_pids(pg_path)
        server: PostgresServer = pgserver.get_server(
            pg_path, cleanup_mode="stop" if stop_on_exit else None
        )
    _handles[pg_path] = server
    log.info("embedded PostgreSQL running in %s", pg_path)
    return server


def remove_embedded(data_dir: Path) -> bool:
    """Give up this process's handle on the embedded PostgreSQL in `data_dir` and, once it
    has stopped, delete the directory: for scratch data dirs (benchmarks), whose database
    grows by gigabytes a run. If the server still runs (another process holds a handle),
    nothing is deleted. Returns whether the directory is gone."""
    pg_path = data_dir.expanduser().resolve() / "pg"
    server = _handles.pop(pg_path, None)
    if server is not None:
        server.cleanup()  # stops it if ours was the last handle
    if (pg_path / "postmaster.pid").exists():  # PostgreSQL removes it when it stops
        log.warning("PostgreSQL in %s still runs; not deleting %s", pg_path, data_dir)
        return False
    try:
        shutil.rmtree(data_dir)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not delete %s: %s", data_dir, exc)
        return False
    return True


def database_url(settings: Settings, *, stop_on_exit: bool = True) -> str:
    """The DSN to use: `settings.database_url`, or the embedded server's (started if needed)."""
    if settings.database_url:
        return settings.database_url
    server = embedded_server(settings.data_path, stop_on_exit=stop_on_exit)
    return str(server.get_uri("postgres"))


PoolInit = Callable[[asyncpg.Connection], Awaitable[None]]


async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    init: PoolInit | None = None,
    command_timeout: float | None = 30.0,
) -> asyncpg.Pool:
    """Open an asyncpg pool on `url` (plain DSN; unix sockets via `?host=/dir` work).

    `min_size=1` keeps one warm connection and makes start-up fail fast when the
    database is unreachable. `init` runs once per new connection (type codecs,
    session settings). The sequencer's single writer needs few connections; the
    rest serve reads (health, reports).
    """
    pool = await asyncpg.create_pool(
        dsn=url,
        min_size=min_size,
        max_size=max_size,
        init=init,
        command_timeout=command_timeout,
        server_settings={"application_name": "tokex"},
    )
    assert pool is not None
    return pool


async def durability_problems(conn: asyncpg.Connection) -> list[str]:
    """Settings that would let PostgreSQL acknowledge a commit that is not on disk."""
    problems = []
    for name in ("fsync", "synchronous_commit", "full_page_writes"):
        value = await conn.fetchval(f"SHOW {name}")
        # synchronous_commit may also be local/remote_write/remote_apply: all flush locally.
        if value == "off":
            problems.append(f"{name}=off")
    return problems


class DatabaseUnreachable(DomainError):
    """The database did not answer (down, restarting, or the pool is closed)."""

    code = "database_unreachable"
    kind = ErrorKind.UNAVAILABLE


#: What asyncpg raises when it cannot reach or keep a connection.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


def with_database(url: str, dbname: str) -> str:
    """`url` with its database name replaced (keeps user, host, `?host=/socket/dir`)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


async def connect(url: str) -> asyncpg.Connection:
    """One connection (for the CLI, migrations); an unreachable database is a DomainError."""
    try:
        return await asyncpg.connect(url)
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnreachable(f"cannot reach the database: {exc}") from exc
