"""Audit export (from the database) and offline verification (no database).

File format ``tokex-audit/v1``
------------------------------
The magic line ``TOKEX-AUDIT/1\\n``, then frames: a 4-byte big-endian length and one
MessagePack record (msgspec, structs as arrays, the first element naming the record)::

    header      format, origin, from_index, to_index, frontier (the Merkle frontier of the
                tree of from_index leaves, `MerkleFrontier.to_bytes`; empty tree for 0)
    keys        every checkpoint key: verifier key string, valid_from_size, announced_in_tx
    balances*   "opening" balances at from_index (only when from_index > 0), in chunks
    entries     start index and the canonical bytes of up to 1000 consecutive transactions
    checkpoint  a signed checkpoint note, right after the entry that completes its tree
    ...         (entries and checkpoints interleaved, in index order)
    balances*   "closing" balances at to_index (at the end: as the writer recovers them), in chunks
    end         counts, and the SHA-256 of every byte of the file before this frame

Balance rows are ``(owner, asset, kind, available, held)``, sorted, non-zero only. The
export ends at a checkpoint (``to_index`` is rounded down to the largest checkpoint size not
above it), so every exported entry is under a signature. It is written in constant memory
(windows of `WINDOW` entries in one REPEATABLE READ snapshot) and is a pure function of the
ledger and the range: rerunning it gives the same bytes.

Verification (`verify_file`)
----------------------------
Streaming, in one pass, and stopping at the first problem (`AuditFailure`, which says
where: ``entry 123``, ``checkpoint 456``, ``header``...):

- every entry decodes, has the next index, sums to zero per asset (both buckets together);
- every checkpoint comes exactly where the recomputed tree reaches its size, has the
  header's origin, is signed by the key valid at its size, and its root equals the root
  recomputed from the entries; sizes grow, times never go backwards and are not earlier
  than any entry before them. All roots come from one append-only sequence of leaves, so
  each checkpoint is consistent with the one before (the same tree, extended);
- keys: trust starts at ``--public-key`` (or, without one, the export's first key, which
  the report says). A later key is trusted only from a ``key_rotation`` entry, signed by
  the key before it (`ledger.keys.check_rotation`), that the key list agrees with;
- the balances recomputed from the (opening balances and the) entries equal the exported
  closing balances;
- the end record's counts and file digest match, and nothing follows it.

A root mismatch cannot say which entry of the range was altered (only the checkpoints are
signed), so it names the range and the checkpoint. For ``from_index > 0`` the opening
balances are not covered by any signature and are taken as given; the frontier is
(a wrong one cannot reproduce a signed root).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import asyncpg
import msgspec

from ledger.canonical import TRANSACTION_PREFIX, decode_transaction
from ledger.checkpoint import Checkpoint
from ledger.keys import KEY_ROTATION_CODE, KeyRotationInvalid, check_rotation
from ledger.log import with_nodes
from ledger.merkle import MerkleFrontier
from ledger.note import NoteError, Verifier, open_note
from ledger.store import load_state
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "FORMAT",
    "MAGIC",
    "AuditFailure",
    "ExportEmpty",
    "ExportSummary",
    "VerifyReport",
    "export",
    "verify_file",
]

FORMAT = "tokex-audit/v1"
MAGIC = b"TOKEX-AUDIT/1\n"
WINDOW = 10_000  # entries fetched per query while exporting
CHUNK = 1000  # entries per record
BALANCE_CHUNK = 10_000
MAX_FRAME = 1 << 26  # 64 MiB: far above any record this module writes

BalanceRow = tuple[str, str, str, int, int]


# --------------------------------------------------------------------------- records


class Header(msgspec.Struct, array_like=True, tag="header"):
    format: str
    origin: str
    from_index: int
    to_index: int
    frontier: bytes


class KeyRecord(msgspec.Struct, array_like=True):
    key: str
    valid_from_size: int
    announced_in_tx: int | None


class Keys(msgspec.Struct, array_like=True, tag="keys"):
    keys: list[KeyRecord]


class Balances(msgspec.Struct, array_like=True, tag="balances"):
    which: Literal["opening", "closing"]
    rows: list[BalanceRow]


class Entries(msgspec.Struct, array_like=True, tag="entries"):
    start: int
    bodies: list[bytes]


class CheckpointRecord(msgspec.Struct, array_like=True, tag="checkpoint"):
    note: str


class End(msgspec.Struct, array_like=True, tag="end"):
    entries: int
    checkpoints: int
    digest: bytes


Record = Header | Keys | Balances | Entries | CheckpointRecord | End


class AuditFailure(DomainError):
    """The audit file does not verify. ``where`` names the first bad part."""

    code = "audit_failed"
    kind = ErrorKind.INVALID

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ExportEmpty(DomainError):
    """There is no checkpoint in the requested range: nothing signed to export."""

    code = "audit_export_empty"
    kind = ErrorKind.NOT_FOUND


# --------------------------------------------------------------------------- export


@dataclass(slots=True)
class ExportSummary:
    origin: str
    from_index: int
    to_index: int
    entries: int = 0
    checkpoints: int = 0
    bytes: int = 0


class _FrameWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256(MAGIC)
        self._encoder = msgspec.msgpack.Encoder()
        self.bytes = len(MAGIC)
        out.write(MAGIC)

    def write(self, record: Record) -> None:
        data = self._encoder.encode(record)
        frame = len(data).to_bytes(4, "big") + data
        self._hash.update(frame)
        self._out.write(frame)
        self.bytes += len(frame)

    def digest(self) -> bytes:
        return self._hash.digest()


_BALANCES_UPTO = """
SELECT a.owner, a.asset, a.kind,
       coalesce(sum(e.amount) FILTER (WHERE e.bucket = 0), 0)::bigint AS available,
       coalesce(sum(e.amount) FILTER (WHERE e.bucket = 1), 0)::bigint AS held
  FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
 WHERE e.tx_idx < $1
 GROUP BY a.owner, a.asset, a.kind
