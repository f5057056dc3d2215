"""`tokex voucher sign`: a buyer's voucher, signed offline with the buyer's account key.

tokex voucher sign --key-file FILE --key-id KEY --buyer ACCOUNT --provider ACCOUNT
                   --instrument SYMBOL --tokens N --version V
    Print the signed voucher as one line of JSON, the body of `POST /v1/vouchers`: "buyer
    ACCOUNT acknowledges N tokens in all delivered by provider ACCOUNT on SYMBOL". The key
    file is the buyer's own (as `tokex accounts create` writes it); nothing is sent
    anywhere. Give the line to the provider, who submits it (`TokexClient.submit_voucher`).
    Tokens are cumulative and, with the version, must grow from one voucher to the next.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from market.keys import load_private_key
from market.vouchers import sign_voucher
from schemas.disputes import Voucher
from schemas.errors import DomainError, ErrorKind


class VoucherInvalid(DomainError):
    code = "invalid_voucher"
    kind = ErrorKind.INVALID


def _sign(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(Path(args.key_file).read_bytes())
    except OSError as exc:
        raise VoucherInvalid(f"cannot read {args.key_file}: {exc.strerror}") from None
    fields = {
        "buyer": args.buyer, "provider": args.provider, "instrument": args.instrument,
        "tokens": args.tokens, "version": args.version, "key_id": args.key_id,
    }  # fmt: skip
    try:
        voucher = msgspec.convert(fields, Voucher)
    except msgspec.ValidationError as exc:
        raise VoucherInvalid(str(exc)) from None
    sys.stdout.write(msgspec.json.encode(sign_voucher(key, voucher)).decode() + "\n")
    return 0


def register(subparsers: Any) -> None:
    voucher = subparsers.add_parser("voucher", help="buyer vouchers (signed offline)")
    sub = voucher.add_subparsers(dest="voucher_command", required=True, metavar="VOUCHER_COMMAND")
    sign = sub.add_parser("sign", help="sign a voucher with the buyer's key; print its JSON")
    sign.add_argument("--key-file", required=True, help="the buyer's private key file")
    sign.add_argument("--key-id", required=True, help="the buyer's key id (key_...)")
    sign.add_argument("--buyer", required=True, help="the buyer's account id")
    sign.add_argument("--provider", required=True, help="the provider's account id")
    sign.add_argument("--instrument", required=True, help="the instrument's symbol")
    sign.add_argument("--tokens", required=True, type=int, help="tokens delivered in all")
    sign.add_argument("--version", required=True, type=int, help="its number: 1, 2, ...")
    sign.set_defaults(handler=_sign)
