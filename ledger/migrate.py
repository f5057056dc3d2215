"""The schema migration runner.

Migrations are numbered SQL files, `<package>/migrations/NNNN_<name>.sql`,
shipped as package data. A schema may be made of several directories (an
application built on the ledger adds its own after the ledger's): their files
form one numbered sequence, 1..N across all of them, and are applied in that
order. A migration is recorded by number, name and checksum only, so moving a
file to another directory changes nothing for a database that applied it.
Applying works the same for one directory or several:

* under a session-level advisory lock, so concurrent runners (two `tokex`
  processes starting at once) apply each file exactly once;
* one transaction per file, together with its row in `schema_migrations`: a
  failing file leaves no trace, the files before it stay applied, and the
  runner stops there;
* each applied file's SHA-256 is recorded; if a file that was already applied
  changes later, the runner refuses to go on (`MigrationChecksumMismatch`):
  a migration is history, fix forward with a new file.

A file must therefore not contain transaction control (BEGIN/COMMIT) or
statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY).

`require_current` applies nothing: it checks the same records and names what is missing,
for a process that connects as a role owning no table (`TOKEX_MIGRATE=0`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from schemas.errors import DomainError, ErrorKind

#: pg_advisory_lock key shared by every runner: first 8 bytes of SHA-256("tokex.migrate").
LOCK_KEY = int.from_bytes(hashlib.sha256(b"tokex.migrate").digest()[:8], "big", signed=True)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(DomainError):
    """The migrations cannot be applied as they are."""

    code = "migration_error"
    kind = ErrorKind.UNAVAILABLE


class MigrationChecksumMismatch(MigrationError):
    """A migration that was already applied has been changed since."""

    code = "migration_checksum_mismatch"


class MigrationFailed(MigrationError):
    """A migration file raised an error; it was rolled back and the runner stopped."""

    code = "migration_failed"


class SchemaNotCurrent(MigrationError):
    """The database lacks migrations this code needs, and this process may not apply them."""

    code = "schema_not_current"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @classmethod
    def from_text(cls, filename: str, data: bytes) -> Migration:
        match = _FILE_RE.match(filename)
        if match is None:
            raise MigrationError(
                f"migration file {filename!r} is not named NNNN_<lowercase_name>.sql"
            )
        return cls(
            version=int(match.group(1)),
            name=match.group(2),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )


Directory = Traversable | Path | str
#: Where migrations come from: one directory, several, or the migrations themselves.
Source = Directory | Iterable[Directory] | Sequence[Migration]


def package_directory(package: str) -> Traversable:
    """The `migrations` directory shipped (as package data) inside `package`."""
    return resources.files(package) / "migrations"


def _files(directory: Directory) -> list[Migration]:
    root: Traversable = Path(directory) if isinstance(directory, str) else directory
    if not root.is_dir():
        return []
    return [
        Migration.from_text(entry.name, entry.read_bytes())
        for entry in root.iterdir()
        if entry.name.endswith(".sql") and entry.is_file()
    ]


def load_migrations(directories: Directory | Iterable[Directory]) -> list[Migration]:
    """Read and check the `*.sql` files of one directory or of several, as one sequence.

    Raises `MigrationError` if a file is misnamed, a number repeats (within a
    directory or across two), or the numbers are not contiguous from 1: a gap
    usually means a lost file (or a directory left out).
    """
    if isinstance(directories, (str, Path, Traversable)):
        directories = [directories]
    return check_sequence(m for directory in directories for m in _files(directory))


def check_sequence(migrations: Iterable[Migration]) -> list[Migration]:
    """Sort by version and require versions 1..N with no gap or repeat."""
    ordered = sorted(migrations, key=lambda m: m.version)
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migrations must be numbered 1..N without gaps or repeats: expected "
                f"{expected:04d}, found {migration.version:04d}_{migration.name}"
            )
    return ordered


async def schema_version(conn: asyncpg.Connection) -> int:
    """Highest applied migration, 0 on a database never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(version)


def _resolve(source: Source) -> list[Migration]:
    if isinstance(source, (str, Path, Traversable)):
        return load_migrations(source)
    items = list(source)  # read twice below: a generator would be empty the second time
    given = [item for item in items if isinstance(item, Migration)]
    directories = [item for item in items if not isinstance(item, Migration)]
    if given and directories:
        raise MigrationError("give migrations or directories of them, not both")
    return check_sequence(given) if given else load_migrations(directories)


async def _applied(conn: asyncpg.Connection) -> dict[int, str]:
    """version -> checksum of every applied migration (none on a database never migrated)."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _check_applied(applied: dict[int, str], migrations: Sequence[Migration]) -> None:
    """Every applied migration is one of `migrations`, unchanged since it was applied."""
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"database has migration {version:04d} applied, which this code does not "
                f"know (code has {len(known)}): is this an older tokex?"
            )
        if migration.checksum != checksum:
            raise MigrationChecksumMismatch(
                f"migration {version:04d}_{migration.name} changed after it was applied "
                f"(recorded sha256 {checksum}, file sha256 {migration.checksum}); "
                "add a new migration instead of editing an applied one"
            )


async def require_current(conn: asyncpg.Connection, migrations: Source) -> int:
    """Check, without changing anything, that every one of `migrations` is applied (and
    unchanged); the schema version. `SchemaNotCurrent` names the missing ones.

    For a process that may not migrate (it connects as a role that owns no table): the
    tables' owner runs the migrations beforehand.
    """
    wanted = _resolve(migrations)
    applied = await _applied(conn)
    _check_applied(applied, wanted)
    missing = [f"{m.version:04d}_{m.name}" for m in wanted if m.version not in applied]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise SchemaNotCurrent(
            f"the database is at schema version {max(applied, default=0)}, this code needs "
            f"{len(wanted)} (missing {shown}); run `tokex migrate` as the tables' owner first"
        )
    return len(wanted)


async def migrate(conn: asyncpg.Connection, migrations: Source) -> int:
    """Apply pending migrations; return the schema version afterwards.

    `migrations`: a directory, several (one numbered sequence across them), or a
    list of `Migration` (tests feed their own). `conn` must not be inside a transaction.
    """
    pending_all = _resolve(migrations)
    if conn.is_in_transaction():
        raise MigrationError("migrate() needs a connection outside any transaction")

    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        _check_applied(applied, pending_all)
        for migration in pending_all:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(
                    f"migration {migration.version:04d}_{migration.name} failed and was "
                    f"rolled back: {type(exc).__name__}: {exc}"
                ) from exc
        return await schema_version(conn)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