"""


async def _balances(conn: asyncpg.Connection, upto: int, ledger_size: int) -> list[BalanceRow]:
    """Balances after the first ``upto`` transactions: the stored balances when that is the
    whole ledger (so the audit checks what the exchange actually holds), else summed from
    the stored entries."""
    if upto == ledger_size:
        # What the exchange holds: its balance snapshot rolled forward through the
        # journal after it, exactly as the writer recovers it (ledger.store.load_state).
        state, _, _ = await load_state(conn)
        held = [(a.owner, a.asset, a.kind, b[0], b[1]) for a, b in state.balances.items()]
        return sorted(r for r in held if r[3] or r[4])
    else:
        rows = await conn.fetch(_BALANCES_UPTO, upto)
    out = [(r["owner"], r["asset"], r["kind"], r["available"], r["held"]) for r in rows]
    return sorted(r for r in out if r[3] or r[4])


def _write_balances(
    w: _FrameWriter, which: Literal["opening", "closing"], rows: list[BalanceRow]
) -> None:
    for i in range(0, len(rows), BALANCE_CHUNK):
        w.write(Balances(which, rows[i : i + BALANCE_CHUNK]))


async def export(
    conn: asyncpg.Connection,
    out: BinaryIO,
    from_index: int = 0,
    to_index: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write the audit file of entries [from_index, to_index) to ``out``.

    ``to_index`` (default: the latest checkpoint) is rounded down to a checkpoint size.
    ``progress(done, total)`` is called after each window of entries.
    """
    if from_index < 0 or (to_index is not None and to_index < 0):
        raise ExportEmpty("indices must not be negative")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            "SELECT tree_size, note FROM ledger_checkpoints "
            "WHERE ($1::bigint IS NULL OR tree_size <= $1) ORDER BY tree_size DESC LIMIT 1",
            to_index,
        )
        if row is None or row["tree_size"] <= from_index:
            raise ExportEmpty(
                f"no checkpoint between index {from_index} and {to_index}: nothing to export"
            )
        end: int = row["tree_size"]
        origin = str(row["note"]).split("\n", 1)[0]
        ledger_size = int(
            await conn.fetchval("SELECT coalesce(max(idx) + 1, 0) FROM ledger_transactions")
        )
        frontier = await with_nodes(conn, lambda get: MerkleFrontier.from_nodes(from_index, get))
        summary = ExportSummary(origin, from_index, end)
        w = _FrameWriter(out)
        w.write(Header(FORMAT, origin, from_index, end, frontier.to_bytes()))
        keys = await conn.fetch(
            "SELECT key, valid_from_size, announced_in_tx FROM ledger_keys ORDER BY valid_from_size"
        )
        w.write(
            Keys([KeyRecord(k["key"], k["valid_from_size"], k["announced_in_tx"]) for k in keys])
        )
        if from_index > 0:
            _write_balances(w, "opening", await _balances(conn, from_index, ledger_size))

        pos = from_index
        while pos < end:
            stop = min(end, pos + WINDOW)
            bodies = [
                bytes(r["body"])
                for r in await conn.fetch(
                    "SELECT body FROM ledger_transactions WHERE idx >= $1 AND idx < $2 "
                    "ORDER BY idx",
                    pos,
                    stop,
                )
            ]
            if len(bodies) != stop - pos:
                raise ExportEmpty(f"entries {pos}..{stop} are missing from the ledger")
            cps = await conn.fetch(
                "SELECT tree_size, note FROM ledger_checkpoints "
                "WHERE tree_size > $1 AND tree_size <= $2 ORDER BY tree_size",
                pos,
                stop,
            )
            at = pos
            for cp in [*cps, None]:
                upto = stop if cp is None else cp["tree_size"]
                while at < upto:
                    n = min(CHUNK, upto - at)
                    w.write(Entries(at, bodies[at - pos : at - pos + n]))
                    at += n
                if cp is not None:
                    w.write(CheckpointRecord(cp["note"]))
                    summary.checkpoints += 1
            summary.entries += stop - pos
            pos = stop
            if progress is not None:
                progress(pos - from_index, end - from_index)
        _write_balances(w, "closing", await _balances(conn, end, ledger_size))
        w.write(End(summary.entries, summary.checkpoints, w.digest()))
        summary.bytes = w.bytes
    return summary


