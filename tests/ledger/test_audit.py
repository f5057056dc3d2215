"""Audit export from a real database, offline verification, and tampering of every kind."""

from __future__ import annotations

import io
import random
import re
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from ledger.audit.export import ExportEmpty, export
from ledger.audit.records import (
    FORMAT,
    AuditFailure,
    Balances,
    CheckpointRecord,
    End,
    Entries,
    FrameWriter,
    Header,
    KeyRecord,
    Keys,
    Receipts,
    Record,
    read_frames,
)
from ledger.audit.verify import PinnedKey, TrustedCheckpoint, verify_file
from ledger.canonical import decode_transaction, transaction_bytes
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.keys import rotate
from ledger.log import open_ledger
from ledger.merkle import MerkleFrontier, leaf_hash
from ledger.note import Signer, Verifier, parse_note
from ledger.receipts import commitment, receipt_bytes
from schemas.gateway import GatewayReceipt
from schemas.ledger import (
    Account,
    Bucket,
    CommittedTransaction,
    Entry,
    HoldCreate,
    HoldPost,
    Posting,
    Transaction,
)
from tests.support.pg import PgServer

ORIGIN = "audit.tokex/ledger"
BANK = Account("exchange", "USD", "bank")
TOKENS = Account("exchange", "TOK", "issuance")
USERS = [Account(f"u{i}", "USD", "cash") for i in range(6)]
TOKEN_USERS = [Account(f"u{i}", "TOK", "cash") for i in range(6)]


class Books(msgspec.Struct):
    url: str
    keys: list[Verifier]
    other: Signer


@pytest.fixture(scope="module")
def signers() -> tuple[Signer, Signer]:
    return Signer.generate(ORIGIN), Signer.generate(ORIGIN)


@pytest.fixture
async def books(db_url: str, signers: tuple[Signer, Signer]) -> AsyncIterator[Books]:
    """~120 transactions over 14 batches: deposits, two-asset trades, holds, one rotation."""
    first, second = signers
    ledger, log = await open_ledger(db_url, first)
    rng = random.Random(1)
    n = 0
    try:
        for u, t in zip(USERS, TOKEN_USERS, strict=True):
            await ledger.apply_batch(
                [
                    Transaction(id=f"fund-{u.owner}", code="deposit", time=10,
                                postings=(Posting(BANK, -10_000), Posting(u, 10_000))),
                    Transaction(id=f"mint-{u.owner}", code="mint", time=10,
                                postings=(Posting(TOKENS, -10_000), Posting(t, 10_000))),
                ]
            )  # fmt: skip
        for b in range(8):
            if b == 4:
                await rotate(ledger, log, second, time_ms=200)
            txs = []
            for _ in range(rng.randint(5, 15)):
                n += 1
                i, j = rng.sample(range(len(USERS)), 2)
                if n % 5 == 0:
                    txs.append(
                        Transaction(id=f"h{n}", code="hold", time=100 + b,
                                    holds=(HoldCreate(hold_id=f"hold{n}", account=USERS[i],
                                                      amount=7),))
                    )  # fmt: skip
                    txs.append(
                        Transaction(id=f"p{n}", code="settle", time=100 + b,
                                    holds=(HoldPost(hold_id=f"hold{n}", amount=5),),
                                    postings=(Posting(USERS[j], 5),))
                    )  # fmt: skip
                else:
                    amount = rng.randint(1, 50)
                    txs.append(
                        Transaction(id=f"x{n}", code="trade", time=100 + b,
                                    postings=(Posting(USERS[i], -amount),
                                              Posting(USERS[j], amount),
                                              Posting(TOKEN_USERS[j], -2 * amount),
                                              Posting(TOKEN_USERS[i], 2 * amount)))
                    )  # fmt: skip
            results = await ledger.apply_batch(txs)
            assert all(r.committed for r in results), results
    finally:
        await ledger.close()
    yield Books(db_url, [first.verifier(), second.verifier()], Signer.generate(ORIGIN))


