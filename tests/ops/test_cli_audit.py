"""`tokex audit export` / `tokex audit verify` as a user runs them (subprocesses)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ledger.keys import rotate
from ledger.log import open_ledger
from ledger.note import Signer
from market.client import TokexApiError
from schemas.accounts import Role
from schemas.ledger import Account, Posting, Transaction
from schemas.trading import CreateInstrument
from tests.support.pg import PgServer
from tests.support.server import REPO_ROOT, ServerProcess, operator_client

ORIGIN = "cli.tokex/ledger"
SYM = "llama-3.1-70b/2030-12-01T00Z/1h"


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

    # No trusted key: refused, never OK on the export's own word.
    r = tokex("audit", "verify", str(out), "--json")
    assert r.returncode == 2 and "--public-key" in r.stdout and "OK" not in r.stdout
    # Trust on first use: the export's first key is pinned, with a warning; then it is
    # the trusted key, and an export signed by another key fails against it.
    pin = tmp_path / "pinned.pub"
    r = tokex("audit", "verify", str(out), "--pin", str(pin), "--json")
    report = json.loads(r.stdout)
    assert (r.returncode, report["ok"], report["entries"]) == (0, True, 30)
    assert "warning" in r.stderr and str(pin) in r.stderr
    assert pin.read_text().splitlines()[0] == pub.read_text().strip()  # then the checkpoint
    r = tokex("audit", "verify", str(out), "--pin", str(pin))
    assert (r.returncode, r.stderr) == (0, "") and r.stdout.startswith("OK: ")

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
    for args in ([str(out), "--public-key", str(other)], [str(out), "--pin", str(other)],
                 [str(tmp_path / "missing"), "--public-key", str(pub)],
                 [str(pub), "--public-key", str(pub)]):  # fmt: skip
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
    pin = str(tmp_path / "pinned.pub")
    assert loaded_by("audit", "verify", str(out), "--json", "--pin", pin) == (0, [])
    assert loaded_by("-v", "audit", "verify", str(out), "--pin", pin) == (0, [])


async def test_export_from_url_is_byte_identical_to_the_database_export(
    db_url: str, tmp_path: Path
) -> None:
    """An auditor with a signed key and no database access gets, from a running exchange,
    the very file the operator exports from the database; it verifies against the pinned
    key; a buyer's key may not fetch it."""
    proc = ServerProcess(database_url=db_url, data_dir=tmp_path / "server")
    proc.start()
    operator = await operator_client(db_url, proc.base_url)
    try:
        await operator.create_instrument(CreateInstrument(
            symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
        ))  # fmt: skip
        buyer = await operator.create_account(Role.BUYER, "buyer")
        for n in range(5):
            await operator.deposit(f"dep-{n}", buyer.account_id, 1_000 + n)
        auditor = await operator.create_account(Role.AUDITOR, "outside")
        assert auditor.private_key is not None and buyer.private_key is not None
        key_file = tmp_path / "auditor.pem"
        key_file.write_text(auditor.private_key)
        from_db, from_url = tmp_path / "db.tokex", tmp_path / "url.tokex"
        r = tokex("audit", "export", "--out", str(from_db), env={"DATABASE_URL": db_url})
        assert r.returncode == 0, r.stdout + r.stderr
        r = tokex("audit", "export", "--out", str(from_url), "--from-url", proc.base_url,
                  "--key-id", auditor.key_id, "--key-file", str(key_file))  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert from_url.read_bytes() == from_db.read_bytes() and from_db.stat().st_size > 0
        keys = await operator.request("GET", "/v1/ledger/public-keys")
        pub = tmp_path / "exchange.pub"
        pub.write_text(keys["keys"][0]["key"])
        r = tokex("audit", "verify", str(from_url), "--public-key", str(pub))
        assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stdout
        # The latest checkpoint as the exchange serves it is one an auditor can keep.
        note = tmp_path / "latest.note"
        note.write_bytes(httpx.get(f"{proc.base_url}/v1/ledger/checkpoint").content)
        r = tokex("audit", "verify", str(from_url), "--public-key", str(pub),
                  "--checkpoint", str(note))  # fmt: skip
        assert r.returncode == 0 and "consistent with the checkpoints you trust" in r.stdout
        with pytest.raises(TokexApiError) as refused:
            await operator.as_account(buyer).audit_export(io.BytesIO())
        assert (refused.value.status, refused.value.code) == (403, "forbidden_role")
    finally:
        await operator.aclose()
        proc.stop()