# --------------------------------------------------------------------------- verify


class _Tx(msgspec.Struct, array_like=True, gc=False):
    """The parts of a committed transaction the verifier needs, decoded cheaply."""

    index: int
    id: msgspec.Raw
    code: str
    time: int
    entries: list[tuple[tuple[str, str, str], Literal[0, 1], int]]
    holds: msgspec.Raw
    metadata: msgspec.Raw


_record_decoder = msgspec.msgpack.Decoder(Record)
_tx_decoder = msgspec.msgpack.Decoder(_Tx)
_PREFIX = TRANSACTION_PREFIX
_PREFIX_LEN = len(TRANSACTION_PREFIX)


@dataclass(slots=True)
class VerifyReport:
    """What a successful verification established."""

    origin: str
    from_index: int
    to_index: int
    entries: int
    checkpoints: int
    keys: list[str]
    trusted_key: str
    trust_from_file: bool
    root: str
    accounts: int
    notes: list[str] = field(default_factory=list)


def _frames(f: BinaryIO, digest: Any) -> Iterator[tuple[Record, bytes]]:
    """Records of the file, each with the digest of every byte before its frame."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise AuditFailure("file", "not a tokex audit file (bad magic line)")
    digest.update(magic)
    n = 0
    while True:
        head = f.read(4)
        if not head:
            return
        if len(head) < 4:
            raise AuditFailure("file", "truncated (partial frame header)")
        size = int.from_bytes(head, "big")
        if size > MAX_FRAME:
            raise AuditFailure(f"record {n}", f"frame of {size} bytes is implausibly large")
        data = f.read(size)
        if len(data) < size:
            raise AuditFailure("file", "truncated (partial record)")
        before = digest.digest()
        digest.update(head)
        digest.update(data)
        try:
            record = _record_decoder.decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            raise AuditFailure(f"record {n}", f"undecodable: {exc}") from None
        yield record, before
        n += 1


class _Verifier:
    def __init__(self, trusted: Verifier | None) -> None:
        self.trusted_arg = trusted
        self.header: Header | None = None
        self.keys: list[KeyRecord] = []
        self.key_verifiers: list[Verifier] = []
        self.trusted_pos = 0
        self.accepted_upto = 0  # keys[trusted_pos..accepted_upto] are trusted
        self.frontier = MerkleFrontier()
        self.next_index = 0
        self.balances: dict[tuple[str, str, str], list[int]] = {}
        self.closing: list[BalanceRow] = []
        self.entries = 0
        self.checkpoints = 0
        self.last_cp_size = -1
        self.last_cp_time = 0
        self.max_time = 0
        self.state = "header"  # header -> keys -> body -> closing -> end -> done

    # -- records --------------------------------------------------------------------

    def header_record(self, rec: Header) -> None:
        if rec.format != FORMAT:
            raise AuditFailure("header", f"unknown format {rec.format!r}")
        try:
            self.frontier = MerkleFrontier.from_bytes(rec.frontier)
        except ValueError as exc:
            raise AuditFailure("header", f"bad frontier: {exc}") from None
        if self.frontier.size != rec.from_index or not 0 <= rec.from_index < rec.to_index:
            raise AuditFailure("header", "inconsistent range or frontier size")
        self.header = rec
        self.next_index = rec.from_index
        self.last_cp_size = rec.from_index

    def keys_record(self, rec: Keys) -> None:
        if not rec.keys:
            raise AuditFailure("keys", "no keys")
        prev = -1
        for i, k in enumerate(rec.keys):
            try:
                v = Verifier.parse(k.key)
            except DomainError as exc:
                raise AuditFailure(f"key {i}", exc.message) from None
            if i == 0:
                ok = k.valid_from_size == 0 and k.announced_in_tx is None
            else:
                ok = k.valid_from_size > prev and k.announced_in_tx == k.valid_from_size - 1
            if not ok:
                raise AuditFailure(f"key {i}", "valid_from_size/announced_in_tx inconsistent")
            prev = k.valid_from_size
            self.key_verifiers.append(v)
        self.keys = rec.keys
        trusted = self.trusted_arg or self.key_verifiers[0]
        if trusted not in self.key_verifiers:
            raise AuditFailure("keys", f"the trusted key {trusted.encode()} is not in the export")
        self.trusted_pos = self.accepted_upto = self.key_verifiers.index(trusted)

    def opening_record(self, rec: Balances) -> None:
        assert self.header is not None
        if self.header.from_index == 0:
            raise AuditFailure("opening balances", "present in an export from index 0")
        balances = self.balances
        for owner, asset, kind, available, held in rec.rows:
            key = (owner, asset, kind)
            if key in balances or not (available or held):
                raise AuditFailure("opening balances", f"repeated or zero row for {key}")
            balances[key] = [available, held]

    def entries_record(self, rec: Entries) -> None:
        if rec.start != self.next_index:
            raise AuditFailure(f"entry {self.next_index}", f"entries record starts at {rec.start}")
        assert self.header is not None
        if rec.start + len(rec.bodies) > self.header.to_index:
            raise AuditFailure(f"entry {self.header.to_index}", "entry beyond the export's range")
        balances = self.balances
        sha = hashlib.sha256
        decode = _tx_decoder.decode
        leaves: list[bytes] = []
        push = leaves.append
        index = rec.start
        max_time = self.max_time
        for body in rec.bodies:
            if body[:_PREFIX_LEN] != _PREFIX:
                raise AuditFailure(f"entry {index}", "not a tokex transaction (bad prefix)")
            try:
                tx = decode(memoryview(body)[_PREFIX_LEN:])
            except (msgspec.DecodeError, ValueError) as exc:
                raise AuditFailure(f"entry {index}", f"undecodable: {exc}") from None
            if tx.index != index:
                raise AuditFailure(
                    f"entry {index}",
                    f"says it is entry {tx.index} (entries dropped, reordered or inserted)",
                )
            if tx.time > max_time:
                max_time = tx.time
            entries = tx.entries
            if len(entries) == 2:
                (a0, b0, x0), (a1, b1, x1) = entries
                if x0 + x1 or a0[1] != a1[1] or not x0:
                    raise AuditFailure(f"entry {index}", "entries do not sum to zero per asset")
                bal = balances.get(a0)
                if bal is None:
                    balances[a0] = bal = [0, 0]
                bal[b0] += x0
                bal = balances.get(a1)
                if bal is None:
                    balances[a1] = bal = [0, 0]
                bal[b1] += x1
            else:
                sums: dict[str, int] = {}
                for account, bucket, amount in entries:
                    if not amount:
                        raise AuditFailure(f"entry {index}", "zero amount")
                    sums[account[1]] = sums.get(account[1], 0) + amount
                    bal = balances.get(account)
                    if bal is None:
                        balances[account] = bal = [0, 0]
                    bal[bucket] += amount
                if any(sums.values()):
                    raise AuditFailure(f"entry {index}", "entries do not sum to zero per asset")
            if tx.code == KEY_ROTATION_CODE:
                self._rotation(body, index)
            push(sha(b"\x00" + body).digest())
            index += 1
        self.frontier.extend(leaves)
        self.next_index = index
        self.max_time = max_time
        self.entries += len(rec.bodies)

    def _rotation(self, body: bytes, index: int) -> None:
        pos = self.accepted_upto
        where = f"entry {index}"
        if pos + 1 >= len(self.keys) or self.keys[pos + 1].announced_in_tx != index:
            raise AuditFailure(where, "key rotation not in the export's key list")
        try:
            tx = decode_transaction(body)
            new = check_rotation(tx, self.key_verifiers[pos], self._origin())
        except ValueError as exc:
            raise AuditFailure(where, f"undecodable: {exc}") from None
        except KeyRotationInvalid as exc:
            raise AuditFailure(where, exc.message) from None
        if new != self.key_verifiers[pos + 1]:
            raise AuditFailure(where, "announces another key than the export's key list")
        self.accepted_upto = pos + 1

    def _origin(self) -> str:
        assert self.header is not None
        return self.header.origin

    def checkpoint_record(self, rec: CheckpointRecord) -> None:
        size = self.frontier.size
        where = f"checkpoint {size}"
        # The key valid at this size, per the list; it must be trusted by now.
        pos = 0
        for i, k in enumerate(self.keys):
            if k.valid_from_size <= size:
                pos = i
        if pos < self.trusted_pos:
            raise AuditFailure(where, "signed by a key older than the trusted key")
        if pos > self.accepted_upto:
            raise AuditFailure(
                where, f"signed by key {pos}, whose announcement is not among the entries"
            )
        key = self.key_verifiers[pos]
        try:
            text, _ = open_note(rec.note, [key])
            cp = Checkpoint.parse(text)
        except NoteError as exc:
            raise AuditFailure(
                where, f"signature: {exc.message} (expected {key.encode()})"
            ) from None
        except DomainError as exc:
            raise AuditFailure(where, exc.message) from None
        if cp.origin != self._origin():
            raise AuditFailure(where, f"origin {cp.origin!r} is not the header's")
        if cp.size != size or size <= self.last_cp_size:
            raise AuditFailure(where, f"checkpoint says size {cp.size} where the tree has {size}")
        if cp.root_hash != self.frontier.root():
            raise AuditFailure(
                where,
                f"root does not match the entries {self.last_cp_size}..{size - 1} "
                "(one of them, or the checkpoint, was altered)",
            )
        if cp.time_ms is None or cp.time_ms < self.last_cp_time or cp.time_ms < self.max_time:
            raise AuditFailure(where, "time goes backwards or precedes an entry it covers")
        self.last_cp_size = size
        self.last_cp_time = cp.time_ms
        self.checkpoints += 1

    def closing_record(self, rec: Balances) -> None:
        self.closing.extend(rec.rows)

    def finish_body(self) -> None:
        assert self.header is not None
        if self.next_index != self.header.to_index:
            raise AuditFailure(
                f"entry {self.next_index}",
                f"missing: the export ends at {self.next_index}, not {self.header.to_index}",
            )
        if self.last_cp_size != self.header.to_index:
            raise AuditFailure(
                f"entry {self.last_cp_size}", "entries after the last checkpoint (unsigned)"
            )

    def check_balances(self) -> int:
        recomputed = {(*k, v[0], v[1]) for k, v in self.balances.items() if v[0] or v[1]}
        exported = set(self.closing)
        if len(exported) != len(self.closing):
            raise AuditFailure("closing balances", "repeated rows")
        if recomputed != exported:
            diff = sorted(recomputed ^ exported)[0]
            raise AuditFailure(
                "closing balances",
                f"do not match the balances recomputed from the entries (first difference: "
                f"account {diff[0]}|{diff[1]}|{diff[2]})",
            )
        return len(exported)


def verify_file(f: BinaryIO, trusted: Verifier | None = None) -> VerifyReport:
    """Verify an audit file; return what was established or raise `AuditFailure`."""
    v = _Verifier(trusted)
    digest = hashlib.sha256()
    accounts = 0
    end: End | None = None
    for record, before in _frames(f, digest):
        state = v.state
        if end is not None:
            raise AuditFailure("file", "data after the end record")
        if isinstance(record, Header) and state == "header":
            v.header_record(record)
            v.state = "keys"
        elif isinstance(record, Keys) and state == "keys":
            v.keys_record(record)
            v.state = "opening"
        elif isinstance(record, Balances) and record.which == "opening" and state == "opening":
            v.opening_record(record)
        elif isinstance(record, Entries) and state in ("opening", "body"):
            v.entries_record(record)
            v.state = "body"
        elif isinstance(record, CheckpointRecord) and state == "body":
            v.checkpoint_record(record)
        elif (
            isinstance(record, Balances)
            and record.which == "closing"
            and state
            in (
                "body",
                "closing",
            )
        ):
            if state == "body":
                v.finish_body()
            v.closing_record(record)
            v.state = "closing"
        elif isinstance(record, End) and state in ("body", "closing"):
            if state == "body":
                v.finish_body()
            accounts = v.check_balances()
            if (record.entries, record.checkpoints) != (v.entries, v.checkpoints):
                raise AuditFailure("end", "entry or checkpoint count does not match")
            if record.digest != before:
                raise AuditFailure("end", "file digest does not match (bytes were changed)")
            end = record
        else:
            where = f"entry {v.next_index}" if state == "body" else state
            raise AuditFailure(where, f"unexpected {type(record).__name__} record here")
    if end is None:
        raise AuditFailure("file", "truncated: no end record")
    assert v.header is not None
    notes = []
    if trusted is None:
        notes.append("no --public-key given: trusted the export's first key")
    if v.header.from_index > 0:
        notes.append("partial export: opening balances taken as given")
    return VerifyReport(
        origin=v.header.origin,
        from_index=v.header.from_index,
        to_index=v.header.to_index,
        entries=v.entries,
        checkpoints=v.checkpoints,
        keys=[k.key for k in v.keys[v.trusted_pos : v.accepted_upto + 1]],
        trusted_key=v.key_verifiers[v.trusted_pos].encode(),
        trust_from_file=trusted is None,
        root=v.frontier.root().hex(),
        accounts=accounts,
        notes=notes,
    )


def stderr_progress() -> Callable[[int, int], None] | None:
    """A progress printer for exports, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rexported {done:,} / {total:,} entries", end=end, file=sys.stderr, flush=True)

    return show
