"""`tokex accounts create`: the first operator, made from the command line, signs requests
to a real server on the same database with the key file the command wrote."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.client import TokexClient
from schemas.accounts import Role
from tests.ops.test_cli import tokex


async def test_create_operator_and_use_its_key(server: str, db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = tokex(
        "accounts", "create", "--role", "operator", "--name", "root", "--json",
        "--data-dir", str(data_dir),
        env={"DATABASE_URL": db_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert set(line) == {"account_id", "key_id"}  # exactly the one line the issue names
    key_file = (data_dir / "keys" / f"{line['account_id']}.pem").resolve()
    assert str(key_file) in result.stderr  # where the key went, said on stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")

    async with TokexClient.from_key_file(server, line["key_id"], key_file) as client:
        me = await client.me()
        assert (me.account_id, me.role, me.name) == (line["account_id"], Role.OPERATOR, "root")
        buyer = await client.create_account(Role.BUYER, "acme")
        async with client.as_account(buyer) as acme:
            assert (await acme.me()).role == Role.BUYER


async def test_create_with_public_key_files(db_url: str, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem_file, b64_file = tmp_path / "k.pub.pem", tmp_path / "k2.pub"
    pem_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    other = Ed25519PrivateKey.generate().public_key()
    other_raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b64_file.write_text(base64.b64encode(other_raw).decode() + "\n")
    env = {"DATABASE_URL": db_url}
    created = []
    for role, path in (("provider", pem_file), ("auditor", b64_file)):
        result = tokex(
            "accounts", "create", "--role", role, "--name", role, "--public-key", str(path),
            "--json", "--data-dir", str(tmp_path / "data"), env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        line = json.loads(result.stdout)
        assert set(line) == {"account_id", "key_id"}
        created.append(line)
    assert not (tmp_path / "data" / "keys").exists()

    # The same key again: refused in one line, nothing created.
    again = tokex(
        "accounts", "create", "--role", "buyer", "--name", "dup", "--public-key", str(pem_file),
        env=env,
    )  # fmt: skip
    assert again.returncode == 1
    assert "duplicate_public_key" in again.stderr
    # A key file that exists is never overwritten, and then no account is left behind.
    taken = tmp_path / "taken.pem"
    taken.write_text("mine")
    clash = tokex(
        "accounts", "create", "--role", "buyer", "--name", "b", "--out", str(taken), env=env
    )
    assert clash.returncode == 1
    assert "already exists" in clash.stderr
    assert taken.read_text() == "mine"

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT a.role, k.public_key FROM accounts a JOIN account_keys k USING (account_id)"
            " ORDER BY a.role"
        )
    finally:
        await conn.close()
    assert [(r["role"], bytes(r["public_key"])) for r in rows] == [
        ("auditor", other_raw),
        ("provider", raw),
    ]
    assert tokex("accounts", "create", "--role", "king", "--name", "x", env=env).returncode == 2
