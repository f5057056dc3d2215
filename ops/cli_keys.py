"""`tokex keys ...`: the ledger's checkpoint signing keys.

tokex keys generate --name NAME --out FILE
    Write a new Ed25519 signer key to FILE (mode 0600, never overwriting) and print its
    public verifier key string, the one to publish and give to auditors.
tokex keys show FILE
    Print the verifier key string of a signer key file.
"""

from __future__ import annotations

import argparse
from typing import Any

from ledger.keys import load_signer, write_key_file
from ledger.note import KeyInvalid, Signer
from ops.config import DEFAULT_EXCHANGE_NAME


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
