"""The exchange's own database role: what `tokex db grant-app ROLE` grants it, and no more.

Why: the append-only tables refuse UPDATE, DELETE and TRUNCATE by trigger, but their owner
may `ALTER TABLE ... DISABLE TRIGGER USER` and a superuser may `SET session_replication_role
= replica`. The role that migrates owns the tables, so an exchange serving as that role
holds credentials that can rewrite the ledger. Served as another role, granted here (and
started with `TOKEX_MIGRATE=0`, since it cannot migrate), it can append to those tables and
nothing more, and its credentials cannot switch the triggers off. The tables it may
UPDATE and DELETE are not trusted for that: the balance snapshot (`ledger_balances`,
`ledger_hold_state`, `ledger_snapshot`), which every snapshot rewrites, is sealed by the
exchange's signing key and not loaded if the seal fails (`ledger.seal`); so are the books'
snapshots (`market_snapshots`, `market.snapshots`). What it may append is not trusted past
what the exchange signed either: journal rows past the last signed checkpoint are refused
at start (`ledger.log.UnsignedJournal`).

What the exchange does with its database (ledger/, market/, ops/): SELECT; INSERT (also
with ON CONFLICT DO NOTHING and DO UPDATE); UPDATE and DELETE on its mutable tables;
advisory locks, `pg_locks` and LISTEN/NOTIFY of key revocations (no privilege needed);
`LOCK TABLE` of the balance snapshot's tables while it writes one (EXCLUSIVE mode, allowed
by UPDATE); SHOW of durability settings. No TRUNCATE, CREATE, COPY or temporary table.
So, on each table of the schema:

* SELECT and INSERT;
* UPDATE unless a trigger refuses UPDATE, DELETE unless a trigger refuses DELETE (the
  append-only tables refuse both; `market_reports` refuses only DELETE);
* `schema_migrations`: SELECT only (the app role never migrates);
* sequences: USAGE and SELECT; the schema: USAGE.

Never TRUNCATE, REFERENCES, TRIGGER, ownership or a role membership. Each table's and
sequence's privileges of the role are revoked first, in the same transaction: running it
again (after a migration added tables, or after someone granted more by hand) leaves
exactly this set.
"""

from __future__ import annotations

import asyncpg
import msgspec

from market.schema import require_current
from schemas.errors import DomainError, ErrorKind

#: Trigger functions that refuse a change outright (`ledger_make_append_only`'s, and the
#: older one of `gateway_receipts`).
REFUSING_FUNCTIONS = ("ledger_refuse_change", "gateway_receipts_append_only")
#: The migration runner's table: read (schema version, `TOKEX_MIGRATE=0`), never written.
READ_ONLY_TABLES = frozenset({"schema_migrations"})

# pg_trigger.tgtype bits (PostgreSQL's TRIGGER_TYPE_DELETE and TRIGGER_TYPE_UPDATE).
_DELETE, _UPDATE = 8, 16

_TABLES = f"""
SELECT c.relname AS name,
       coalesce(bool_or(t.tgtype & {_UPDATE} <> 0), false) AS refuses_update,
       coalesce(bool_or(t.tgtype & {_DELETE} <> 0), false) AS refuses_delete
  FROM pg_class c
  LEFT JOIN pg_trigger t
         ON t.tgrelid = c.oid
        AND t.tgfoid IN (SELECT p.oid FROM pg_proc p
                          WHERE p.proname = ANY($2::text[]) AND p.pronamespace = c.relnamespace)
 WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p')
 GROUP BY c.relname
 ORDER BY c.relname
"""

_SEQUENCES = """
SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'S'
 ORDER BY relname
"""

# Why a role could switch the append-only triggers off, or make itself able to.
_BYPASS = """
SELECT r.rolsuper AS superuser,
       r.rolcreaterole AS createrole,
       (SELECT array_agg(DISTINCT pg_get_userbyid(c.relowner) ORDER BY pg_get_userbyid(c.relowner))
          FROM pg_class c
         WHERE c.relnamespace = $2::regnamespace AND c.relkind IN ('r', 'p', 'S')
           AND pg_has_role(r.oid, c.relowner, 'MEMBER')) AS owners,
       pg_has_role(r.oid, (SELECT nspowner FROM pg_namespace WHERE oid = $2::regnamespace),
                   'MEMBER') AS schema_owner,
       current_setting('server_version_num')::int >= 150000
         AND has_parameter_privilege(r.oid, 'session_replication_role', 'SET') AS replica
  FROM pg_roles r
 WHERE r.rolname = $1
"""


