"""Signing keys: key files (0600), first-start creation, `tokex keys`, rotation in the ledger."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import asyncpg
import pytest

from ledger.audit.export import export
from ledger.audit.verify import verify_file
from ledger.canonical import decode_transaction
from ledger.checkpoint import verify_checkpoint
from ledger.keys import (
    KEY_ROTATION_CODE,
    KeyFileError,
    KeyFileInsecure,
    KeyRotationInvalid,
    check_rotation,
    load_or_create_signer,
    load_signer,
    rotate,
    rotation_message,
    rotation_metadata,
    write_key_file,
)
from ledger.log import SigningKeyNotCurrent, open_ledger
from ledger.note import KeyInvalid, NoteUnverified, Signer, Verifier, key_id
from ledger.store import committed_transactions
from ops.cli import main as tokex_main
from ops.config import DEFAULT_EXCHANGE_NAME
from schemas.ledger import Account, CommittedTransaction, Posting, Transaction

ORIGIN = "test.tokex/ledger"
BANK = Account("exchange", "USD", "bank")
ALICE = Account("alice", "USD", "cash")


def deposit(tx_id: str, amount: int = 5) -> Transaction:
    return Transaction(
        id=tx_id, code="deposit", time=50, postings=(Posting(BANK, -amount), Posting(ALICE, amount))
    )


def test_key_file_round_trip_is_private(tmp_path: Path) -> None:
    signer = Signer.generate(ORIGIN)
    path = tmp_path / "k.key"
    write_key_file(path, signer)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_signer(path).verifier() == signer.verifier()
    with pytest.raises(KeyFileError):
        write_key_file(path, Signer.generate(ORIGIN))  # never overwrites a key
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileInsecure):
        load_signer(path)


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        load_signer(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("PRIVATE+KEY+nonsense\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError):
        load_signer(bad)


def test_key_is_created_on_first_start_then_reused(tmp_path: Path) -> None:
    first = load_or_create_signer(None, tmp_path / "data", ORIGIN)
    again = load_or_create_signer(None, tmp_path / "data", ORIGIN)
    assert first.verifier() == again.verifier()
    assert first.name == ORIGIN
    configured = tmp_path / "configured.key"
    write_key_file(configured, Signer.generate(ORIGIN))
    assert (
        load_or_create_signer(configured, tmp_path / "data", ORIGIN).verifier() != first.verifier()
    )


def test_cli_generate_writes_a_private_key_and_prints_the_public_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exchange.key"
    assert tokex_main(["keys", "generate", "--name", ORIGIN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert Verifier.parse(printed) == load_signer(out).verifier()
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert "PRIVATE" not in printed
    assert tokex_main(["keys", "generate", "--name", ORIGIN, "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err


async def test_rotation_is_announced_and_followed(db_url: str, db_conn: asyncpg.Connection) -> None:
    old, new = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    ledger, log = await open_ledger(db_url, old)
    try:
        await ledger.apply_batch([deposit("d1"), deposit("d2")])
        index = await rotate(ledger, log, new, time_ms=60)
        assert index == 2
        await ledger.apply_batch([deposit("d3")])
    finally:
        await ledger.close()

    notes = {
        r["tree_size"]: r["note"]
        for r in await db_conn.fetch("SELECT tree_size, note FROM ledger_checkpoints")
    }
    assert sorted(notes) == [2, 3, 4]
    verify_checkpoint(notes[2], [old.verifier()], ORIGIN)
    for size in (3, 4):  # from the announcement on, only the new key signs
        verify_checkpoint(notes[size], [new.verifier()], ORIGIN)
        with pytest.raises(NoteUnverified):
            verify_checkpoint(notes[size], [old.verifier()], ORIGIN)

    # A verifier that trusts only the old key learns the new one from the ledger itself.
    announcement = decode_transaction((await committed_transactions(db_conn, 2, 3))[0])
    assert announcement.code == KEY_ROTATION_CODE
    assert check_rotation(announcement, old.verifier(), ORIGIN) == new.verifier()
    with pytest.raises(KeyRotationInvalid):
        check_rotation(announcement, Signer.generate(ORIGIN).verifier(), ORIGIN)

    keys = await db_conn.fetch(
        "SELECT key, valid_from_size, announced_in_tx FROM ledger_keys ORDER BY valid_from_size"
    )
    assert [(r["key"], r["valid_from_size"], r["announced_in_tx"]) for r in keys] == [
        (old.verifier().encode(), 0, None),
        (new.verifier().encode(), 3, 2),
    ]
    # After a restart the old key may no longer sign; the new one continues the log.
    with pytest.raises(SigningKeyNotCurrent):
        await open_ledger(db_url, old)
    ledger, log = await open_ledger(db_url, new)
    try:
        assert log.size == 4
        await ledger.apply_batch([deposit("d4")])
    finally:
        await ledger.close()


async def test_forged_rotation_is_refused_and_changes_nothing(
    db_url: str, db_conn: asyncpg.Connection
) -> None:
    current, intruder = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    ledger, log = await open_ledger(db_url, current)
    try:
        await ledger.apply_batch([deposit("d1")])
        log.stage(intruder)
        forged = Transaction(
            id="forged",
            code=KEY_ROTATION_CODE,
            time=70,
            metadata=rotation_metadata(intruder, intruder.verifier(), ORIGIN, 2),
        )
        with pytest.raises(KeyRotationInvalid):
            await ledger.apply_batch([forged])
        assert (ledger.size, log.size, log.signer.verifier()) == (1, 1, current.verifier())
        await ledger.apply_batch([deposit("d2")])
    finally:
        await ledger.close()
    assert await db_conn.fetchval("SELECT count(*) FROM ledger_keys") == 1
    assert await db_conn.fetchval("SELECT max(tree_size) FROM ledger_checkpoints") == 2


async def test_cli_rotate_replaces_the_default_key_and_auditors_follow(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    first = load_or_create_signer(None, data, DEFAULT_EXCHANGE_NAME)  # as `tokex serve` does
    ledger, _ = await open_ledger(db_url, first, DEFAULT_EXCHANGE_NAME)
    try:
        await ledger.apply_batch([deposit("d1")])
    finally:
        await ledger.close()
    new = Signer.generate(DEFAULT_EXCHANGE_NAME)
    write_key_file(tmp_path / "new.key", new)
    monkeypatch.setenv("DATABASE_URL", db_url)
    args = ["keys", "rotate", "--new-key", str(tmp_path / "new.key"), "--data-dir", str(data)]
    # The CLI calls asyncio.run: give it a thread without a running loop.
    assert await asyncio.to_thread(tokex_main, args) == 0
    assert "announced in entry 1" in capsys.readouterr().out
    assert load_or_create_signer(None, data, DEFAULT_EXCHANGE_NAME).verifier() == new.verifier()
    assert len(list(data.glob("*.retired"))) == 1

    ledger, _ = await open_ledger(db_url, new, DEFAULT_EXCHANGE_NAME)  # the next start
    try:
        await ledger.apply_batch([deposit("d2")])
    finally:
        await ledger.close()
    conn = await asyncpg.connect(db_url)
    try:
        out = io.BytesIO()
        await export(conn, out)
    finally:
        await conn.close()
    report = verify_file(io.BytesIO(out.getvalue()), first.verifier())
    assert report.keys == [first.verifier().encode(), new.verifier().encode()]
    assert report.entries == 3


def test_rotation_to_a_weak_key_is_refused() -> None:
    """Even signed by the current key, an announcement of a small-order key (under which
    anyone could sign checkpoints) is refused; so is such a key given to trust."""
    old = Signer.generate(ORIGIN)
    for weak in (bytes([1]) + bytes(31), bytes(32)):
        b64 = base64.b64encode(b"\x01" + weak).decode()
        vkey = f"{ORIGIN}+{key_id(ORIGIN, weak):08x}+{b64}"
        with pytest.raises(KeyInvalid):
            Verifier.parse(vkey)
        signature = old.sign(rotation_message(ORIGIN, vkey, 8))
        tx = CommittedTransaction(
            index=7, id="rot", code=KEY_ROTATION_CODE, time=1, entries=(), holds=(),
            metadata={"key": vkey, "valid_from_size": "8",
                      "signature": base64.b64encode(signature).decode()},
        )  # fmt: skip
        with pytest.raises(KeyRotationInvalid, match="malformed key"):
            check_rotation(tx, old.verifier(), ORIGIN)


def test_a_rotation_signature_is_read_only_in_its_canonical_base64() -> None:
    """The same signature with the unused bits of its last base64 character set (which
    decodes to the same bytes) is refused: the announcement has one spelling."""
    old, new = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    meta = rotation_metadata(old, new.verifier(), ORIGIN, 8)

    def rotation(metadata: dict[str, str]) -> CommittedTransaction:
        return CommittedTransaction(
            index=7, id="rot", code=KEY_ROTATION_CODE, time=1, entries=(), holds=(),
            metadata=metadata,
        )  # fmt: skip

    assert check_rotation(rotation(meta), old.verifier(), ORIGIN) == new.verifier()
    sig = meta["signature"]
    assert sig.endswith("==")  # 64 bytes: the last character before "==" has 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    loose = sig[:-3] + alphabet[alphabet.index(sig[-3]) | 1] + "=="
    assert loose != sig and base64.b64decode(loose) == base64.b64decode(sig)
    with pytest.raises(KeyRotationInvalid, match="malformed key or signature"):
        check_rotation(rotation({**meta, "signature": loose}), old.verifier(), ORIGIN)
