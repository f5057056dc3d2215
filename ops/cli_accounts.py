"""`tokex accounts ...`: accounts of the exchange, straight in the database.

tokex accounts create --role ROLE --name NAME [--public-key FILE] [--out FILE] [--json]
    Create an account (any role: this is how the first operator is made, before any signed
    request is possible). With `--public-key FILE` (PEM SubjectPublicKeyInfo, or base64 of
    the raw 32 bytes) the account gets that key. Without it, a key pair is generated and the
    private key written to `--out` (default `<data-dir>/keys/<account_id>.pem`): unencrypted
    PKCS#8 PEM, mode 0600, never overwriting a file; `TokexClient.from_key_file` loads it.
    Prints what was created; `--json` prints one line
    `{"account_id": ..., "key_id": ...}` (where a generated key went, on stderr; by
    default `<data-dir>/keys/<account_id>.pem`).

Migrations are applied first, so this works on a fresh data dir (with `TOKEX_MIGRATE=0`,
as the app role of `tokex db grant-app`: only checked to be all applied).

tokex accounts list [--role ROLE] [--json] (--url, --key-id, --key-file: `ops.cli_api`)
    Every account, oldest first, over the API (operator or auditor key).

tokex accounts add-key (--public-key FILE | --out FILE) [--json] (and the client options)
    Add a request-signing key to the signing key's own account, over the API: the public
    key in FILE, or a key pair generated here whose private key is written to `--out`
    (mode 0600, never overwriting; removed again if the exchange refuses the key). Prints
    the new key id (`--json`: its `KeyView`). Rotation: add-key, switch to the new key,
    revoke-key the old one.

tokex accounts revoke-key KEY_ID [--account ACCOUNT_ID] [--json] (and the client options)
    Revoke one of the signing account's own keys (not its last active one), or, with
    `--account` (operator key), any account's key, its last one included. Revoking a
    revoked key again succeeds and changes nothing. Other processes of `serve --workers N`
    may accept the key for up to 30 s more (their cache).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.accounts import create_account, parse_public_key, private_key_pem, public_key_b64
from market.client import TokexClient
from ops.cli import add_database_options, run_migrations, settings_from_args
from ops.cli_api import add_client_options, emit_json, emit_table, run
from ops.cli_operator import iso_time
from ops.database import connect, database_url
from schemas.accounts import AccountCreated, AccountView, KeyView, Role
from schemas.errors import DomainError, ErrorKind


class KeyFileError(DomainError):
    code = "key_file_error"
    kind = ErrorKind.INVALID


def _write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Create `path` (and its directory, 0700) with mode 0600; never overwrite."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; not overwriting a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(private_key_pem(key))


def _read_public_key(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc.strerror}") from None
    return parse_public_key(data)


async def _create(
    url: str,
    role: Role,
    name: str,
    public_key: bytes | None,
    out: Path | None,
    keys_dir: Path,
    *,
    migrate: bool = True,
) -> tuple[AccountCreated, Path | None]:
    """Create the account; write a generated private key inside the same database
    transaction, so a key file that cannot be written leaves no account behind."""
    await run_migrations(url, apply=migrate)
    conn = await connect(url)
    try:
        async with conn.transaction():
            created, private_key = await create_account(conn, role, name, public_key)
            path: Path | None = None
            if private_key is not None:
                path = out or keys_dir / f"{created.account_id}.pem"
                _write_private_key(path, private_key)
        return created, path
    finally:
        await conn.close()


def _create_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    public_key = _read_public_key(args.public_key) if args.public_key else None
    if public_key is not None and args.out:
        raise KeyFileError("--out is for a generated key; with --public-key there is none")
    out = Path(args.out).expanduser().resolve() if args.out else None
    url = database_url(settings)
    created, path = asyncio.run(
        _create(
            url,
            Role(args.role),
            args.name,
            public_key,
            out,
            settings.data_path / "keys",
            migrate=settings.migrate,
        )
    )
    if args.json:
        line = {"account_id": created.account_id, "key_id": created.key_id}
        sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
        if path is not None:  # stdout stays exactly the one line scripts parse
            print(f"private key written to {path} (mode 0600)", file=sys.stderr)
    else:
        print(f"account {created.account_id} ({created.role} {created.name!r})")
        print(f"key     {created.key_id}")
        if path is not None:
            print(f"private key written to {path} (mode 0600; keep it secret)")
    return 0


def register(subparsers: Any) -> None:
    accounts = subparsers.add_parser("accounts", help="accounts of the exchange")
    sub = accounts.add_subparsers(
        dest="accounts_command", required=True, metavar="ACCOUNTS_COMMAND"
    )
    create = sub.add_parser(
        "create", help="create an account (e.g. the first operator) in the database"
    )
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", required=True, help="a display name (1 to 100 characters)")
    create.add_argument(
        "--public-key",
        metavar="FILE",
        help="the account's Ed25519 public key (PEM, or base64 of the raw 32 bytes); "
        "omitted: generate a key pair",
    )
    create.add_argument(
        "--out",
        metavar="FILE",
        help="where to write a generated private key (default: <data-dir>/keys/<account>.pem)",
    )
    create.add_argument("--json", action="store_true", help="print one JSON line")
    add_database_options(create)
    create.set_defaults(handler=_create_command)
    listing = sub.add_parser(
        "list", help="every account, oldest first (operator, auditor; over the API)"
    )
    listing.add_argument("--role", choices=[r.value for r in Role])
    add_client_options(listing)
    listing.set_defaults(handler=_list_command)
    _register_key_commands(sub)


def _register_key_commands(sub: Any) -> None:
    add = sub.add_parser(
        "add-key", help="add a request-signing key to the signing account (over the API)"
    )
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--public-key", metavar="FILE",
        help="the new Ed25519 public key (PEM, or base64 of the raw 32 bytes)",
    )  # fmt: skip
    source.add_argument(
        "--out", metavar="FILE", help="generate a key pair; write its private key here (0600)"
    )
    add_client_options(add)
    add.set_defaults(handler=_add_key_command)
    revoke = sub.add_parser(
        "revoke-key", help="revoke a request-signing key (own, or any with --account: operator)"
    )
    # not dest "key_id": that is --key-id's, the signing key (`ops.cli_api`)
    revoke.add_argument("revoked_key_id", metavar="KEY_ID", help="the key to revoke")
    revoke.add_argument(
        "--account", metavar="ACCOUNT_ID",
        help="the key's account (operator: may revoke its last key); default: the signer's own",
    )  # fmt: skip
    add_client_options(revoke)
    revoke.set_defaults(handler=_revoke_key_command)


def _add_key_command(args: argparse.Namespace) -> int:
    out: Path | None = None
    if args.public_key:
        public_key = base64.b64encode(_read_public_key(args.public_key)).decode("ascii")
    else:
        out = Path(args.out).expanduser().resolve()
        private_key = Ed25519PrivateKey.generate()
        _write_private_key(out, private_key)
        public_key = public_key_b64(private_key)

    async def call(client: TokexClient) -> KeyView:
        return await client.add_key(public_key)

    try:
        view = run(args, call)
    except BaseException:
        if out is not None:  # never leave a key file for a key the exchange does not have
            out.unlink(missing_ok=True)
        raise
    if args.json:
        emit_json(view)
    else:
        print(f"key {view.key_id} added to {view.account_id}")
        if out is not None:
            print(f"private key written to {out} (mode 0600; keep it secret)")
    return 0


def _revoke_key_command(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> KeyView:
        return await client.revoke_key(args.revoked_key_id, args.account)

    view = run(args, call)
    if args.json:
        emit_json(view)
    else:
        assert view.revoked_at_ms is not None
        print(f"key {view.key_id} of {view.account_id} revoked at {iso_time(view.revoked_at_ms)}")
    return 0


def _list_command(args: argparse.Namespace) -> int:
    async def call(client: TokexClient) -> list[AccountView]:
        return list(reversed(await client.accounts(args.role)))  # oldest first

    views = run(args, call)
    if args.json:
        emit_json(views)
    else:
        rows = [[v.account_id, v.role.value, v.name, iso_time(v.created_at_ms), ",".join(v.key_ids)]
                for v in views]  # fmt: skip
        emit_table(("ACCOUNT", "ROLE", "NAME", "CREATED", "KEYS"), rows)
    return 0
