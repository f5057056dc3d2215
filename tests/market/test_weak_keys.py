"""The weak-key forgery against a real `tokex serve` and the CLI: small-order public keys
are refused at every door, and a forged signature under one that is already in the
database is refused (401), in the helper process as in-process."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.accounts import create_account, new_account_id, new_key_id
from market.auth import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, now_ms
from market.client import TokexApiError, TokexClient
from schemas.accounts import Role
from tests.ops.test_cli import tokex

IDENTITY = base64.b64encode(bytes([1]) + bytes(31)).decode()  # AQAAAA...AAA=
ZERO = base64.b64encode(bytes(32)).decode()
#: R = identity, S = 0: OpenSSL's verify accepts it for every message under the identity key.
FORGED = base64.b64encode(bytes([1]) + bytes(63)).decode()
NON_CANONICAL = base64.b64encode((2**255 - 1).to_bytes(32, "little")).decode()  # y >= p


@pytest.fixture
async def op(server: str, db_url: str) -> AsyncIterator[TokexClient]:
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "root", None)
    finally:
        await conn.close()
    assert key is not None
    async with TokexClient(server, created.key_id, key) as client:
        yield client


@pytest.mark.parametrize(
    ("public_key", "code"),
    [(IDENTITY, "weak_public_key"), (ZERO, "weak_public_key"),
     (NON_CANONICAL, "invalid_public_key")],
    ids=["identity", "all-zero", "non-canonical"],
)  # fmt: skip
async def test_api_refuses_weak_and_non_canonical_keys(
    op: TokexClient, db_url: str, public_key: str, code: str
) -> None:
    with pytest.raises(TokexApiError) as info:
        await op.create_account(Role.BUYER, "mallory", public_key=public_key)
    assert (info.value.status, info.value.code) == (400, code), info.value
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE name = 'mallory'") == 0
    finally:
        await conn.close()
    good = await op.create_account(Role.BUYER, "honest")  # the door still opens for good keys
    assert good.role == Role.BUYER


async def _insert_weak_account(db_url: str, public_key: bytes) -> str:
    """A buyer with a weak key, written past the API (as an old database might hold)."""
    account_id, key_id = new_account_id(), new_key_id()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO accounts (account_id, role, name) VALUES ($1, 'buyer', 'weak')",
            account_id,
        )
        await conn.execute(
            "INSERT INTO account_keys (key_id, account_id, public_key) VALUES ($1, $2, $3)",
            key_id,
            account_id,
            public_key,
        )
    finally:
        await conn.close()
    return key_id


@pytest.mark.parametrize("public_key", [IDENTITY, ZERO], ids=["identity", "all-zero"])
async def test_forged_signature_under_a_weak_key_in_the_database_is_401(
    op: TokexClient, server: str, db_url: str, public_key: str
) -> None:
    key_id = await _insert_weak_account(db_url, base64.b64decode(public_key))
    async with httpx.AsyncClient(base_url=server) as http:
        for path in ("/v1/accounts/me", "/v1/balances", "/v1/orders"):
            answer = await http.get(
                path,
                headers={
                    HEADER_KEY: key_id,
                    HEADER_TIMESTAMP: str(now_ms()),
                    HEADER_SIGNATURE: FORGED,
                },
            )
            assert answer.status_code == 401, answer.text
            assert answer.json()["code"] == "bad_signature"
    assert (await op.me()).role == Role.OPERATOR  # others go on being served


async def test_malformed_key_id_is_unknown_key(op: TokexClient, server: str) -> None:
    """As the README says: a key id that cannot be one is `unknown_key`, whatever the
    signature (before, a signature that was not base64 of 64 bytes made it bad_signature)."""
    assert op.private_key is not None
    async with httpx.AsyncClient(base_url=server) as http:
        for key_id in ("nope", "key_XYZ", "key_0123456789ABCDEF", "key_" + "0" * 40):
            for signature in ("not base64!", FORGED):
                answer = await http.get(
                    "/v1/accounts/me",
                    headers={
                        HEADER_KEY: key_id,
                        HEADER_TIMESTAMP: str(now_ms()),
                        HEADER_SIGNATURE: signature,
                    },
                )
                assert answer.status_code == 401, answer.text
                assert answer.json()["code"] == "unknown_key", (key_id, signature)


async def test_cli_refuses_weak_public_key_files(db_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url}
    for name, text, code in (
        ("identity.pub", IDENTITY, "weak_public_key"),
        ("zero.pub", ZERO, "weak_public_key"),
        ("high.pub", NON_CANONICAL, "invalid_public_key"),
    ):
        path = tmp_path / name
        path.write_text(text + "\n")
        result = tokex(
            "accounts", "create", "--role", "buyer", "--name", "mallory",
            "--public-key", str(path), env=env,
        )  # fmt: skip
        assert result.returncode == 1, result.stdout
        assert code in result.stderr
    good = tmp_path / "good.pub"
    good.write_text(
        base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    )
    ok = tokex(
        "accounts", "create", "--role", "buyer", "--name", "fine", "--public-key", str(good),
        env=env,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM accounts WHERE name = 'mallory'") == 0
    finally:
        await conn.close()