async def export_bytes(url: str, from_index: int = 0, to_index: int | None = None) -> bytes:
    conn = await asyncpg.connect(url)
    try:
        out = io.BytesIO()
        await export(conn, out, from_index, to_index)
        return out.getvalue()
    finally:
        await conn.close()


def records(data: bytes) -> list[Record]:
    import hashlib

    return [r for r, _ in read_frames(io.BytesIO(data), hashlib.sha256())]


def rebuild(recs: list[Record]) -> bytes:
    """Re-serialise records, recomputing the end record as a careful forger would."""
    out = io.BytesIO()
    w = FrameWriter(out)
    entries = sum(len(r.bodies) for r in recs if isinstance(r, Entries))
    cps = sum(isinstance(r, CheckpointRecord) for r in recs)
    for r in recs:
        if isinstance(r, End):
            w.write(End(entries, cps, w.digest()))
        else:
            w.write(r)
    return out.getvalue()


def verify(data: bytes, key: Verifier | None = None) -> None:
    verify_file(io.BytesIO(data), key)


def failure(data: bytes, key: Verifier | None = None) -> AuditFailure:
    with pytest.raises(AuditFailure) as info:
        verify(data, key)
    return info.value


def body_at(recs: list[Record], index: int) -> tuple[Entries, int]:
    for r in recs:
        if isinstance(r, Entries) and r.start <= index < r.start + len(r.bodies):
            return r, index - r.start
    raise AssertionError(index)


async def test_export_verifies_and_is_byte_identical_on_rerun(books: Books) -> None:
    data = await export_bytes(books.url)
    assert data == await export_bytes(books.url)
    report = verify_file(io.BytesIO(data), books.keys[0])
    assert report.from_index == 0
    assert report.entries == report.to_index > 90
    assert report.keys == [k.encode() for k in books.keys]  # followed the rotation
    assert report.accounts == 14
    assert not report.trust_from_file
    assert verify_file(io.BytesIO(data)).trust_from_file  # trusts the first key, says so


async def test_partial_exports_verify(books: Books) -> None:
    full = records(await export_bytes(books.url))
    sizes = [parse_checkpoint(r).size for r in full if isinstance(r, CheckpointRecord)]
    data = await export_bytes(books.url, 5, sizes[-3] + 1)  # rounded down to a checkpoint
    report = verify_file(io.BytesIO(data), books.keys[0])  # the rotation is in the range
    assert (report.from_index, report.to_index) == (5, sizes[-3])
    assert report.keys == [k.encode() for k in books.keys]
    assert any("opening balances" in n for n in report.notes)
    # After the rotation, the second key alone is enough; before it, it is not.
    keys = next(r for r in full if isinstance(r, Keys)).keys
    rotated_from = keys[1].valid_from_size
    verify(await export_bytes(books.url, rotated_from), books.keys[1])
    err = failure(await export_bytes(books.url, rotated_from - 5), books.keys[1])
    assert "older than the trusted key" in err.reason
    with pytest.raises(ExportEmpty):
        await export_bytes(books.url, 10**6)


async def test_the_accepted_key_chain_trusts_a_partial_export_after_a_rotation(
    books: Books,
) -> None:
    """An auditor who verified the rotation keeps the accepted keys with their sizes
    (`accepted_keys`, what a pin writes): a later partial export starting after the
    rotation verifies against them; one whose key list swaps the rotated key does not."""
    full = await export_bytes(books.url)
    report = verify_file(io.BytesIO(full), books.keys[0])
    keys = next(r for r in records(full) if isinstance(r, Keys)).keys
    after = keys[1].valid_from_size
    assert report.accepted_keys == [
        PinnedKey(books.keys[0].encode(), 0), PinnedKey(books.keys[1].encode(), after)
    ]  # fmt: skip
    later = report.accepted_keys[1:]
    pinned = [TrustedCheckpoint(report.checkpoint_note, "pin")]
    part = await export_bytes(books.url, after)
    assert "announcement is not among the entries" in failure(part, books.keys[0]).reason
    ok = verify_file(io.BytesIO(part), books.keys[0], pinned, later)
    assert (ok.from_index, ok.keys) == (after, [k.encode() for k in books.keys])
    assert ok.accepted_keys == report.accepted_keys  # the chain is kept on
    # From before the rotation, the rotation entry is in the range and checked as ever.
    assert verify_file(io.BytesIO(await export_bytes(books.url, 5)), books.keys[0], (), later)
    # A key swap: the export lists another key from that size, signing its checkpoints.
    recs = records(part)
    swapped = [
        Keys([keys[0], KeyRecord(books.other.verifier().encode(), after, after - 1)])
        if isinstance(r, Keys)
        else r
        for r in recs
    ]
    with pytest.raises(AuditFailure) as info:
        verify_file(io.BytesIO(rebuild(swapped)), books.keys[0], pinned, later)
    assert info.value.where == "key 1" and "key list was changed" in info.value.reason
    moved = [PinnedKey(later[0].key, after + 1)]  # the same key, pinned from another size
    with pytest.raises(AuditFailure) as info:
        verify_file(io.BytesIO(part), books.keys[0], (), moved)
    assert info.value.where == "key 1"


