"""`tokex audit ...`: export the signed ledger to one file; verify such a file offline.

    tokex audit export --out FILE [--from-index N] [--to-index M] [--data-dir DIR]
    tokex audit export --out FILE --from-url URL --key-id K --key-file PEM [...]
    tokex audit verify FILE (--public-key FILE | --pin FILE) [--checkpoint NOTE]... [--json]

`export --from-url` asks a running exchange for the same file (`GET /v1/audit/export`,
signed by an operator or auditor key: `--key-id`/`--key-file`, or env `TOKEX_KEY_ID`,
`TOKEX_KEY_FILE`): byte for byte what `export` writes from the database, with no
database access.

`verify` says OK only against a key the auditor trusts: `--public-key FILE`, or
`--pin FILE` (trust on first use: when FILE does not exist, the export's first key is
trusted, written to FILE and a warning says so; afterwards FILE is the trusted key).
The pin's first line is the trusted key, then, for each later key accepted from its
rotation entry, the size it signs from and the key (space-separated; a pin with the key
alone, as written before, still reads): so a later partial export that starts after a
rotation is checked against the newest pinned key valid at its start, and a key that is
not in the pinned chain is still accepted only from its rotation entry.
Without either it refuses (exit 2): an export checked only against its own first key
proves nothing about who signed it.

One file cannot show that the exchange signs one history for everybody (it may leave out
checkpoints before its last, so a fork signed for someone else is not in it). So `verify`
also checks the export against checkpoints the auditor already trusts: `--checkpoint NOTE`
(repeatable; a signed note as `GET /v1/ledger/checkpoint` serves it), and with `--pin` the
last checkpoint verified, which the pin file keeps after the key (its first line) and
`verify` moves forward to each export's last checkpoint once it is found consistent with
the one pinned (see `ledger.audit.verify.verify_file` for the rules).

`export` includes the receipts of the range's gateway deliveries; `verify` checks that each
gateway delivery is backed by receipts matching the count, token total and Merkle root its
signed body commits to (`ledger.receipts`), naming the delivery that is not.

`verify` needs no database: exit 0 when everything holds, 1 naming the first bad entry,
checkpoint or delivery and why (never a traceback), 2 on bad usage. See `ledger.audit`.

`verify` loads no database driver: only `export` imports asyncpg and the exporter, when run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from ledger.audit.verify import (
    AuditFailure,
    PinnedKey,
    TrustedCheckpoint,
    VerifyReport,
    verify_file,
)
from ledger.note import Verifier
from ops.cli import (
    add_database_options,
    index_arg,
    open_output,
    replace_output,
    settings_from_args,
)
from schemas.errors import DomainError


async def _export(url: str, out: Path, from_index: int, to_index: int | None) -> str:
    from ledger.audit.export import export, stderr_progress
    from market.gateway.receipts import delivery_receipts
    from ops.database import connect

    conn = await connect(url)  # no database: one line (`DatabaseUnreachable`), no traceback
    partial = out.with_name(out.name + ".partial")
    try:
        with open_output(partial) as f:
            summary = await export(
                conn, f, from_index, to_index, stderr_progress(), receipts=delivery_receipts
            )
        replace_output(partial, out)
    finally:
        await conn.close()
        partial.unlink(missing_ok=True)
    return (
        f"exported entries {summary.from_index}..{summary.to_index - 1} "
        f"({summary.entries} entries, {summary.checkpoints} checkpoints, "
        f"{summary.receipts} receipts, {summary.bytes} bytes) "
        f"of {summary.origin} to {out}"
    )


async def _export_from_url(args: argparse.Namespace, out: Path) -> str:
    from ops.cli_api import signed_client

    if not args.key_id or not args.key_file:
        raise _Usage("--from-url needs a signed key: --key-id and --key-file")
    partial = out.with_name(out.name + ".partial")
    async with signed_client(args.from_url, args.key_id, args.key_file) as client:
        try:
            with open_output(partial) as f:
                written = await client.audit_export(f, args.from_index, args.to_index)
            replace_output(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return f"exported {written} bytes from {args.from_url} to {out}"


class _Usage(Exception):
    pass


def _export_cmd(args: argparse.Namespace) -> int:
    if args.from_url is not None:
        from ops.cli_api import api_errors

        try:  # a refusal, no exchange, a bad key file: one line from `main`, exit 1
            with api_errors(args.from_url):
                print(asyncio.run(_export_from_url(args, Path(args.out))))
        except _Usage as exc:
            print(f"tokex: error: {exc}")
            return 2
        return 0
    from ops.database import database_url

    url = database_url(settings_from_args(args))
    print(asyncio.run(_export(url, Path(args.out), args.from_index, args.to_index)))
    return 0


def _fail(args: argparse.Namespace, where: str, reason: str, code: str) -> int:
    if args.json:
        print(json.dumps({"ok": False, "code": code, "where": where, "reason": reason}))
    else:
        print(f"FAIL: {where}: {reason}")
    return 1


class _Unreadable(Exception):
    def __init__(self, where: str, reason: str, code: str = "usage") -> None:
        super().__init__(reason)
        self.where, self.reason, self.code = where, reason, code


def _read_text(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(where, f"cannot read {path}: {exc}") from None


class _Trust(NamedTuple):
    """What the auditor trusts: the key (None: first use of a pin), the keys accepted after
    it before (a pin's chain), and checkpoints."""

    key: Verifier | None
    later: list[PinnedKey]
    checkpoints: list[TrustedCheckpoint]


def _trust(args: argparse.Namespace) -> _Trust:
    """The key and the checkpoints the auditor trusts. A pin file is the keys on its first
    line and, after it, the last checkpoint verified (a signed note), if any."""
    checkpoints = [
        TrustedCheckpoint(_read_text(path, "checkpoint"), path) for path in args.checkpoint
    ]
    later: list[PinnedKey] = []
    if args.public_key is not None:
        key_text = _read_text(args.public_key, "public key")
    elif Path(args.pin).exists():
        keys_line, _, pinned = _read_text(args.pin, "public key").partition("\n")
        key_text, later = _pinned_keys(keys_line, args.pin)
        if pinned:
            checkpoints.append(TrustedCheckpoint(pinned, f"pinned in {args.pin}"))
    else:
        return _Trust(None, later, checkpoints)
    return _Trust(_parse_key(key_text), later, checkpoints)


def _parse_key(text: str) -> Verifier:
    try:
        return Verifier.parse(text.strip())
    except DomainError as exc:
        raise _Unreadable("public key", exc.message, exc.code) from None


def _pinned_keys(line: str, pin: str) -> tuple[str, list[PinnedKey]]:
    """A pin file's first line: the trusted key, then for each key accepted after it (key
    rotations) the tree size it signs from and the key, separated by spaces. A pin written
    before key chains were kept has the key alone."""
    first, *rest = line.split() or [""]
    if len(rest) % 2:
        raise _Unreadable("public key", f"{pin}: a pinned key without its size")
    later = []
    for size, key in zip(rest[::2], rest[1::2], strict=True):
        if not size.isdecimal():
            raise _Unreadable("public key", f"{pin}: {size!r} is not a tree size")
        later.append(PinnedKey(_parse_key(key).encode(), int(size)))
    return first, later


def _write_pin(args: argparse.Namespace, report: VerifyReport, first_use: bool) -> str:
    """Pin the accepted keys and the export's last checkpoint, now consistent with those
    trusted before, for the next export to be checked against (atomically: a crash leaves
    the old pin). If this export could not check one of them, the pin stays as it was.
    Returns what was done, for the report; `_Unreadable` if the pin cannot be written."""
    if report.unchecked and not first_use:
        return f"{args.pin} unchanged: a checkpoint you trust could not be checked"
    first, *later = report.accepted_keys
    keys = " ".join([first.key, *(f"{k.valid_from_size} {k.key}" for k in later)])
    pin = Path(args.pin)
    partial = pin.with_name(pin.name + ".partial")
    try:
        partial.write_text(f"{keys}\n{report.checkpoint_note}", encoding="utf-8")
        os.replace(partial, pin)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise _Unreadable(
            "pin", f"the export verified, but {pin} cannot be written: {exc.strerror}", "io_error"
        ) from None
    return f"pinned checkpoint {report.to_index} in {args.pin}"


def _verify_cmd(args: argparse.Namespace) -> int:
    if (args.public_key is None) == (args.pin is None):
        print("tokex: error: verify needs the key you trust: --public-key FILE, or --pin FILE")
        return 2
    try:
        trusted, later, checkpoints = _trust(args)
    except _Unreadable as exc:
        return _fail(args, exc.where, exc.reason, exc.code)
    try:
        with open(args.file, "rb") as f:
            report = verify_file(f, trusted, checkpoints, later)
    except OSError as exc:
        return _fail(args, "file", f"cannot read {args.file}: {exc.strerror}", "io_error")
    except AuditFailure as exc:
        return _fail(args, exc.where, exc.reason, exc.code)
    except DomainError as exc:
        return _fail(args, "file", exc.message, exc.code)
    except Exception as exc:  # a verifier must answer, never crash: anything odd is a failure
        return _fail(args, "file", f"unexpected {type(exc).__name__}: {exc}", "audit_failed")
    if args.pin is not None:
        try:
            report.notes.append(_write_pin(args, report, first_use=trusted is None))
        except _Unreadable as exc:
            return _fail(args, exc.where, exc.reason, exc.code)
    if trusted is None:  # --pin FILE, first use: trust the export's first key from now on
        print(
            f"warning: no key was pinned; trusting the export's own first key "
            f"{report.keys[0]} on first use, pinned in {args.pin}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(_report_dict(report)))
    else:
        print(
            f"OK: {report.origin}: entries {report.from_index}..{report.to_index - 1} "
            f"({report.entries} entries, {report.checkpoints} checkpoints) verified; "
            f"root {report.root} at size {report.to_index}; balances of {report.accounts} "
            f"accounts match; {report.gateway_deliveries} gateway deliveries backed by "
            f"{report.receipts} receipts; keys {', '.join(report.keys)}"
        )
        if report.consistent_with:
            sizes = ", ".join(str(m) for m in report.consistent_with)
            print(f"consistent with the checkpoints you trust at sizes {sizes}")
        for note in report.notes:
            print(f"note: {note}")
    return 0


def _report_dict(report: VerifyReport) -> dict[str, Any]:
    return {"ok": True, **dataclasses.asdict(report)}


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser("audit", help="export and verify the signed ledger")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    exp = sub.add_parser("export", help="write a self-contained audit file")
    exp.add_argument("--out", required=True, help="file to write")
    exp.add_argument("--from-index", type=index_arg, default=0, help="first entry (default: 0)")
    exp.add_argument(
        "--to-index",
        type=index_arg,
        default=None,
        help="end of the range (exclusive), rounded down to a checkpoint (default: latest)",
    )
    add_database_options(exp)
    exp.add_argument(
        "--from-url", default=None,
        help="ask this running exchange for the file instead (GET /v1/audit/export)",
    )  # fmt: skip
    exp.add_argument(
        "--key-id",
        default=os.environ.get("TOKEX_KEY_ID"),
        help="with --from-url: an operator's or auditor's key id (env TOKEX_KEY_ID)",
    )
    exp.add_argument(
        "--key-file",
        default=os.environ.get("TOKEX_KEY_FILE"),
        help="with --from-url: its private key, PEM (env TOKEX_KEY_FILE)",
    )
    exp.set_defaults(handler=_export_cmd)
    ver = sub.add_parser("verify", help="verify an audit file offline (no database)")
    ver.add_argument("file")
    ver.add_argument("--public-key", default=None, help="file with the trusted verifier key")
    ver.add_argument(
        "--pin", default=None,
        help="trust on first use: the key in this file, or (no file yet) the export's first, "
        "written here",
    )  # fmt: skip
    ver.add_argument(
        "--checkpoint", action="append", default=[], metavar="NOTE",
        help="a signed checkpoint you trust (as GET /v1/ledger/checkpoint serves it): the "
        "export must agree with it (repeatable)",
    )  # fmt: skip
    ver.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ver.set_defaults(handler=_verify_cmd)