async def _deposits(url: str, signer: Signer, batches: range, prefix: str) -> None:
    """Batches of 10 deposits (one checkpoint each), ids and amounts set by `prefix`."""
    ledger, _ = await open_ledger(url, signer)
    bank, alice = Account("exchange", "USD", "bank"), Account("alice", "USD", "cash")
    step = len(prefix)
    try:
        for b in batches:
            await ledger.apply_batch(
                [Transaction(id=f"{prefix}{b}-{i}", code="deposit", time=1 + b,
                             postings=(Posting(bank, -step - i), Posting(alice, step + i)))
                 for i in range(10)]
            )  # fmt: skip
    finally:
        await ledger.close()


def _export_to(url: str, out: Path, *extra: str) -> None:
    r = tokex("audit", "export", "--out", str(out), *extra, env={"DATABASE_URL": url})
    assert r.returncode == 0, r.stdout + r.stderr


async def test_the_pinned_checkpoint_catches_a_later_fork_and_a_rollback(
    db_url: str, pg: PgServer, pg_template: str, tmp_path: Path
) -> None:
    """An auditor who pins keeps the last checkpoint verified: a later export of the same
    history verifies and moves the pin on; one of another history signed by the same key
    (a fork), or one that ends before the pinned checkpoint (a rollback), is refused."""
    signer = Signer.generate(ORIGIN)
    pin, audit = tmp_path / "exchange.pin", tmp_path / "audit.tokex"
    await _deposits(db_url, signer, range(2), "d")
    _export_to(db_url, audit)
    r = tokex("audit", "verify", str(audit), "--pin", str(pin))
    assert r.returncode == 0 and "note: pinned checkpoint 20 in" in r.stdout, r.stdout
    assert pin.read_text().splitlines()[1:3] == [ORIGIN, "20"]  # the key, then the note

    await _deposits(db_url, signer, range(2, 3), "d")  # the same history, extended
    _export_to(db_url, audit)
    r = tokex("audit", "verify", str(audit), "--pin", str(pin))
    assert r.returncode == 0, r.stdout
    assert "consistent with the checkpoints you trust at sizes 20" in r.stdout
    assert "note: pinned checkpoint 30 in" in r.stdout

    async with pg.fresh_database(pg_template) as fork_url:  # same key, other entries
        await _deposits(fork_url, signer, range(4), "fork")
        forked = tmp_path / "fork.tokex"
        _export_to(fork_url, forked)
    before = pin.read_text()
    pub = tmp_path / "exchange.pub"
    pub.write_text(signer.verifier().encode())
    r = tokex("audit", "verify", str(forked), "--public-key", str(pub))
    assert r.returncode == 0, r.stdout  # on its own, the fork verifies
    r = tokex("audit", "verify", str(forked), "--pin", str(pin), "--json")
    failure = json.loads(r.stdout)
    assert (r.returncode, failure["ok"]) == (1, False)
    assert failure["where"] == f"checkpoint 30 you trust (pinned in {pin})"
    assert "at size 30" in failure["reason"] and "fork" in failure["reason"]
    assert pin.read_text() == before  # a refused export moves nothing

    _export_to(db_url, audit, "--to-index", "20")  # an older export: ends before the pin
    r = tokex("audit", "verify", str(audit), "--pin", str(pin))
    assert r.returncode == 1
    assert r.stdout.startswith(f"FAIL: checkpoint 30 you trust (pinned in {pin}): ")
    assert "ends at size 20" in r.stdout and "rollback" in r.stdout
    # The same checkpoint given by hand is checked just as the pinned one.
    note = tmp_path / "cp30.note"
    note.write_text(before.split("\n", 1)[1])
    r = tokex("audit", "verify", str(forked), "--public-key", str(pub), "--checkpoint", str(note))
    assert r.returncode == 1 and r.stdout.startswith(f"FAIL: checkpoint 30 you trust ({note})")


