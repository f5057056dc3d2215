"""Accounts and their request-signing keys: creation and look-up (tables of migration 0003).

Used by `POST /v1/accounts`, by `tokex accounts create`, by the key routes
(`POST /v1/accounts/me/keys`, `DELETE .../keys/{key_id}`: `add_key`, `revoke_key`) and by
tests. Key formats and the
public-key check live in `market.keys` (re-exported here). Ids are random,
unguessable and prefixed: `acc_` / `key_` + 16 hex digits (64 bits from `secrets`); a key id
is not derived from the public key, so it reveals nothing about it.
"""

from __future__ import annotations

import secrets
from typing import Final, NoReturn

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.key_revocations import notify_revoked
from market.keys import (
    InvalidPrivateKey,
    InvalidPublicKey,
    WeakPublicKey,
    check_public_key,
    load_private_key,
    parse_public_key,
    private_key_pem,
    public_key_b64,
)
from market.pages import FIRST_PAGE, Keyset, Page, page_of
from schemas.accounts import AccountCreated, AccountView, KeyView, Role
from schemas.errors import DomainError, ErrorKind
from schemas.wire_time import unix_ms

__all__ = [
    "MAX_ACTIVE_KEYS",
    "AccountNotFound",
    "DuplicatePublicKey",
    "InvalidAccountName",
    "InvalidPrivateKey",
    "InvalidPublicKey",
    "LastActiveKey",
    "SigningKeyNotFound",
    "TooManyKeys",
    "WeakPublicKey",
    "add_key",
    "create_account",
    "get_account",
    "load_private_key",
    "new_account_id",
    "new_key_id",
    "parse_public_key",
    "private_key_pem",
    "public_key_b64",
    "revoke_key",
]


class DuplicatePublicKey(DomainError):
    """A public key belongs to one account only."""

    code = "duplicate_public_key"
    kind = ErrorKind.CONFLICT


class TooManyKeys(DomainError):
    """The account has `MAX_ACTIVE_KEYS` active signing keys already: revoke one first.
    (The rate limit is per key: without a cap, minting keys would multiply it without
    bound; with it, an account's keys get at most `MAX_ACTIVE_KEYS` times the limit.)"""

    code = "too_many_keys"
    kind = ErrorKind.CONFLICT


#: Active request-signing keys an account may hold at once (`add_key`; 409 `too_many_keys`).
MAX_ACTIVE_KEYS: Final = 10


class AccountNotFound(DomainError):
    code = "account_not_found"
    kind = ErrorKind.NOT_FOUND


class SigningKeyNotFound(DomainError):
    """No such request-signing key in this account (another account's key included)."""

    code = "signing_key_not_found"
    kind = ErrorKind.NOT_FOUND


class LastActiveKey(DomainError):
    """The owner may not revoke the account's last active key (an operator may)."""

    code = "last_active_key"
    kind = ErrorKind.CONFLICT


class InvalidAccountName(DomainError):
    code = "invalid_account_name"
    kind = ErrorKind.INVALID


def new_account_id() -> str:
    return "acc_" + secrets.token_hex(8)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


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
        public_key = private_key.public_key().public_bytes_raw()
    else:
        check_public_key(public_key)  # every door: malformed and weak keys never get in
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
        _raise_duplicate_key(exc)
    created = AccountCreated(
        account_id=account_id,
        key_id=key_id,
        role=role,
        name=name,
        private_key=private_key_pem(private_key) if private_key is not None else None,
    )
    return created, private_key


def _raise_duplicate_key(exc: asyncpg.UniqueViolationError) -> NoReturn:
    if exc.constraint_name == "account_keys_public_key_key":
        raise DuplicatePublicKey("this public key already belongs to an account") from None
    raise exc


async def add_key(conn: asyncpg.Connection, account_id: str, public_key: bytes) -> KeyView:
    """Give an existing account another (active) key; `DuplicatePublicKey` if the public key
    is anyone's already, a revoked key of this account included (a key id is never reused,
    nor is a key); `TooManyKeys` if it has `MAX_ACTIVE_KEYS` active keys already (the
    account row is locked meanwhile, so two additions at once cannot both pass)."""
    check_public_key(public_key)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM accounts WHERE account_id = $1 FOR NO KEY UPDATE", account_id
            )
            if await _active_keys(conn, account_id) >= MAX_ACTIVE_KEYS:
                raise TooManyKeys(
                    f"the account has {MAX_ACTIVE_KEYS} active keys, the most it may hold; "
                    "revoke one first (DELETE /v1/accounts/me/keys/{key_id})"
                )
            row = await conn.fetchrow(
                f"""INSERT INTO account_keys (key_id, account_id, public_key) VALUES ($1, $2, $3)
                    RETURNING {_KEY_COLUMNS}""",
                new_key_id(),
                account_id,
                public_key,
            )
    except asyncpg.UniqueViolationError as exc:
        _raise_duplicate_key(exc)
    except asyncpg.ForeignKeyViolationError:
        raise AccountNotFound(f"no account {account_id[:40]!r}") from None
    assert row is not None
    return _key_view(row)


