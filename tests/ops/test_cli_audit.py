"""`tokex audit export` / `tokex audit verify` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ledger.log import open_ledger
from ledger.note import Signer
from schemas.ledger import Account, Posting, Transaction
from tests.support.server import REPO_ROOT

ORIGIN = "cli.tokex/ledger"


def tokex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_export_then_verify_offline(db_url: str, tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    ledger, _ = await open_ledger(db_url, signer)
    bank, alice = Account("exchange", "USD", "bank"), Account("alice", "USD", "cash")
    try:
        for b in range(3):
            await ledger.apply_batch(
                [
                    Transaction(
                        id=f"d{b}-{i}",
                        code="deposit",
                        time=1 + b,
                        postings=(Posting(bank, -1 - i), Posting(alice, 1 + i)),
                    )
                    for i in range(10)
                ]
            )
    finally:
        await ledger.close()
    pub = tmp_path / "exchange.pub"
    pub.write_text(signer.verifier().encode() + "\n")
    out = tmp_path / "audit.tokex"

    r = tokex("audit", "export", "--out", str(out), env={"DATABASE_URL": db_url})
    assert r.returncode == 0, r.stderr
    assert "30 entries" in r.stdout
    assert r.stderr == ""  # no progress output when stderr is not a terminal

    r = tokex("audit", "verify", str(out), "--public-key", str(pub))
    assert (r.returncode, r.stderr) == (0, ""), r.stdout
    assert r.stdout.startswith("OK: cli.tokex/ledger: entries 0..29")

    r = tokex("audit", "verify", str(out), "--json")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"], report["entries"]) == (0, True, 30)
    assert report["trust_from_file"] is True

    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.tokex"
    bad.write_bytes(bytes(data))
    r = tokex("audit", "verify", str(bad), "--public-key", str(pub), "--json")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    failure = json.loads(r.stdout)
    assert failure["ok"] is False and failure["where"] and failure["reason"]

    other = tmp_path / "other.pub"
    other.write_text(Signer.generate(ORIGIN).verifier().encode())
    for args in ([str(out), "--public-key", str(other)], [str(tmp_path / "missing")],
                 [str(pub)]):  # fmt: skip
        r = tokex("audit", "verify", *args)
        assert r.returncode == 1, args
        assert r.stdout.startswith("FAIL: ") and "Traceback" not in r.stdout + r.stderr


#: Run `tokex <args>` in a fresh interpreter; print its exit status and which of the
#: database-side modules it loaded, as JSON on the last line.
_LOADED = """
import json, sys
from ops.cli import main
status = main(sys.argv[1:])
watched = ("asyncpg", "litestar", "ledger.audit.export", "ledger.store", "ops.database")
print(json.dumps([status, [m for m in watched if m in sys.modules]]))
"""


def loaded_by(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    full_env.update(env or {})
    r = subprocess.run(
        [sys.executable, "-c", _LOADED, *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    status, modules = json.loads(r.stdout.splitlines()[-1])
    return status, modules


async def test_verify_loads_no_database_driver(db_url: str, tmp_path: Path) -> None:
    """`tokex audit verify` works where no database (or its driver) is: it never imports
    asyncpg, the exporter or the web framework, while `export` does load the driver."""
    signer = Signer.generate(ORIGIN)
    ledger, _ = await open_ledger(db_url, signer)
    bank, bob = Account("exchange", "USD", "bank"), Account("bob", "USD", "cash")
    try:
        await ledger.apply_batch(
            [
                Transaction(
                    id="d", code="deposit", time=1, postings=(Posting(bank, -5), Posting(bob, 5))
                )
            ]
        )
    finally:
        await ledger.close()
    out = tmp_path / "audit.tokex"
    status, modules = loaded_by("audit", "export", "--out", str(out), env={"DATABASE_URL": db_url})
    assert status == 0 and "asyncpg" in modules  # the check sees the driver when it is loaded
    assert loaded_by("audit", "verify", str(out), "--json") == (0, [])
    assert loaded_by("-v", "audit", "verify", str(out)) == (0, [])
