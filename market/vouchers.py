"""Buyer vouchers: the one definition of the bytes a buyer signs, and their check. Pure.

The signed message is the domain-separation prefix ``b"tokex/voucher/v1\\x00"`` followed
by MessagePack (msgspec) of the voucher's fields as an array in a fixed order: buyer,
provider, instrument, tokens, version, key_id. The prefix keeps a voucher's signature from
ever being a valid signature of a request (`market.signing`), a note or a checkpoint, and
the reverse. Used by the client (`TokexClient.sign_voucher`, `tokex voucher sign`) and the
server (`market.vouchers_api`, which checks it with `ledger.ed25519.verify`, strict).
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from schemas.disputes import SignedVoucher, Voucher

__all__ = ["VOUCHER_PREFIX", "decode_voucher_signature", "sign_voucher", "voucher_message"]

VOUCHER_PREFIX: Final = b"tokex/voucher/v1\x00"

_encoder = msgspec.msgpack.Encoder()


def voucher_message(voucher: Voucher) -> bytes:
    """The exact bytes the buyer signs."""
    fields = (
        voucher.buyer, voucher.provider, voucher.instrument, voucher.tokens, voucher.version,
        voucher.key_id,
    )  # fmt: skip
    return VOUCHER_PREFIX + _encoder.encode(fields)


def sign_voucher(private_key: Ed25519PrivateKey, voucher: Voucher) -> SignedVoucher:
    signature = private_key.sign(voucher_message(voucher))
    return SignedVoucher(voucher=voucher, signature=base64.b64encode(signature).decode("ascii"))


def decode_voucher_signature(text: str) -> bytes | None:
    """The 64 signature bytes, or None if `text` is not strict base64 of 64 bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == ed25519.SIGNATURE_BYTES else None