async def revoke_key(
    conn: asyncpg.Connection, account_id: str, key_id: str, *, keep_one: bool
) -> KeyView:
    """Revoke `key_id` of `account_id` (at once in the database; the authenticators' caches
    are the caller's business: `Authenticator.forget`; the other processes are notified,
    `market.key_revocations`). Revoking a revoked key changes
    nothing and answers the same view (its first `revoked_at_ms`). `SigningKeyNotFound` for
    a key of another account or none; with `keep_one`, `LastActiveKey` rather than leave
    the account without an active key. The account row is locked meanwhile, so two
    revocations at once cannot both pass the last-key check."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE", account_id)
        row = await conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM account_keys WHERE key_id = $1 AND account_id = $2",
            key_id,
            account_id,
        )
        if row is None:
            raise SigningKeyNotFound(f"no key {key_id[:40]!r} in this account")
        if row["revoked_at"] is not None:
            return _key_view(row)
        if keep_one and await _active_keys(conn, account_id) <= 1:
            raise LastActiveKey(
                f"{key_id} is the account's last active key; add another key first "
                "(POST /v1/accounts/me/keys), or ask an operator to lock the account"
            )
        row = await conn.fetchrow(
            f"""UPDATE account_keys SET revoked_at = now() WHERE key_id = $1
                RETURNING {_KEY_COLUMNS}""",
            key_id,
        )
        await notify_revoked(conn, key_id)  # the other processes forget it (on commit)
    assert row is not None
    return _key_view(row)


async def _active_keys(conn: asyncpg.Connection, account_id: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM account_keys WHERE account_id = $1 AND revoked_at IS NULL",
        account_id,
    )
    return count


_KEY_COLUMNS = "key_id, account_id, created_at, revoked_at"


def _key_view(row: asyncpg.Record) -> KeyView:
    revoked_at = row["revoked_at"]
    return KeyView(
        key_id=row["key_id"],
        account_id=row["account_id"],
        created_at_ms=unix_ms(row["created_at"]),
        revoked_at_ms=None if revoked_at is None else unix_ms(revoked_at),
    )


_ACCOUNT_VIEW_SQL = """SELECT a.account_id, a.role, a.name, a.created_at,
                  floor(extract(epoch FROM a.created_at) * 1000000)::bigint AS created_us,
                  coalesce(array_agg(k.key_id ORDER BY k.created_at, k.key_id)
                           FILTER (WHERE k.key_id IS NOT NULL AND k.revoked_at IS NULL),
                           '{}') AS key_ids
           FROM accounts a LEFT JOIN account_keys k USING (account_id)"""


def _account_view(row: asyncpg.Record) -> AccountView:
    return AccountView(
        account_id=row["account_id"],
        role=Role(row["role"]),
        name=row["name"],
        created_at_ms=unix_ms(row["created_at"]),
        key_ids=list(row["key_ids"]),
    )


async def get_account(conn: asyncpg.Connection, account_id: str) -> AccountView:
    """The account with its active key ids, or `AccountNotFound`."""
    row = await conn.fetchrow(
        f"{_ACCOUNT_VIEW_SQL} WHERE a.account_id = $1 GROUP BY a.account_id", account_id
    )
    if row is None:
        raise AccountNotFound(f"no account {account_id[:40]!r}")
    return _account_view(row)


#: An account's place in the list of accounts: when it was made (microseconds, the
#: column's own precision, so the key is exact) and its id.
ACCOUNT_KEY = "(floor(extract(epoch FROM a.created_at) * 1000000)::bigint, a.account_id)"


async def list_accounts(
    conn: asyncpg.Connection, role: Role | None, limit: int, keyset: Keyset = FIRST_PAGE
) -> Page[AccountView]:
    """One page of the accounts (of one role, if given), newest first, as every list."""
    where, order, params = keyset.sql(ACCOUNT_KEY, 3)
    rows = await conn.fetch(
        f"""{_ACCOUNT_VIEW_SQL} WHERE ($1::text IS NULL OR a.role = $1) AND {where}
            GROUP BY a.account_id ORDER BY {order} LIMIT $2""",
        None if role is None else role.value,
        limit + 1,
        *params,
    )
    return page_of(rows, limit, keyset, _account_key, _account_view)


def _account_key(row: asyncpg.Record) -> tuple[int, str]:
    return (row["created_us"], row["account_id"])
