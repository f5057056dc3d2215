"""The records of a ``tokex-audit/v3`` file and its framing (see `ledger.audit`). No I/O
beyond the file object given, no database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

import msgspec

from schemas.errors import DomainError, ErrorKind

__all__ = [
    "BALANCE_CHUNK",
    "CHUNK",
    "FORMAT",
    "MAGIC",
    "AuditFailure",
    "BalanceRow",
    "Balances",
    "CheckpointRecord",
    "End",
    "Entries",
    "FrameWriter",
    "Header",
    "KeyRecord",
    "Keys",
    "Receipts",
    "Record",
    "read_frames",
]

FORMAT = "tokex-audit/v3"  # v2: receipts of gateway deliveries; v3: the entries' sums
MAGIC = b"TOKEX-AUDIT/3\n"
CHUNK = 1000  # entries per record
BALANCE_CHUNK = 10_000
MAX_FRAME = 1 << 26  # 64 MiB: far above any record this module writes

BalanceRow = tuple[str, str, str, int, int]


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
    #: "entries": per account, the sums of the range's stored entries (`ledger_entries`).
    which: Literal["opening", "closing", "entries"]
    rows: list[BalanceRow]


class Entries(msgspec.Struct, array_like=True, tag="entries"):
    start: int
    bodies: list[bytes]


class CheckpointRecord(msgspec.Struct, array_like=True, tag="checkpoint"):
    note: str


class Receipts(msgspec.Struct, array_like=True, tag="receipts"):
    """Receipts of one gateway delivery (`transaction_id`), leaves `start`.. of its tree,
    as their canonical bytes (`ledger.receipts.receipt_bytes`)."""

    transaction_id: str
    start: int
    bodies: list[bytes]


class End(msgspec.Struct, array_like=True, tag="end"):
    entries: int
    checkpoints: int
    digest: bytes


Record = Header | Keys | Balances | Entries | CheckpointRecord | Receipts | End


class AuditFailure(DomainError):
    """The audit file does not verify. ``where`` names the first bad part."""

    code = "audit_failed"
    kind = ErrorKind.INVALID

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class FrameWriter:
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


_record_decoder = msgspec.msgpack.Decoder(Record)


def read_frames(f: BinaryIO, digest: Any) -> Iterator[tuple[Record, bytes]]:
    """Records of the file, each with the digest of every byte before its frame."""
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        if magic.startswith(MAGIC[:12]) and magic.endswith(b"\n"):
            raise AuditFailure(
                "file", f"format {magic[:-1].decode(errors='replace')} is not {FORMAT}"
            )
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
