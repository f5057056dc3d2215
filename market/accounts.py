"""Accounts and their request-signing keys: creation and look-up (tables of migration 0003).

Used by `POST /v1/accounts`, by `tokex accounts create` and by tests. Ids are random,
unguessable and prefixed: `acc_` / `key_` + 16 hex digits (64 bits from `secrets`); a key id
is not derived from the public key, so it reveals nothing about it.
"""

from __future__ import annotations

import base64
import binascii
import secrets

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas.accounts import AccountCreated, AccountView, Role
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "AccountNotFound",
    "DuplicatePublicKey",
    "InvalidAccountName",
    "InvalidPrivateKey",
    "InvalidPublicKey",
    "create_account",
    "get_account",
    "load_private_key",
    "new_account_id",
    "new_key_id",
    "parse_public_key",
    "private_key_pem",
    "public_key_b64",
]


class InvalidPublicKey(DomainError):
    code = "invalid_public_key"
    kind = ErrorKind.INVALID


class DuplicatePublicKey(DomainError):
    """A public key belongs to one account only."""

    code = "duplicate_public_key"
    kind = ErrorKind.CONFLICT


class AccountNotFound(DomainError):
    code = "account_not_found"
    kind = ErrorKind.NOT_FOUND


class InvalidAccountName(DomainError):
    code = "invalid_account_name"
    kind = ErrorKind.INVALID


class InvalidPrivateKey(DomainError):
    code = "invalid_private_key"
    kind = ErrorKind.INVALID


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(8)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def parse_public_key(text: str | bytes) -> bytes:
    """Raw 32 public-key bytes from base64 of the raw key, or a PEM SubjectPublicKeyInfo."""
    data = text.encode() if isinstance(text, str) else text
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise InvalidPublicKey(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidPublicKey("the PEM public key is not an Ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey("public key is neither PEM nor base64") from None
    if len(raw) != 32:
        raise InvalidPublicKey(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidPublicKey(f"not an Ed25519 public key: {exc}") from None
    return raw


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


async def create_account(
    conn: asyncpg.Connection, role: Role, name: str, public_key: bytes | None
) -> tuple[AccountCreated, Ed25519PrivateKey | None]:
    """Create an account with one key. Without `public_key`, generate a key pair and return
    its private key (also as PEM in `AccountCreated.private_key`): the caller must store it,
    nothing else keeps it."""
    if not 1 <= len(name) <= 100:
        raise InvalidAccountName(f"an account name has 1 to 100 characters, not {len(name)}")
    private_key: Ed25519PrivateKey | None = None
    if public_key is None:
        private_key = Ed25519PrivateKey.generate()
        public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    elif len(public_key) != 32:
        raise InvalidPublicKey(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    role = Role(role)
    account_id, key_id = new_account_id(), new_key_id()
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (account_id, role, name) VALUES ($1, $2, $3)",
                account_id,
                role.value,
                name,
            )
            await conn.execute(
                "INSERT INTO account_keys (key_id, account_id, public_key) VALUES ($1, $2, $3)",
                key_id,
                account_id,
                public_key,
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "account_keys_public_key_key":
            raise DuplicatePublicKey("this public key already belongs to an account") from None
        raise
    created = AccountCreated(
        account_id=account_id,
        key_id=key_id,
        role=role,
        name=name,
        private_key=private_key_pem(private_key) if private_key is not None else None,
    )
    return created, private_key


async def get_account(conn: asyncpg.Connection, account_id: str) -> AccountView:
    """The account with its active key ids, or `AccountNotFound`."""
    row = await conn.fetchrow(
        """SELECT a.role, a.name, a.created_at,
                  coalesce(array_agg(k.key_id ORDER BY k.created_at, k.key_id)
                           FILTER (WHERE k.key_id IS NOT NULL AND k.revoked_at IS NULL),
                           '{}') AS key_ids
           FROM accounts a LEFT JOIN account_keys k USING (account_id)
           WHERE a.account_id = $1
           GROUP BY a.account_id""",
        account_id,
    )
    if row is None:
        raise AccountNotFound(f"no account {account_id[:40]!r}")
    created_at = row["created_at"].isoformat().replace("+00:00", "Z")
    return AccountView(
        account_id=account_id,
        role=Role(row["role"]),
        name=row["name"],
        created_at=created_at,
        key_ids=list(row["key_ids"]),
    )
