"""Verifier fuzzing: seeded mutations of a real audit export, verified with a pinned key.

    python -m ops.bench.fuzz_verify [--cases 10000] [--seed 1] [--data-dir DIR]

Builds a small real ledger (deposits, two-asset trades, holds posted, a key rotation:
about 150 transactions, a checkpoint per batch) on a fresh database (DATABASE_URL, else
an embedded PostgreSQL in a temporary data dir), exports it (`ledger.audit.export`), and
verifies mutants of the file in memory with `verify_file(file, pinned_first_key)`. The
mutations (`MUTATIONS`) are those of a careless disk and of a careful forger, who
re-seals the end record (counts and file digest, which no key protects):

flip, truncate            bits flipped anywhere / the file cut short (not re-sealed)
flip_sealed               bits flipped in one record, re-sealed
field                     one scalar deep in one record changed (int, string, bytes), re-sealed
insert, remove, reorder   a record duplicated elsewhere, dropped, or two swapped, re-sealed
entry_dup                 a transaction repeated inside an entries record, re-sealed
rebalance                 an amount moved between two postings of one asset (still sums to
                          zero), and the closing balances fixed to match, re-sealed
rebalance_closing         value moved between two closing balance rows of one asset
swap_signatures           two checkpoints' signature lines swapped
resign                    a rebalanced history with every checkpoint recomputed and signed
                          by another key of the same name, and that key in the key list
rotation                  the key rotation's announcement or the key list changed, re-sealed
header, end               a header field or an end count changed, re-sealed

A mutant must be refused with the verifier's own `AuditFailure` unless its records are
the same as the original's (then accepting it is right), or are the original's less some
checkpoints before the last (`thinned`: the format cannot tell which checkpoints were
signed; every entry is still under the last signature; counted apart). Prints a table per mutation
and last `violations=N` (accepted forgeries plus any other exception); exits 1 unless 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ledger.audit.records import MAGIC, AuditFailure, CheckpointRecord, End, Record, read_frames
from ledger.audit.verify import verify_file
from ledger.canonical import TRANSACTION_PREFIX
from ledger.keys import KEY_ROTATION_CODE
from ledger.note import Signer, Verifier

ORIGIN = "fuzz.tokex/ledger"

# -- the file as frames ----------------------------------------------------------------


def frames(data: bytes) -> list[bytes]:
    """The payloads of a well-formed file's frames (the original export)."""
    out, pos = [], len(MAGIC)
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def join(payloads: list[bytes]) -> bytes:
    return MAGIC + b"".join(len(p).to_bytes(4, "big") + p for p in payloads)


def seal(payloads: list[bytes]) -> bytes:
    """The file with its end record made to match, as a forger would: the counts of the
    decodable entries and checkpoint records, and the digest of every byte before it."""
    body = payloads[:-1]
    entries = checkpoints = 0
    for p in body:
        try:
            rec = msgspec.msgpack.decode(p)
        except msgspec.DecodeError:
            continue
        if isinstance(rec, list) and rec and rec[0] == "entries" and len(rec) == 3:
            entries += len(rec[2]) if isinstance(rec[2], list) else 0
        elif isinstance(rec, list) and rec and rec[0] == "checkpoint":
            checkpoints += 1
    head = join(body)
    end = End(entries, checkpoints, hashlib.sha256(head).digest())
    return join([*body, msgspec.msgpack.encode(end)])


def decoded(data: bytes) -> list[Record] | None:
    """The file's records, or None if it does not even frame and decode."""
    try:
        return [r for r, _ in read_frames(io.BytesIO(data), hashlib.sha256())]
    except AuditFailure:
        return None


# -- mutations -------------------------------------------------------------------------


@dataclass(slots=True)
class Base:
    data: bytes
    payloads: list[bytes]
    records: list[Any]  # the payloads decoded to plain lists
    pinned: Verifier
    other: Signer  # a key of the same name the forger holds

    def indices(self, tag: str) -> list[int]:
        return [i for i, r in enumerate(self.records) if r[0] == tag]


Mutation = Callable[[Base, random.Random], bytes]
enc = msgspec.msgpack.encode


def flip(base: Base, rng: random.Random) -> bytes:
    data = bytearray(base.data)
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(base: Base, rng: random.Random) -> bytes:
    return base.data[: rng.randrange(len(base.data))]