async def test_the_pin_keeps_the_key_chain_for_exports_after_a_rotation(
    db_url: str, tmp_path: Path
) -> None:
    """An auditor who pinned an export with a key rotation in it verifies later partial
    exports that start after the rotation (the pin keeps each accepted key with the size
    it signs from); a pin of the older format, the key alone, still reads."""
    first, second = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    await _deposits(db_url, first, range(2), "d")
    ledger, log = await open_ledger(db_url, first)
    try:
        rotated_at = await rotate(ledger, log, second, time_ms=100) + 1
    finally:
        await ledger.close()
    await _deposits(db_url, second, range(2, 4), "d")
    full, part, pin = tmp_path / "full.tokex", tmp_path / "part.tokex", tmp_path / "pin"
    _export_to(db_url, full)
    r = tokex("audit", "verify", str(full), "--pin", str(pin))
    assert r.returncode == 0, r.stdout
    keys = [first.verifier().encode(), str(rotated_at), second.verifier().encode()]
    assert pin.read_text().splitlines()[0].split() == keys
    _export_to(db_url, part, "--from-index", str(rotated_at))
    r = tokex("audit", "verify", str(part), "--pin", str(pin))
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith(f"OK: {ORIGIN}: entries {rotated_at}..")
    assert pin.read_text().splitlines()[0].split() == keys  # the chain stays pinned

    old = tmp_path / "old.pin"  # as pins were written before: the first key, the note
    old.write_text(keys[0] + "\n" + pin.read_text().split("\n", 1)[1])
    r = tokex("audit", "verify", str(part), "--pin", str(old))
    assert r.returncode == 1 and "announcement is not among the entries" in r.stdout
    r = tokex("audit", "verify", str(full), "--pin", str(old))  # the rotation is in it
    assert r.returncode == 0 and old.read_text().splitlines()[0].split() == keys, r.stdout
    old.write_text(f"{keys[0]} {rotated_at}\n")
    r = tokex("audit", "verify", str(part), "--pin", str(old))
    assert (r.returncode, r.stdout) == (
        1,
        f"FAIL: public key: {old}: a pinned key without its size\n",
    )


async def test_bad_bounds_and_paths_are_one_line_errors(db_url: str, tmp_path: Path) -> None:
    """An index beyond the API's bound is bad usage; `--out` a directory, or a pin in a
    directory that does not exist, is one line and exit 1, never a traceback (and with
    `--json` still one JSON object)."""
    await _deposits(db_url, Signer.generate(ORIGIN), range(1), "d")
    env = {"DATABASE_URL": db_url}
    for flag in ("--to-index", "--from-index"):
        r = tokex("audit", "export", "--out", str(tmp_path / "x"), flag, str(10**20), env=env)
        assert r.returncode == 2 and "an index is 0..2**62" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = tokex("audit", "export", "--out", str(tmp_path), env=env)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr.startswith(f"tokex: error: output_file_error: cannot write {tmp_path}: ")
    assert len(r.stderr.splitlines()) == 1 and not list(tmp_path.glob("*.partial"))

    audit, pin = tmp_path / "audit.tokex", tmp_path / "missing" / "pin"
    _export_to(db_url, audit)
    r = tokex("audit", "verify", str(audit), "--pin", str(pin))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stdout.startswith(f"FAIL: pin: the export verified, but {pin} cannot be written")
    assert len(r.stdout.splitlines()) == 1
    r = tokex("audit", "verify", str(audit), "--pin", str(pin), "--json")
    failure = json.loads(r.stdout)
    assert (r.returncode, failure["ok"], failure["where"], failure["code"]) == (
        1, False, "pin", "io_error"
    )  # fmt: skip
