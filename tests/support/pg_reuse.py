"""Test databases emptied and used again, instead of a new copy of the template each.

A copy of the migrated template (`CREATE DATABASE ... TEMPLATE`) costs ~0.25 s of the
2 cores the whole suite runs on (PostgreSQL copies every block of the template, its
catalogs included, ~9 MB, through the WAL), and most tests take one. Emptying a used
one costs a tenth of that: its sessions ended, every table truncated (the ledger's
append-only triggers off for this session only: `session_replication_role = replica`,
as a superuser), identities and sequences restarted, and the rows the migrations wrote
(`Seed`) put back.

It is used again only if it is then indistinguishable from a fresh copy: the same
`FINGERPRINT` as the template (relations with their owners, grants, row security and
replica identity; columns with their grants and defaults; constraints, indexes,
triggers and whether they are enabled, policies, rules, views, types, sequences'
parameters, functions with their owners and settings, schemas, default privileges,
extensions, large objects, database settings and grants), every table holding exactly
its seed rows. A test that changed anything else
(a grant, a trigger disabled, a table added) fails the check, and its database is
dropped as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


FINGERPRINT = """
SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM (
  SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' '
         || c.relowner::regrole::text || ' ' || coalesce(c.relacl::text, '')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT 'col ' || a.attrelid::regclass::text || '.' || a.attname || ' '
         || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
     AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT 'trg ' || tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text
    FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' '
         || coalesce(p.proacl::text, '')
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'ns ' || nspname || ' ' || nspowner::regrole::text || ' ' || coalesce(nspacl::text, '')
    FROM pg_namespace
  UNION ALL
  SELECT 'set ' || coalesce(setrole::regrole::text, '-') || ' ' || setconfig::text
    FROM pg_db_role_setting
   WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL
  SELECT 'db ' || coalesce(datacl::text, '') FROM pg_database
   WHERE datname = current_database()
  UNION ALL
  SELECT 'evt ' || evtname || ' ' || evtenabled::text FROM pg_event_trigger
  UNION ALL
  SELECT 'pub ' || pubname FROM pg_publication
  UNION ALL
  SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' '
         || pg_get_constraintdef(oid) || ' ' || convalidated::text
    FROM pg_constraint WHERE connamespace NOT IN (SELECT oid FROM pg_namespace
         WHERE nspname IN ('pg_catalog', 'information_schema'))
  UNION ALL
  SELECT 'def ' || adrelid::regclass::text || ' ' || adnum::text || ' '
         || pg_get_expr(adbin, adrelid) FROM pg_attrdef
  UNION ALL
  SELECT 'idx ' || schemaname || ' ' || indexdef FROM pg_indexes
   WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'rls ' || c.oid::regclass::text || ' ' || c.relrowsecurity::text || ' '
         || c.relforcerowsecurity::text || ' ' || c.relreplident::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT 'pol ' || polrelid::regclass::text || ' ' || polname || ' ' || polcmd::text || ' '
         || coalesce(pg_get_expr(polqual, polrelid), '') || ' '
         || coalesce(pg_get_expr(polwithcheck, polrelid), '') FROM pg_policy
  UNION ALL
  SELECT 'type ' || t.oid::regtype::text || ' ' || t.typtype::text || ' '
         || coalesce((SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder)
                        FROM pg_enum WHERE enumtypid = t.oid), '')
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  UNION ALL
  SELECT 'dacl ' || defaclrole::regrole::text || ' ' || defaclobjtype::text || ' '
         || defaclacl::text FROM pg_default_acl
  UNION ALL
  SELECT 'colacl ' || attrelid::regclass::text || '.' || attname || ' ' || attacl::text
    FROM pg_attribute WHERE attacl IS NOT NULL
  UNION ALL
  SELECT 'fnx ' || p.oid::regprocedure::text || ' ' || p.proowner::regrole::text || ' '
         || p.prosecdef::text || ' ' || coalesce(p.proconfig::text, '')
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'rule ' || schemaname || '.' || tablename || ' ' || definition FROM pg_rules
   WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  UNION ALL
  SELECT 'seq ' || seqrelid::regclass::text || ' ' || seqtypid::regtype::text || ' '
         || seqstart || ' ' || seqincrement || ' ' || seqmax || ' ' || seqmin || ' '
         || seqcache || ' ' || seqcycle::text FROM pg_sequence
  UNION ALL
  SELECT 'ext ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL
  SELECT 'lo ' || count(*)::text FROM pg_largeobject_metadata
) f(x)
"""

TABLES = """
SELECT schemaname, tablename FROM pg_tables
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2
"""

SEQUENCES = """
SELECT schemaname, sequencename FROM pg_sequences
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2
"""

Table = tuple[str, str]  # (schema, name)


def _qualified(table: Table) -> str:
    return f"{_ident(table[0])}.{_ident(table[1])}"


#: How long emptying a database may wait for a lock or for its sessions to end.
RESET_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Seed:
    """What a fresh copy of the template holds: its fingerprint, and the rows of each
    table the migrations wrote to (those tables by name, with their columns)."""

    fingerprint: str
    tables: tuple[Table, ...]
    rows: dict[Table, tuple[tuple[str, ...], list[asyncpg.Record]]]


async def read_seed(conn: asyncpg.Connection) -> Seed:
    """The template's `Seed` (read on a connection to it)."""
    tables = tuple((r[0], r[1]) for r in await conn.fetch(TABLES))
    rows: dict[Table, tuple[tuple[str, ...], list[asyncpg.Record]]] = {}
    for table in tables:
        records = await conn.fetch(f"SELECT * FROM {_qualified(table)}")
        if records:
            rows[table] = (tuple(records[0].keys()), records)
    return Seed(await conn.fetchval(FINGERPRINT), tables, rows)


async def end_sessions(admin: asyncpg.Connection, name: str) -> bool:
    """End every session on database `name` (but the caller's); whether they ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESET_TIMEOUT_S
    while True:
        left = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        if not left:
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


async def empty(conn: asyncpg.Connection, seed: Seed) -> bool:
    """Empty the database `conn` is on back to `seed`; whether it now is a fresh copy."""
    if await conn.fetchval(FINGERPRINT) != seed.fingerprint:
        return False
    tables = tuple((r[0], r[1]) for r in await conn.fetch(TABLES))
    if tables != seed.tables:
        return False
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{int(RESET_TIMEOUT_S * 1000)}ms'")
        await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
        await conn.execute(f"TRUNCATE {', '.join(map(_qualified, tables))} RESTART IDENTITY")
        for sequence in await conn.fetch(SEQUENCES):
            await conn.execute(f"ALTER SEQUENCE {_qualified((sequence[0], sequence[1]))} RESTART")
        for (schema, name), (columns, records) in seed.rows.items():
            await conn.copy_records_to_table(
                name, schema_name=schema, columns=list(columns),
                records=[tuple(r) for r in records],
            )  # fmt: skip
    return True