def flip_sealed(base: Base, rng: random.Random) -> bytes:
    payloads = list(base.payloads)
    i = rng.randrange(len(payloads) - 1)
    p = bytearray(payloads[i])
    for _ in range(rng.randint(1, 2)):
        p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
    payloads[i] = bytes(p)
    return seal(payloads)


def _tweak(value: Any, rng: random.Random) -> Any:
    """`value` with one scalar somewhere in it changed."""
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return [*value[:i], _tweak(value[i], rng), *value[i + 1 :]]
    if isinstance(value, bool) or value is None:
        return rng.choice([0, 1, "x", None if value is not None else 0])
    if isinstance(value, int):
        return value + rng.choice([-1, 1, -(1 << 20), 1 << 40])
    if isinstance(value, str):
        if not value:
            return "x"
        i = rng.randrange(len(value))
        return value[:i] + chr((ord(value[i]) + 1) % 0x7F or 0x41) + value[i + 1 :]
    if isinstance(value, bytes) and value:
        if value.startswith(TRANSACTION_PREFIX) and rng.random() < 0.8:
            tx = msgspec.msgpack.decode(value[len(TRANSACTION_PREFIX) :])
            return TRANSACTION_PREFIX + enc(_tweak(tx, rng))
        b = bytearray(value)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    return rng.choice([0, "", b""])


def field_change(base: Base, rng: random.Random) -> bytes:
    records = list(base.records)
    i = rng.randrange(len(records) - 1)
    records[i] = [records[i][0], *_tweak(records[i][1:], rng)]
    return seal([enc(r) for r in records])


def insert(base: Base, rng: random.Random) -> bytes:
    payloads = list(base.payloads)
    p = payloads[rng.randrange(len(payloads) - 1)]
    payloads.insert(rng.randrange(len(payloads)), p)
    return seal(payloads)


def remove(base: Base, rng: random.Random) -> bytes:
    payloads = list(base.payloads)
    del payloads[rng.randrange(len(payloads) - 1)]
    return seal(payloads)


def reorder(base: Base, rng: random.Random) -> bytes:
    payloads = list(base.payloads)
    i, j = rng.sample(range(len(payloads) - 1), 2)
    payloads[i], payloads[j] = payloads[j], payloads[i]
    return seal(payloads)


def entry_dup(base: Base, rng: random.Random) -> bytes:
    records = list(base.records)
    i = rng.choice(base.indices("entries"))
    tag, start, bodies = records[i]
    k = rng.randrange(len(bodies))
    records[i] = [tag, start, [*bodies[: k + 1], bodies[k], *bodies[k + 1 :]]]
    return seal([enc(r) for r in records])


def _rebalanced(base: Base, rng: random.Random) -> tuple[list[Any], int] | None:
    """Records with an amount moved between two postings of one asset in one
    transaction (still summing to zero) and the closing balances fixed to match; and the
    index of the changed entries record. None if the drawn transaction has no such pair."""
    records = [list(r) for r in base.records]
    i = rng.choice(base.indices("entries"))
    bodies = list(records[i][2])
    k = rng.randrange(len(bodies))
    tx = msgspec.msgpack.decode(bodies[k][len(TRANSACTION_PREFIX) :])
    entries = tx[4]
    pairs = [(a, b) for a in range(len(entries)) for b in range(len(entries))
             if a != b and entries[a][0][1] == entries[b][0][1]]  # fmt: skip
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    delta = rng.choice([1, 7, 1000])
    if entries[a][2] + delta == 0 or entries[b][2] - delta == 0:
        delta += 1
    entries[a] = [entries[a][0], entries[a][1], entries[a][2] + delta]
    entries[b] = [entries[b][0], entries[b][1], entries[b][2] - delta]
    bodies[k] = TRANSACTION_PREFIX + enc(tx)
    records[i][2] = bodies
    _fix_closing(records, [(entries[a], delta), (entries[b], -delta)])
    return records, i


def _fix_closing(records: list[Any], changes: list[tuple[Any, int]]) -> None:
    """Apply (entry, delta) to the closing balance rows, kept sorted and non-zero."""
    where = [i for i, r in enumerate(records) if r[0] == "balances" and r[1] == "closing"]
    rows = {tuple(r[:3]): [r[3], r[4]] for i in where for r in records[i][2]}
    for (account, bucket, _), delta in changes:
        rows.setdefault(tuple(account), [0, 0])[bucket] += delta
    merged = sorted([*k, v[0], v[1]] for k, v in rows.items() if v[0] or v[1])
    for n, i in enumerate(where):
        records[i] = ["balances", "closing", merged if n == 0 else []]
    records[:] = [r for n, r in enumerate(records) if n not in where[1:]]


