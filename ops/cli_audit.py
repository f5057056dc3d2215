"""`tokex audit ...`: export the signed ledger to one file; verify such a file offline.

    tokex audit export --out FILE [--from-index N] [--to-index M] [--data-dir DIR]
    tokex audit verify FILE [--public-key FILE] [--json]

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
from pathlib import Path
from typing import Any

from ledger.audit.verify import AuditFailure, VerifyReport, verify_file
from ledger.note import Verifier
from ops.cli import add_database_options, settings_from_args
from schemas.errors import DomainError


async def _export(url: str, out: Path, from_index: int, to_index: int | None) -> str:
    import asyncpg

    from ledger.audit.export import export, stderr_progress
    from market.gateway.receipts import delivery_receipts

    conn = await asyncpg.connect(url)
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as f:
            summary = await export(
                conn, f, from_index, to_index, stderr_progress(), receipts=delivery_receipts
            )
        os.replace(partial, out)
    finally:
        await conn.close()
        partial.unlink(missing_ok=True)
    return (
        f"exported entries {summary.from_index}..{summary.to_index - 1} "
        f"({summary.entries} entries, {summary.checkpoints} checkpoints, "
        f"{summary.receipts} receipts, {summary.bytes} bytes) "
        f"of {summary.origin} to {out}"
    )


def _export_cmd(args: argparse.Namespace) -> int:
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


def _verify_cmd(args: argparse.Namespace) -> int:
    trusted = None
    if args.public_key is not None:
        try:
            trusted = Verifier.parse(Path(args.public_key).read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError) as exc:
            return _fail(args, "public key", f"cannot read {args.public_key}: {exc}", "usage")
        except DomainError as exc:
            return _fail(args, "public key", exc.message, exc.code)
    try:
        with open(args.file, "rb") as f:
            report = verify_file(f, trusted)
    except OSError as exc:
        return _fail(args, "file", f"cannot read {args.file}: {exc.strerror}", "io_error")
    except AuditFailure as exc:
        return _fail(args, exc.where, exc.reason, exc.code)
    except DomainError as exc:
        return _fail(args, "file", exc.message, exc.code)
    except Exception as exc:  # a verifier must answer, never crash: anything odd is a failure
        return _fail(args, "file", f"unexpected {type(exc).__name__}: {exc}", "audit_failed")
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
    exp.add_argument("--from-index", type=int, default=0, help="first entry (default: 0)")
    exp.add_argument(
        "--to-index",
        type=int,
        default=None,
        help="end of the range (exclusive), rounded down to a checkpoint (default: latest)",
    )
    add_database_options(exp)
    exp.set_defaults(handler=_export_cmd)
    ver = sub.add_parser("verify", help="verify an audit file offline (no database)")
    ver.add_argument("file")
    ver.add_argument("--public-key", default=None, help="file with the trusted verifier key")
    ver.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ver.set_defaults(handler=_verify_cmd)
