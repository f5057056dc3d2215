"""`tokex db grant-app ROLE`: make ROLE the role `tokex serve` connects as.

Run with the owner's `DATABASE_URL` (the role that ran `tokex migrate`); then serve with
ROLE in `DATABASE_URL` and `TOKEX_MIGRATE=0`. What is granted, and why, is in
`ops.db_grants`. On the embedded PostgreSQL (no `DATABASE_URL`) it works too, but is no
boundary there: the superuser's password is in `<data-dir>/pg/tokex.pgpass`, which the
user running tokex can read (no other user can reach that cluster: `ops.embedded_access`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ops.cli import add_database_options, settings_from_args

if TYPE_CHECKING:  # the module imports asyncpg: only once the command runs
    from ops.db_grants import TableGrant

log = logging.getLogger("tokex")


async def _grant(url: str, role: str) -> list[TableGrant]:
    from ops.database import connect
    from ops.db_grants import grant_app

    conn = await connect(url)
    try:
        return await grant_app(conn, role)
    finally:
        await conn.close()


def _grant_app(args: argparse.Namespace) -> int:
    from ops.database import database_url

    settings = settings_from_args(args)
    if settings.database_url is None:
        log.warning(
            "the embedded PostgreSQL's superuser password is in <data-dir>/pg/tokex.pgpass, "
            "which the user running tokex can read: an app role there is no boundary "
            "against that user (use an external PostgreSQL with DATABASE_URL for that)"
        )
    grants = asyncio.run(_grant(database_url(settings), args.role))
    for grant in grants:
        print(f"{grant.table}: {', '.join(grant.privileges)}")
    append_only = sum(grant.append_only for grant in grants)
    print(
        f"granted {args.role} what tokex serve needs on {len(grants)} tables "
        f"({append_only} of them without UPDATE or DELETE); "
        f"serve as {args.role} with TOKEX_MIGRATE=0"
    )
    return 0


def register(subparsers: Any) -> None:
    db = subparsers.add_parser("db", help="the exchange's database roles")
    commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    grant = commands.add_parser(
        "grant-app",
        help="grant ROLE what `tokex serve` needs and no more (run as the tables' owner, "
        "after `tokex migrate`; then serve as ROLE with TOKEX_MIGRATE=0)",
    )
    grant.add_argument("role", metavar="ROLE", help="an existing role that owns nothing")
    add_database_options(grant)
    grant.set_defaults(handler=_grant_app)
