"""Account service on a real database: ids, keys, validation, the tables' own checks."""

from __future__ import annotations

import base64
import re

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.accounts import (
    AccountNotFound,
    DuplicatePublicKey,
    InvalidAccountName,
    InvalidPrivateKey,
    InvalidPublicKey,
    create_account,
    get_account,
    load_private_key,
    parse_public_key,
    private_key_pem,
    public_key_b64,
)
from schemas.accounts import Role


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


async def test_create_with_generated_key(db_conn: asyncpg.Connection) -> None:
    created, key = await create_account(db_conn, Role.OPERATOR, "root", None)
    assert key is not None
    assert re.fullmatch(r"acc_[0-9a-f]{16}", created.account_id)
    assert re.fullmatch(r"key_[0-9a-f]{16}", created.key_id)
    assert (created.role, created.name) == (Role.OPERATOR, "root")
    assert created.private_key is not None
    assert raw_public(load_private_key(created.private_key)) == raw_public(key)
    stored = await db_conn.fetchval(
        "SELECT public_key FROM account_keys WHERE key_id = $1", created.key_id
    )
    assert bytes(stored) == raw_public(key)
    view = await get_account(db_conn, created.account_id)
    assert (view.account_id, view.role, view.name, view.key_ids) == (
        created.account_id,
        Role.OPERATOR,
        "root",
        [created.key_id],
    )
    assert isinstance(view.created_at_ms, int) and view.created_at_ms > 1_700_000_000_000


async def test_create_with_given_key_and_refusals(db_conn: asyncpg.Connection) -> None:
    key = Ed25519PrivateKey.generate()
    created, private = await create_account(db_conn, Role.BUYER, "acme", raw_public(key))
    assert private is None and created.private_key is None
    with pytest.raises(DuplicatePublicKey):
        await create_account(db_conn, Role.PROVIDER, "again", raw_public(key))
    with pytest.raises(InvalidPublicKey):
        await create_account(db_conn, Role.BUYER, "short", b"\x00" * 31)
    for name in ("", "x" * 101):
        with pytest.raises(InvalidAccountName):
            await create_account(db_conn, Role.BUYER, name, None)
    with pytest.raises(AccountNotFound):
        await get_account(db_conn, "acc_0000000000000000")
    assert await db_conn.fetchval("SELECT count(*) FROM accounts") == 1


async def test_tables_check_roles_and_ids(db_conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute(
            "INSERT INTO accounts (account_id, role, name)"
            " VALUES ('acc_0000000000000000', 'king', 'x')"
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute(
            "INSERT INTO accounts (account_id, role, name) VALUES ('guessable', 'buyer', 'x')"
        )


def test_key_formats() -> None:
    key = Ed25519PrivateKey.generate()
    raw = raw_public(key)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert parse_public_key(public_key_b64(key)) == raw
    assert parse_public_key(pem) == raw
    assert parse_public_key(pem.decode() + "\n") == raw
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----\nxx"):
        with pytest.raises(InvalidPublicKey):
            parse_public_key(bad)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for text in (private_key_pem(key), base64.b64encode(seed).decode()):
        assert raw_public(load_private_key(text)) == raw
    for bad in ("nope", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PRIVATE KEY-----\nxx"):
        with pytest.raises(InvalidPrivateKey):
            load_private_key(bad)