def rebalance(base: Base, rng: random.Random) -> bytes:
    got = _rebalanced(base, rng)
    if got is None:
        return flip_sealed(base, rng)
    return seal([enc(r) for r in got[0]])


def rebalance_closing(base: Base, rng: random.Random) -> bytes:
    records = [list(r) for r in base.records]
    i = base.indices("balances")[-1]
    rows = [list(r) for r in records[i][2]]
    same = [(a, b) for a in range(len(rows)) for b in range(len(rows))
            if a != b and rows[a][1] == rows[b][1]]  # fmt: skip
    a, b = rng.choice(same)
    delta = rng.choice([1, 1000])
    rows[a][3] += delta
    rows[b][3] -= delta
    records[i][2] = rows
    return seal([enc(r) for r in records])


def swap_signatures(base: Base, rng: random.Random) -> bytes:
    records = list(base.records)
    i, j = rng.sample(base.indices("checkpoint"), 2)
    text_i, sigs_i = records[i][1].split("\n\n", 1)
    text_j, sigs_j = records[j][1].split("\n\n", 1)
    records[i] = ["checkpoint", f"{text_i}\n\n{sigs_j}"]
    records[j] = ["checkpoint", f"{text_j}\n\n{sigs_i}"]
    return seal([enc(r) for r in records])


def resign(base: Base, rng: random.Random) -> bytes:
    """A forged history, every checkpoint recomputed and signed by the forger's key."""
    from ledger.checkpoint import Checkpoint, sign_checkpoint
    from ledger.merkle import MerkleFrontier, leaf_hash

    got = _rebalanced(base, rng)
    records = got[0] if got is not None else [list(r) for r in base.records]
    frontier = MerkleFrontier()
    for n, r in enumerate(records):
        if r[0] == "keys":
            records[n] = ["keys", [[base.other.verifier().encode(), 0, None]]]
        elif r[0] == "entries":
            frontier.extend(leaf_hash(b) for b in r[2])
        elif r[0] == "checkpoint":
            old = Checkpoint.parse(r[1].split("\n\n", 1)[0] + "\n")
            cp = Checkpoint(origin=old.origin, size=frontier.size, root_hash=frontier.root(),
                            time_ms=old.time_ms)  # fmt: skip
            records[n] = ["checkpoint", sign_checkpoint(cp, base.other)]
    return seal([enc(r) for r in records])


def rotation(base: Base, rng: random.Random) -> bytes:
    """The key rotation's announcement (its metadata), or the key list, changed."""
    records = [list(r) for r in base.records]
    if rng.random() < 0.5:
        records[1] = ["keys", _tweak(records[1][1], rng)]
        return seal([enc(r) for r in records])
    for i in base.indices("entries"):
        for k, body in enumerate(records[i][2]):
            tx = msgspec.msgpack.decode(body[len(TRANSACTION_PREFIX) :])
            if tx[2] == KEY_ROTATION_CODE:
                meta = msgspec.msgpack.decode(tx[6]) if isinstance(tx[6], bytes) else tx[6]
                tx[6] = _tweak(meta, rng) if not isinstance(meta, dict) else _tweak_dict(meta, rng)
                records[i][2] = [*records[i][2][:k], TRANSACTION_PREFIX + enc(tx),
                                 *records[i][2][k + 1 :]]  # fmt: skip
                return seal([enc(r) for r in records])
    raise RuntimeError("the export has no key rotation")