class AppRoleRefused(DomainError):
    """The role cannot be the exchange's app role (it does not exist, or it could switch the
    append-only triggers off)."""

    code = "app_role_refused"
    kind = ErrorKind.INVALID


class TableGrant(msgspec.Struct, frozen=True):
    table: str
    privileges: tuple[str, ...]

    @property
    def append_only(self) -> bool:
        return "UPDATE" not in self.privileges and "DELETE" not in self.privileges


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_privileges(name: str, *, refuses_update: bool, refuses_delete: bool) -> tuple[str, ...]:
    """What the app role gets on one table (never TRUNCATE, REFERENCES or TRIGGER)."""
    if name in READ_ONLY_TABLES:
        return ("SELECT",)
    return (
        "SELECT",
        "INSERT",
        *(() if refuses_update else ("UPDATE",)),
        *(() if refuses_delete else ("DELETE",)),
    )


async def bypass_reasons(conn: asyncpg.Connection, role: str, schema: str) -> list[str] | None:
    """Why `role` could disable the append-only triggers of `schema` (empty: it cannot);
    None if there is no such role."""
    row = await conn.fetchrow(_BYPASS, role, schema)
    if row is None:
        return None
    reasons = []
    if row["superuser"]:
        reasons.append("it is a superuser")
    if row["createrole"]:
        reasons.append("it has CREATEROLE (it could make itself a member of the owner)")
    if row["owners"]:
        reasons.append(f"it owns the tables (as, or as a member of, {', '.join(row['owners'])})")
    if row["schema_owner"]:
        reasons.append(f"it owns the schema {schema}")
    if row["replica"]:
        reasons.append("it may SET session_replication_role")
    return reasons


async def _check_role(conn: asyncpg.Connection, role: str, schema: str) -> None:
    reasons = await bypass_reasons(conn, role, schema)
    if reasons is None:
        raise AppRoleRefused(
            f"there is no role {role}: create it first (CREATE ROLE {quote_ident(role)} "
            "LOGIN PASSWORD '...'), then grant it"
        )
    if reasons:
        raise AppRoleRefused(
            f"role {role} cannot be the exchange's app role: {'; '.join(reasons)}, so it "
            "could switch the append-only triggers off. Use a role that owns nothing"
        )


async def grant_app(conn: asyncpg.Connection, role: str) -> list[TableGrant]:
    """Grant `role` what `tokex serve` needs on the current schema and nothing more (see
    the module's docstring); the grant of each table. Run as the tables' owner, on a
    database at the latest migration (else `SchemaNotCurrent`)."""
    await require_current(conn)
    async with conn.transaction():
        schema: str = await conn.fetchval("SELECT current_schema()")
        await _check_role(conn, role, schema)
        who, where = quote_ident(role), quote_ident(schema)
        await conn.execute(f"GRANT USAGE ON SCHEMA {where} TO {who}")
        grants = []
        for row in await conn.fetch(_TABLES, schema, list(REFUSING_FUNCTIONS)):
            privileges = table_privileges(
                row["name"],
                refuses_update=row["refuses_update"],
                refuses_delete=row["refuses_delete"],
            )
            table = f"{where}.{quote_ident(row['name'])}"
            await conn.execute(f"REVOKE ALL ON TABLE {table} FROM {who}")
            await conn.execute(f"GRANT {', '.join(privileges)} ON TABLE {table} TO {who}")
            grants.append(TableGrant(row["name"], privileges))
        for name in await conn.fetch(_SEQUENCES, schema):
            sequence = f"{where}.{quote_ident(name['relname'])}"
            await conn.execute(f"REVOKE ALL ON SEQUENCE {sequence} FROM {who}")
            await conn.execute(f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {who}")
    return grants
