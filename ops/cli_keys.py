"""`tokex keys ...`: the ledger's checkpoint signing keys.

tokex keys generate --name NAME --out FILE
    Write a new Ed25519 signer key to FILE (mode 0600, never overwriting) and print its
    public verifier key string, the one to publish and give to auditors.
tokex keys show FILE
    Print the verifier key string of a signer key file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from ledger.keys import DEFAULT_KEY_FILE, load_signer, rotate, write_key_file
from ledger.log import open_ledger
from ledger.note import KeyInvalid, Signer
from ops.cli import add_database_options, settings_from_args
from ops.config import DEFAULT_EXCHANGE_NAME, Settings
from ops.database import database_url


def _generate(args: argparse.Namespace) -> int:
    try:
        signer = Signer.generate(args.name)
    except KeyInvalid as exc:
        raise KeyInvalid(f"--name: {exc.message}") from None
    write_key_file(args.out, signer)
    print(signer.verifier().encode())
    return 0


def _show(args: argparse.Namespace) -> int:
    print(load_signer(args.file).verifier().encode())
    return 0


async def _announce(url: str, settings: Settings, old: Signer, new: Signer) -> int:
    ledger, log = await open_ledger(url, old, settings.exchange_name)
    try:
        # The shell may read the clock; the ledger itself never does.
        return await rotate(ledger, log, new, time_ms=int(time.time() * 1000))
    finally:
        await ledger.close()


def _rotate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    default = settings.data_path / DEFAULT_KEY_FILE
    current = Path(settings.signing_key_file) if settings.signing_key_file else default
    old = load_signer(current)
    new = load_signer(args.new_key)
    index = asyncio.run(_announce(database_url(settings), settings, old, new))
    print(f"key rotation announced in entry {index}: {new.verifier().encode()}")
    if current == default:
        retired = current.with_name(f"{DEFAULT_KEY_FILE}.{old.key_id:08x}.retired")
        os.replace(current, retired)
        write_key_file(current, new)
        print(f"{current} now holds the new key (the old one is in {retired})")
    else:
        print(f"set TOKEX_SIGNING_KEY_FILE={args.new_key} before starting the exchange")
    return 0


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="checkpoint signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    gen = sub.add_parser("generate", help="write a new signer key file; print its public key")
    gen.add_argument(
        "--name",
        default=DEFAULT_EXCHANGE_NAME,
        help=f"key name: the exchange's origin (default: {DEFAULT_EXCHANGE_NAME})",
    )
    gen.add_argument("--out", required=True, help="key file to create (mode 0600)")
    gen.set_defaults(handler=_generate)
    show = sub.add_parser("show", help="print the public verifier key of a signer key file")
    show.add_argument("file")
    show.set_defaults(handler=_show)
    rot = sub.add_parser("rotate", help="announce a new signing key (exchange stopped)")
    rot.add_argument("--new-key", required=True, help="signer key file of the new key")
    add_database_options(rot)
    rot.set_defaults(handler=_rotate)