def _tweak_dict(meta: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out = dict(meta)
    key = rng.choice(sorted(out))
    r = rng.random()
    if r < 0.15:
        del out[key]
    elif r < 0.3:
        out[key + "x"] = out[key]
    elif r < 0.45 and key == "valid_from_size":
        out[key] = rng.choice(["\u00b2", "0", "-1", " 1", str(int(out[key]) + 1), "9" * 30])
    else:
        out[key] = _tweak(out[key], rng)
    return out


def header(base: Base, rng: random.Random) -> bytes:
    records = list(base.records)
    h = list(records[0])
    k = rng.randrange(2, 6)
    h[k] = _tweak(h[k], rng)
    records[0] = h
    return seal([enc(r) for r in records])


def end(base: Base, rng: random.Random) -> bytes:
    payloads = list(base.payloads)
    last = list(base.records[-1])
    k = rng.randrange(1, 3)
    last[k] += rng.choice([-1, 1])
    head = join(payloads[:-1])
    last[3] = hashlib.sha256(head).digest()
    return join([*payloads[:-1], enc(last)])


MUTATIONS: dict[str, Mutation] = {
    "flip": flip, "truncate": truncate, "flip_sealed": flip_sealed, "field": field_change,
    "insert": insert, "remove": remove, "reorder": reorder, "entry_dup": entry_dup,
    "rebalance": rebalance, "rebalance_closing": rebalance_closing,
    "swap_signatures": swap_signatures, "resign": resign, "rotation": rotation,
    "header": header, "end": end,
}  # fmt: skip


# -- running ---------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    cases: int = 0
    refused: int = 0
    unchanged: int = 0  # accepted, and rightly: the records are the original's
    thinned: int = 0  # accepted: the original's records less checkpoints before the last
    forgeries: int = 0  # accepted with other records
    crashes: int = 0  # any exception but AuditFailure
    examples: list[str] = field(default_factory=list)


def load_base(data: bytes, pinned: Verifier, other: Signer) -> Base:
    payloads = frames(data)
    records = [msgspec.msgpack.decode(p) for p in payloads]
    if [enc(r) for r in records] != payloads:
        raise RuntimeError("the export does not re-encode to its own bytes: fuzzing unsound")
    verify_file(io.BytesIO(data), pinned)  # the original verifies
    return Base(data, payloads, records, pinned, other)


def judge(base: Base, original: list[Record], mutant: bytes, tally: Tally, what: str) -> None:
    tally.cases += 1
    try:
        verify_file(io.BytesIO(mutant), base.pinned)
    except AuditFailure:
        tally.refused += 1
        return
    except Exception:
        tally.crashes += 1
        tally.examples.append(f"{what}: {traceback.format_exc(limit=-3)}")
        return
    got = decoded(mutant)
    if got == original:
        tally.unchanged += 1
    elif got is not None and thinned(original, got):
        tally.thinned += 1
    else:
        tally.forgeries += 1
        tally.examples.append(f"{what}: a changed file was accepted")


def thinned(original: list[Record], got: list[Record]) -> bool:
    """`got` is `original` less some checkpoints before its last (and re-sealed).

    Such a file says no less than the original: every entry is still under the last
    signed checkpoint, whose tree extends each dropped one's (one sequence of leaves).
    The format cannot tell which checkpoints the exchange signed (a checkpoint per batch,
    batches of any size), so a forger may leave some out; an auditor holding one checks
    it against the entries. Counted apart, not as a forgery."""
    notes = {r.note for r in got if isinstance(r, CheckpointRecord)}
    last = [r for r in original if isinstance(r, CheckpointRecord)][-1]
    expected = [r for r in original[:-1]
                if not isinstance(r, CheckpointRecord) or r.note in notes]  # fmt: skip
    return last.note in notes and got[:-1] == expected


def fuzz(base: Base, cases: int, seed: int) -> dict[str, Tally]:
    rng = random.Random(seed)
    original = decoded(base.data)
    assert original is not None
    tallies = {name: Tally() for name in MUTATIONS}
    names = list(MUTATIONS)
    for n in range(cases):
        name = names[n % len(names)]
        case_rng = random.Random(rng.getrandbits(64))
        judge(base, original, MUTATIONS[name](base, case_rng), tallies[name], f"{name} #{n}")
    return tallies


def violations(tallies: dict[str, Tally]) -> int:
    return sum(t.forgeries + t.crashes for t in tallies.values())


def print_table(tallies: dict[str, Tally], seconds: float) -> None:
    print(f"{'mutation':<18} {'cases':>6} {'refused':>7} {'same':>5} {'thinned':>7} "
          f"{'forged':>6} {'crash':>5}")  # fmt: skip
    for name, t in tallies.items():
        print(f"{name:<18} {t.cases:>6} {t.refused:>7} {t.unchanged:>5} {t.thinned:>7} "
              f"{t.forgeries:>6} {t.crashes:>5}")  # fmt: skip
    total = sum(t.cases for t in tallies.values())
    print(f"cases={total} in {seconds:.1f} s")
    for t in tallies.values():
        for example in t.examples[:3]:
            print(f"violation: {example}")
    print(f"violations={violations(tallies)}")


# -- the real export -------------------------------------------------------------------


async def build_ledger(dsn: str, first: Signer, second: Signer, seed: int = 1) -> None:
    """~150 transactions in 12 batches (a checkpoint each): deposits, mints, two-asset
    trades, holds and their posting, and a rotation from `first` to `second`."""
    from ledger.keys import rotate
    from ledger.log import open_ledger
    from schemas.ledger import Account, HoldCreate, HoldPost, Posting, Transaction

    bank, mint = Account("exchange", "USD", "bank"), Account("exchange", "TOK", "issuance")
    cash = [Account(f"u{i}", "USD", "cash") for i in range(8)]
    tok = [Account(f"u{i}", "TOK", "cash") for i in range(8)]
    ledger, log = await open_ledger(dsn, first, ORIGIN)
    rng = random.Random(seed)
    try:
        await ledger.apply_batch(
            [Transaction(id=f"fund-{u.owner}", code="deposit", time=10,
                         postings=(Posting(bank, -(10**6)), Posting(u, 10**6))) for u in cash]
            + [Transaction(id=f"mint-{t.owner}", code="mint", time=10,
                           postings=(Posting(mint, -(10**6)), Posting(t, 10**6))) for t in tok]
        )  # fmt: skip
        n = 0
        for b in range(11):
            if b == 6:
                await rotate(ledger, log, second, time_ms=200)
            txs = []
            for _ in range(rng.randint(8, 16)):
                n += 1
                i, j = rng.sample(range(len(cash)), 2)
                amount = rng.randint(1, 500)
                if n % 4 == 0:
                    txs.append(
                        Transaction(
                            id=f"h{n}",
                            code="hold",
                            time=100 + b,
                            holds=(HoldCreate(hold_id=f"hold{n}", account=cash[i], amount=amount),),
                        )
                    )
                    txs.append(Transaction(id=f"p{n}", code="settle", time=100 + b,
                                           holds=(HoldPost(hold_id=f"hold{n}", amount=amount),),
                                           postings=(Posting(cash[j], amount),)))  # fmt: skip
                else:
                    txs.append(Transaction(id=f"x{n}", code="trade", time=100 + b, postings=(
                        Posting(cash[i], -amount), Posting(cash[j], amount),
                        Posting(tok[j], -3 * amount), Posting(tok[i], 3 * amount))))  # fmt: skip
            results = await ledger.apply_batch(txs)
            if not all(r.committed for r in results):
                raise RuntimeError(f"the fuzz ledger did not commit: {results}")
    finally:
        await ledger.close()


async def real_export(dsn: str) -> tuple[bytes, Verifier]:
    """The export of a freshly built ledger on `dsn` and its pinned (first) key."""
    import asyncpg

    from ledger.audit.export import export

    first, second = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    await build_ledger(dsn, first, second)
    conn = await asyncpg.connect(dsn)
    try:
        out = io.BytesIO()
        await export(conn, out)
    finally:
        await conn.close()
    return out.getvalue(), first.verifier()


def _export_on_a_fresh_database(data_dir: str | None) -> tuple[bytes, Verifier]:
    from ops.bench.ledger import drop_database, fresh_database
    from ops.database import open_embedded

    url = os.environ.get("DATABASE_URL")
    if url is None:
        root = Path(data_dir or tempfile.mkdtemp(prefix="tokex-fuzz-"))
        url = open_embedded(root, cleanup_mode="stop" if data_dir else "delete").url()
    dsn = asyncio.run(fresh_database(url))
    try:
        return asyncio.run(real_export(dsn))
    finally:
        asyncio.run(drop_database(url, dsn))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    data, pinned = _export_on_a_fresh_database(args.data_dir)
    base = load_base(data, pinned, Signer.generate(ORIGIN))
    print(f"export: {len(data):,} bytes, {len(base.indices('checkpoint'))} checkpoints")
    started = time.perf_counter()
    tallies = fuzz(base, args.cases, args.seed)
    print_table(tallies, time.perf_counter() - started)
    return 0 if violations(tallies) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