def parse_checkpoint(r: CheckpointRecord) -> Checkpoint:
    text, _ = parse_note(r.note)
    return Checkpoint.parse(text)


async def test_first_key_only_follows_a_valid_rotation(books: Books) -> None:
    data = await export_bytes(books.url)
    verify(data, books.keys[0])
    err = failure(data, books.other.verifier())
    assert err.where == "keys"


async def test_changed_amount_names_the_entry(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    chunk, k = body_at(recs, 40)
    tx = decode_transaction(chunk.bodies[k])
    e = tx.entries[0]
    entries = (Entry(e.account, e.bucket, e.amount + 1), *tx.entries[1:])
    chunk.bodies[k] = transaction_bytes(msgspec.structs.replace(tx, entries=entries))
    err = failure(rebuild(recs), books.keys[0])
    assert (err.where, "zero" in err.reason) == ("entry 40", True)


async def test_balanced_change_is_caught_by_the_signed_root(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    chunk, k = body_at(recs, 40)
    tx = decode_transaction(chunk.bodies[k])
    entries = tuple(Entry(e.account, e.bucket, e.amount * 2) for e in tx.entries)
    chunk.bodies[k] = transaction_bytes(msgspec.structs.replace(tx, entries=entries))
    err = failure(rebuild(recs), books.keys[0])
    assert err.where.startswith("checkpoint ")
    assert "root does not match" in err.reason
    lo, hi = (int(x) for x in err.reason.split("entries ")[1].split(" ")[0].split(".."))
    assert lo <= 40 <= hi


async def test_dropped_entry(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    chunk, k = body_at(recs, 30)
    del chunk.bodies[k]
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == "entry 30"


async def test_swapped_entries(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    chunk, k = body_at(recs, 50)
    other, m = body_at(recs, 51)
    chunk.bodies[k], other.bodies[m] = other.bodies[m], chunk.bodies[k]
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == "entry 50"


async def test_replaced_signature(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    i = next(i for i, r in enumerate(recs) if isinstance(r, CheckpointRecord))
    note = recs[i].note  # type: ignore[union-attr]
    body, sig = note.rsplit(" ", 1)
    forged = Signer.generate(ORIGIN).sign(b"whatever")
    import base64

    raw = base64.b64decode(sig)[:4] + forged
    recs[i] = CheckpointRecord(f"{body} {base64.b64encode(raw).decode()}\n")
    err = failure(rebuild(recs), books.keys[0])
    assert err.where.startswith("checkpoint ") and "signature" in err.reason


async def test_checkpoint_signed_by_another_key(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    i = next(i for i, r in enumerate(recs) if isinstance(r, CheckpointRecord))
    cp = parse_checkpoint(recs[i])  # type: ignore[arg-type]
    recs[i] = CheckpointRecord(sign_checkpoint(cp, books.other))
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == f"checkpoint {cp.size}"


async def test_truncated_file(books: Books) -> None:
    data = await export_bytes(books.url)
    for cut in (len(data) - 1, len(data) // 2, 20, 0):
        err = failure(data[:cut], books.keys[0])
        assert err.where in ("file",) or err.where.startswith(("entry", "checkpoint", "record"))


async def test_a_file_of_another_format_version_says_so(books: Books) -> None:
    data = await export_bytes(books.url)
    assert data.startswith(b"TOKEX-AUDIT/3\n")
    err = failure(b"TOKEX-AUDIT/2\n" + data[14:], books.keys[0])
    assert (err.where, err.reason) == ("file", f"format TOKEX-AUDIT/2 is not {FORMAT}")


async def test_appended_forged_entry(books: Books) -> None:
    recs = records(await export_bytes(books.url))
    last = [r for r in recs if isinstance(r, Entries)][-1]
    tx = decode_transaction(last.bodies[-1])
    index = last.start + len(last.bodies)
    forged = msgspec.structs.replace(tx, index=index, id="forged")
    pos = next(i for i, r in enumerate(recs) if isinstance(r, Balances) and r.which == "closing")
    recs.insert(pos, Entries(index, [transaction_bytes(forged)]))
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == f"entry {index}"
    # Even with the header's range extended, it is not under any signature.
    header = recs[0]
    assert isinstance(header, Header)
    recs[0] = msgspec.structs.replace(header, to_index=header.to_index + 1)
    err = failure(rebuild(recs), books.keys[0])
    assert "after the last checkpoint" in err.reason or err.where.startswith("entry")


async def test_closing_balances_out_of_order_are_refused(books: Books) -> None:
    """Closing rows are documented sorted: the same rows in another order (every balance
    still right) are refused, naming the first row out of order, also across chunks."""
    recs = records(await export_bytes(books.url))
    pos = next(i for i, r in enumerate(recs) if isinstance(r, Balances) and r.which == "closing")
    closing = recs[pos]
    assert isinstance(closing, Balances) and len(closing.rows) > 3
    rows = closing.rows
    verify(rebuild(recs), books.keys[0])  # rebuilt as it was: verifies
    swapped = [rows[0], rows[2], rows[1], *rows[3:]]
    recs[pos] = Balances("closing", swapped)
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == "closing balances row 2"
    assert f"{rows[1][0]}|{rows[1][1]}|{rows[1][2]} is out of order" in err.reason
    # Two chunks, each sorted, the second starting before the end of the first.
    recs[pos : pos + 1] = [Balances("closing", rows[2:]), Balances("closing", rows[:2])]
    err = failure(rebuild(recs), books.keys[0])
    assert err.where == f"closing balances row {len(rows) - 2}"
    # A repeated row is out of order too (not after itself).
    recs[pos : pos + 2] = [Balances("closing", [*rows, rows[-1]])]
    assert failure(rebuild(recs), books.keys[0]).where == f"closing balances row {len(rows)}"


async def tampered_entries_export(url: str, tx_id: str, delta: int, start: int = 0) -> bytes:
    """An export taken after `delta` was added to both sides of transaction `tx_id`'s rows
    in ledger_entries (triggers off, as a database superuser could), its signed bytes
    untouched: the settlement reports, which read those rows, would change. Rolled back."""
    conn = await asyncpg.connect(url)
    try:
        tr = conn.transaction(isolation="repeatable_read")
        await tr.start()
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE ledger_entries SET amount = amount + sign(amount)::bigint * $2 "
            "WHERE tx_idx = (SELECT idx FROM ledger_transactions WHERE tx_id = $1)",
            tx_id,
            delta,
        )
        out = io.BytesIO()
        await export(conn, out, start)
        await tr.rollback()
        return out.getvalue()
    finally:
        await conn.close()


async def test_an_altered_entries_table_fails_the_audit(books: Books) -> None:
    """The reports read ledger_entries, the audit the signed bodies: the export states what
    the entries table sums to per account over its range, and verify refuses it when that
    is not what the signed entries moved, naming the account."""
    for start in (0, 3):  # a full export and a partial one covering the deposit
        data = await tampered_entries_export(books.url, "fund-u2", 500, start)
        err = failure(data, books.keys[0])
        assert err.where == "ledger entries", err
        assert err.reason.startswith(f"account exchange|USD|bank: the stored entries of {start}..")
        sums = re.search(r"sum to available (-?\d+), held 0, the signed entries to available "
                         r"(-?\d+), held 0", err.reason)  # fmt: skip
        assert sums is not None and int(sums[1]) == int(sums[2]) - 500, err.reason
    honest = await export_bytes(books.url)
    verify(honest, books.keys[0])
    recs = records(honest)
    pos = next(i for i, r in enumerate(recs) if isinstance(r, Balances) and r.which == "entries")
    sums = recs[pos]
    assert isinstance(sums, Balances) and len(sums.rows) > 3
    u2 = next(r for r in sums.rows if r[:3] == ("u2", "USD", "cash"))
    err = failure(rebuild([r for r in recs if r is not sums]), books.keys[0])
    assert err.where == "ledger entries"  # the rows left out
    recs[pos] = Balances("entries", [r if r is not u2 else (*u2[:3], u2[3] + 1, u2[4])
                                     for r in sums.rows])  # fmt: skip
    err = failure(rebuild(recs), books.keys[0])
    assert err.reason.startswith("account u2|USD|cash: ") and f"available {u2[3] + 1}" in err.reason
    recs[pos] = Balances("entries", sums.rows[::-1])
    assert failure(rebuild(recs), books.keys[0]).where == "entries balances row 1"


async def test_opening_balances_out_of_order_are_refused(books: Books) -> None:
    recs = records(await export_bytes(books.url, 40))
    pos = next(i for i, r in enumerate(recs) if isinstance(r, Balances) and r.which == "opening")
    opening = recs[pos]
    assert isinstance(opening, Balances) and len(opening.rows) > 1
    recs[pos] = Balances("opening", opening.rows[::-1])
    assert failure(rebuild(recs), books.keys[0]).where == "opening balances row 1"


async def test_random_byte_flips_never_verify(books: Books) -> None:
    data = await export_bytes(books.url)
    rng = random.Random(2024)
    for _ in range(1000):
        copy = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 3))):
            copy[rng.randrange(len(copy))] ^= 1 << rng.randrange(8)
        if bytes(copy) == data:
            continue
        with pytest.raises(AuditFailure):
            verify(bytes(copy), books.keys[0])


async def test_export_of_a_running_ledger_verifies(
    db_url: str, signers: tuple[Signer, Signer]
) -> None:
    """The writer snapshots balances only now and then; an export taken while it runs
    must still close with what the exchange holds (snapshot + journal), and verify."""
    ledger, _ = await open_ledger(db_url, signers[0])
    try:
        await ledger.apply_batch(
            [Transaction(id="fund", code="deposit", time=10,
                         postings=(Posting(BANK, -100), Posting(USERS[0], 100)))]
        )  # fmt: skip
        await ledger.apply_batch(
            [Transaction(id="pay", code="trade", time=11,
                         postings=(Posting(USERS[0], -30), Posting(USERS[1], 30)))]
        )  # fmt: skip
        report = verify_file(io.BytesIO(await export_bytes(db_url)), signers[0].verifier())
        assert report.entries == 2 and report.accounts == 3
    finally:
        await ledger.close()


def _one_delivery_file(burned_owner: str) -> tuple[bytes, Verifier]:
    """A signed export of one gateway delivery (entry 1) whose metadata and two receipts
    are buyer b's from provider p, and whose entries burn the entitlement of
    `burned_owner` (100 tokens of which entry 0 mints)."""
    signer = Signer.generate(ORIGIN)
    rs = [_receipt(n) for n in (1, 2)]
    c = commitment(rs, 1)
    burn = Account(burned_owner, "tok:m/1/1", "entitlement")
    mint = Account("exchange", "tok:m/1/1", "issuance")
    minted = CommittedTransaction(
        0, "mint", "mint", 5,
        (Entry(mint, Bucket.AVAILABLE, -100), Entry(burn, Bucket.AVAILABLE, 100)), (), {},
    )  # fmt: skip
    tx = CommittedTransaction(
        1, "delivery:p:gw:x", "delivery", 5,
        (Entry(burn, Bucket.AVAILABLE, -c.tokens), Entry(mint, Bucket.AVAILABLE, c.tokens)),
        (), {"buyer": "b", "provider": "p", "instrument": "m/1/1", **c.metadata()},
    )  # fmt: skip
    bodies = [transaction_bytes(minted), transaction_bytes(tx)]
    tree = MerkleFrontier()
    tree.extend([leaf_hash(b) for b in bodies])
    point = Checkpoint(origin=ORIGIN, size=2, root_hash=tree.root(), time_ms=10)
    out = io.BytesIO()
    w = FrameWriter(out)
    w.write(Header(FORMAT, ORIGIN, 0, 2, MerkleFrontier().to_bytes()))
    w.write(Keys([KeyRecord(signer.verifier().encode(), 0, None)]))
    w.write(Entries(0, bodies))
    w.write(CheckpointRecord(sign_checkpoint(point, signer)))
    rows = sorted([(burned_owner, "tok:m/1/1", "entitlement", 100 - c.tokens, 0),
                   ("exchange", "tok:m/1/1", "issuance", c.tokens - 100, 0)])  # fmt: skip
    w.write(Balances("closing", rows))
    w.write(Balances("entries", rows))
    w.write(Receipts(tx.id, 0, [receipt_bytes(r) for r in rs]))
    w.write(End(2, 1, w.digest()))
    return out.getvalue(), signer.verifier()


def _receipt(n: int) -> GatewayReceipt:
    return GatewayReceipt(
        receipt_id=f"rcp_{n:024x}", key_id="ik_0000000000000000", buyer="b", provider="p",
        instrument="m/1/1", endpoint_id="e1", model="m", prompt_tokens=3,
        completion_tokens=5, cached_tokens=0, reasoning_tokens=0, tokens=8,
        started_ms=1, ended_ms=2, request_sha256=bytes(32), response_sha256=bytes(32),
    )  # fmt: skip


def test_receipts_of_one_buyer_never_back_a_burn_of_anothers_entitlement() -> None:
    data, key = _one_delivery_file("b@p")
    assert verify_file(io.BytesIO(data), key).receipts == 2
    data, key = _one_delivery_file("x@p")  # b's receipts, x's entitlement burned
    with pytest.raises(AuditFailure, match=r"entry 1.*burns the entitlement x@p/tok:m/1/1"):
        verify_file(io.BytesIO(data), key)


# -- checkpoints the auditor trusts from before: forks and rollbacks --------------------


async def served_checkpoint(url: str, size: int) -> TrustedCheckpoint:
    """The signed note of that size as the exchange serves it (``GET /v1/ledger/checkpoints
    ?size=``, ``GET /v1/ledger/checkpoint`` for the latest: the stored note, verbatim)."""
    conn = await asyncpg.connect(url)
    try:
        note = await conn.fetchval("SELECT note FROM ledger_checkpoints WHERE tree_size = $1", size)
    finally:
        await conn.close()
    assert note is not None, size
    return TrustedCheckpoint(note, f"cp-{size}.note")


def checkpoint_sizes(data: bytes) -> list[int]:
    return [parse_checkpoint(r).size for r in records(data) if isinstance(r, CheckpointRecord)]


def thin(data: bytes) -> bytes:
    """The export less every checkpoint before its last: still a valid file."""
    recs = records(data)
    last = max(i for i, r in enumerate(recs) if isinstance(r, CheckpointRecord))
    return rebuild(
        [r for i, r in enumerate(recs) if i == last or not isinstance(r, CheckpointRecord)]
    )


async def test_an_earlier_checkpoint_you_trust_is_checked_against_the_entries(
    books: Books,
) -> None:
    data = await export_bytes(books.url)
    sizes = checkpoint_sizes(data)
    earlier = [await served_checkpoint(books.url, m) for m in (sizes[3], sizes[-2])]
    for file in (data, thin(data)):  # thinned: the root at each size is recomputed anyway
        report = verify_file(io.BytesIO(file), books.keys[0], earlier)
        assert report.consistent_with == [sizes[3], sizes[-2]] and report.unchecked == []
    # A partial export checks one inside its range, one at its start (its frontier's root),
    # and one before it when the frontier holds that size (10 = 8 + 2 holds 8, not 6).
    assert sizes[:5] == [2, 4, 6, 8, 10]
    partial = await export_bytes(books.url, 10)
    trusted = [await served_checkpoint(books.url, m) for m in (8, 10, sizes[6], 6)]
    report = verify_file(io.BytesIO(partial), books.keys[0], trusted)
    assert (report.consistent_with, report.unchecked) == ([8, 10, sizes[6]], [6])
    assert any("checkpoint 6 you trust" in n and "cannot be checked" in n for n in report.notes)


async def test_a_checkpoint_of_a_forked_history_is_refused_naming_its_size(
    books: Books, pg: PgServer, pg_template: str, signers: tuple[Signer, Signer]
) -> None:
    """The exchange signs, with the same key, another history for another auditor: each
    file verifies alone; against a checkpoint of the other, the export is refused."""
    async with pg.fresh_database(pg_template) as fork_url:
        ledger, _ = await open_ledger(fork_url, signers[0])
        try:
            for b in range(3):
                await ledger.apply_batch(
                    [Transaction(id=f"f{b}-{i}", code="deposit", time=10,
                                 postings=(Posting(BANK, -1 - i), Posting(USERS[i], 1 + i)))
                     for i in range(4)]
                )  # fmt: skip
        finally:
            await ledger.close()
        fork = thin(await export_bytes(fork_url))
        assert verify_file(io.BytesIO(fork), books.keys[0]).to_index == 12  # alone: fine
        theirs = await served_checkpoint(books.url, 8)
        with pytest.raises(AuditFailure) as info:
            verify_file(io.BytesIO(fork), books.keys[0], [theirs])
        assert info.value.where == "checkpoint 8 you trust (cp-8.note)"
        assert "differs from the export's root" in info.value.reason
        assert "at size 8" in info.value.reason and "fork" in info.value.reason
        # And the other way round: the fork's checkpoint against the honest export.
        ours = await served_checkpoint(fork_url, 12)
    with pytest.raises(AuditFailure, match=r"^checkpoint 12 you trust .*fork"):
        verify_file(io.BytesIO(await export_bytes(books.url)), books.keys[0], [ours])


async def test_an_export_ending_before_a_checkpoint_you_trust_is_refused(books: Books) -> None:
    sizes = checkpoint_sizes(await export_bytes(books.url))
    data = await export_bytes(books.url, 0, sizes[4])
    later = await served_checkpoint(books.url, sizes[-1])
    with pytest.raises(AuditFailure) as info:
        verify_file(io.BytesIO(data), books.keys[0], [later])
    assert info.value.where == f"checkpoint {sizes[-1]} you trust (cp-{sizes[-1]}.note)"
    assert f"ends at size {sizes[4]}" in info.value.reason
    assert "fork or a rollback" in info.value.reason


async def test_a_checkpoint_you_trust_must_be_signed_by_a_key_the_export_accepts(
    books: Books, signers: tuple[Signer, Signer]
) -> None:
    data = await export_bytes(books.url)
    cp = Checkpoint.parse(parse_note((await served_checkpoint(books.url, 8)).note)[0])
    forged = TrustedCheckpoint(sign_checkpoint(cp, books.other), "forged.note")
    with pytest.raises(AuditFailure, match=r"^checkpoint you trust \(forged.note\): not signed"):
        verify_file(io.BytesIO(data), books.keys[0], [forged])
    # Signed by the second key, which the export accepts from its rotation on: a partial
    # export ending before the rotation does not accept it.
    resigned = TrustedCheckpoint(sign_checkpoint(cp, signers[1]), "resigned.note")
    assert verify_file(io.BytesIO(data), books.keys[0], [resigned]).consistent_with == [8]
    keys = next(r for r in records(data) if isinstance(r, Keys)).keys
    early = await export_bytes(books.url, 0, keys[1].valid_from_size - 1)
    with pytest.raises(AuditFailure, match="announcement is not among the entries"):
        verify_file(io.BytesIO(early), books.keys[0], [resigned])
