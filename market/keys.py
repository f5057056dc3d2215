"""Key formats of accounts' request-signing keys, and the door every public key goes through.

Pure (no database, no framework): `market.client` uses it, so `import market.client`
stays free of litestar and asyncpg.

* A public key is accepted as base64 of the raw 32 bytes (the wire form) or as a PEM
  SubjectPublicKeyInfo, and only if `ledger.ed25519.check_public_key` accepts it: a key
  that is not a canonical curve point is refused with `invalid_public_key`, a small-order
  key (the identity, the all-zero key, ...) or one with a small-order component with
  `weak_public_key` (signatures under such a key can be forged).
* A private key file is PKCS#8 PEM (what `tokex accounts create` writes), or base64 of
  the raw 32-byte seed.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger import ed25519
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "InvalidPrivateKey",
    "InvalidPublicKey",
    "WeakPublicKey",
    "check_public_key",
    "load_private_key",
    "parse_public_key",
    "private_key_pem",
    "public_key_b64",
]


class InvalidPublicKey(DomainError):
    """Not an Ed25519 public key: wrong length or format, or not a canonical curve point."""

    code = "invalid_public_key"
    kind = ErrorKind.INVALID


class WeakPublicKey(InvalidPublicKey):
    """An Ed25519 point of small order, or with a small-order component: refused, since
    signatures under it prove nothing."""

    code = "weak_public_key"


class InvalidPrivateKey(DomainError):
    code = "invalid_private_key"
    kind = ErrorKind.INVALID


def check_public_key(raw: bytes) -> bytes:
    """`raw` (32 bytes) if it is a strong Ed25519 public key; else `InvalidPublicKey` or
    `WeakPublicKey` saying why."""
    try:
        return ed25519.check_public_key(raw)
    except ed25519.WeakKey as exc:
        raise WeakPublicKey(f"weak Ed25519 public key refused: {exc}") from None
    except ed25519.MalformedKey as exc:
        raise InvalidPublicKey(f"not an Ed25519 public key: {exc}") from None


def parse_public_key(text: str | bytes) -> bytes:
    """Raw 32 public-key bytes from base64 of the raw key, or a PEM SubjectPublicKeyInfo,
    checked by `check_public_key`."""
    data = text.encode() if isinstance(text, str) else text
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidPublicKey(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidPublicKey("the PEM public key is not an Ed25519 key")
        return check_public_key(key.public_bytes_raw())
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("public key is neither PEM nor base64") from None
    return check_public_key(raw)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """base64 of the raw 32-byte public key (the wire form)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def private_key_pem(key: Ed25519PrivateKey) -> str:
    """Unencrypted PKCS#8 PEM, the key file format of `tokex accounts create`."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def load_private_key(data: str | bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM, or base64 of the raw 32-byte seed."""
    raw = data.encode() if isinstance(data, str) else data
    raw = raw.strip()
    if raw.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidPrivateKey(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidPrivateKey("the PEM private key is not an Ed25519 key")
        return key
    try:
        seed = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPrivateKey("private key is neither PEM nor base64") from None
    if len(seed) != 32:
        raise InvalidPrivateKey(f"an Ed25519 private key has 32 bytes, not {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)
