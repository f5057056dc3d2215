"""The exchange's database schema: the ledger's migrations and the market's.

`ledger/migrations` holds the generic ledger's tables (0001 entries, holds and
balance snapshots; 0002 the Merkle log, checkpoints and keys); `market/migrations`
the market's (0003 accounts and their keys, 0004 instruments, journal, orders and
fills, 0005 deliveries, settlements and withdrawals, 0006 snapshots of the books;
then the ledger's 0007, an index of the open holds). Their files are one numbered
sequence, applied in that order by `ledger.migrate` and recorded by number, name
and checksum, exactly as when they all lived in `ledger/migrations`.
A new migration takes the next number, in the directory of the layer whose tables
it changes.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable

import asyncpg

from ledger import migrate as runner
from ledger.migrate import Migration

__all__ = ["DIRECTORIES", "load_migrations", "migrate", "require_current"]

#: Every directory of the exchange's migrations (one sequence across them).
DIRECTORIES: tuple[Traversable, ...] = (
    runner.package_directory("ledger"),
    runner.package_directory("market"),
)


def load_migrations() -> list[Migration]:
    """The exchange's migrations, checked (names, one contiguous numbering), in order."""
    return runner.load_migrations(DIRECTORIES)


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the exchange's pending migrations; the schema version afterwards."""
    return await runner.migrate(conn, load_migrations())


async def require_current(conn: asyncpg.Connection) -> int:
    """The schema version, if every one of the exchange's migrations is applied; else
    `SchemaNotCurrent` (nothing is changed: for `TOKEX_MIGRATE=0`)."""
    return await runner.require_current(conn, load_migrations())
