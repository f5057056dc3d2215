"""The rows a batch adds to many tables, written by one SQL statement.

A batch of the exchange touches up to a dozen tables (transactions, entries, holds, Merkle
nodes, the checkpoint, and the application's own rows through `also_write`). Written table
by table, that was some fifteen round trips to PostgreSQL per batch (a binary COPY is two),
and on a busy event loop each round trip waits its turn behind the requests being served:
the commit took most of the sequencer's cycle. Here every table's rows become one
data-modifying CTE, `INSERT ... SELECT * FROM unnest($1::type[], ...)`, and the whole batch is
one statement: one round trip, and outside a transaction block its own atomic commit (all of
it or none of it).

Column types come from the catalog (once per table and process), so callers name only
columns. Rows that give every column of their table, in order, travel as one array of the
table's row type (`unnest($1::table[])`), which asyncpg encodes several times faster than
an array per column. An upsert passes its `ON CONFLICT` clause. Rows can be deleted by key
in the same statement (`delete`: a CTE `DELETE ... WHERE key = ANY($n)`).

Every part of the statement sees the same snapshot, and none sees another's rows: stage
each key at most once per statement (an upsert of the same row twice fails the whole
statement; a row inserted by one part is not seen by another's delete). The catalog is
read again after `forget_table_layouts` (the writer calls it when a batch fails: a
migration may have changed a table under a running server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

#: (table, column) -> SQL type, and table -> its columns in order, read from the catalog on
#: first use.
_column_types: dict[tuple[str, str], str] = {}
_table_columns: dict[str, tuple[str, ...]] = {}


class UnknownTable(LookupError):
    """A table the catalog does not have (not visible on the connection's search path)."""


def forget_table_layouts() -> None:
    """Read tables' columns from the catalog again on next use (after a failed batch)."""
    _column_types.clear()
    _table_columns.clear()


class BatchRows:
    """Rows staged for several tables; `execute` writes them all in one statement."""

    __slots__ = ("_deletes", "_parts")

    def __init__(self) -> None:
        self._parts: list[tuple[str, tuple[str, ...], Sequence[tuple[Any, ...]], str]] = []
        self._deletes: list[tuple[str, str, Sequence[Any]]] = []

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        records: Sequence[tuple[Any, ...]],
        *,
        on_conflict: str = "",
    ) -> None:
        """Stage `records` (tuples in `columns` order) for `table`; nothing if empty."""
        if records:
            self._parts.append((table, tuple(columns), records, on_conflict))

    def delete(self, table: str, column: str, keys: Sequence[Any]) -> None:
        """Stage the deletion of `table`'s rows whose `column` is one of `keys`."""
        if keys:
            self._deletes.append((table, column, keys))

    def __bool__(self) -> bool:
        return bool(self._parts or self._deletes)

    def tables(self) -> list[str]:
        """The tables staged so far, in order, inserts then deletes (for tests and logs)."""
        return [table for table, *_ in self._parts] + [table for table, *_ in self._deletes]

    async def execute(self, conn: asyncpg.Connection) -> None:
        """Write every staged row in one statement (atomic by itself outside a
        transaction block; inside one, part of it)."""
        if not self:
            return
        await _load_types(conn, set(self.tables()))
        ctes: list[str] = []
        args: list[list[Any]] = []
        for n, (table, columns, records, on_conflict) in enumerate(self._parts):
            if columns == _table_columns[table]:
                # Every column, in order: one array of the table's row type. asyncpg then
                # encodes a record per row, not an array element per value (each element
                # costs it an isinstance check against an ABC: most of the encoding time).
                args.append(list(records))
                source = f"${len(args)}::{table}[]"
            else:
                params: list[str] = []
                for column, values in zip(columns, zip(*records, strict=True), strict=True):
                    args.append(list(values))
                    params.append(f"${len(args)}::{_column_types[table, column]}[]")
                source = ", ".join(params)
            ctes.append(
                f"w{n} AS (INSERT INTO {table} ({', '.join(columns)}) "
                f"SELECT * FROM unnest({source}) {on_conflict})"
            )
        for n, (table, column, keys) in enumerate(self._deletes):
            args.append(list(keys))
            key = f"${len(args)}::{_column_types[table, column]}[]"
            ctes.append(f"d{n} AS (DELETE FROM {table} WHERE {column} = ANY({key}))")
        await conn.execute(f"WITH {', '.join(ctes)} SELECT 1", *args)


async def _load_types(conn: asyncpg.Connection, tables: set[str]) -> None:
    missing = sorted(t for t in tables if t not in _table_columns)
    if not missing:
        return
    # The bare type (format_type without the modifier): a cast to varchar(n) would cut
    # a longer value short silently, where the insert itself refuses it.
    rows = await conn.fetch(
        """SELECT c.relname, a.attname, format_type(a.atttypid, NULL) AS type
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.relname = ANY($1::text[]) AND c.relkind IN ('r', 'p')
              AND a.attnum > 0 AND NOT a.attisdropped
              AND pg_table_is_visible(c.oid)
            ORDER BY c.relname, a.attnum""",
        missing,
    )
    columns: dict[str, list[str]] = {table: [] for table in missing}
    for row in rows:
        columns[row["relname"]].append(row["attname"])
    absent = sorted(table for table, names in columns.items() if not names)
    if absent:
        raise UnknownTable(f"no such table: {', '.join(absent)}")
    for row in rows:
        _column_types[row["relname"], row["attname"]] = row["type"]
    for table, names in columns.items():
        _table_columns[table] = tuple(names)
