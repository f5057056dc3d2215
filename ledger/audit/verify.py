"""Offline verification of a ``tokex-audit/v3`` file (see `ledger.audit`): no database,
no database driver (this module and what it imports never load asyncpg)."""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

import msgspec

from ledger.accounts import SYSTEM_KINDS
from ledger.audit.balances import (
    apply_entries,
    below_zero,
    check_closing,
    check_entry_sums,
    check_order,
    repeated_id,
)
from ledger.audit.records import (
    FORMAT,
    AuditFailure,
    BalanceRow,
    Balances,
    CheckpointRecord,
    End,
    Entries,
    Header,
    KeyRecord,
    Keys,
    Receipts,
    read_frames,
)
from ledger.canonical import TRANSACTION_PREFIX, decode_transaction
from ledger.checkpoint import Checkpoint
from ledger.keys import KEY_ROTATION_CODE, KeyRotationInvalid, check_rotation
from ledger.merkle import MerkleFrontier
from ledger.note import NoteError, NoteUnverified, Verifier, open_note
from ledger.receipts import (
    ReceiptMismatch,
    check_receipts,
    commitment_of,
    decode_receipt,
    entitlement_burned,
)
from schemas.errors import DomainError
from schemas.gateway import GatewayReceipt

__all__ = ["AuditFailure", "PinnedKey", "TrustedCheckpoint", "VerifyReport", "verify_file"]


class _Tx(msgspec.Struct, array_like=True, gc=False):
    """The parts of a committed transaction the verifier needs, decoded cheaply."""

    index: int
    id: str
    code: str
    time: int
    entries: list[tuple[tuple[str, str, str], Literal[0, 1], int]]
    holds: msgspec.Raw
    metadata: msgspec.Raw


_tx_decoder = msgspec.msgpack.Decoder(_Tx)
_metadata_decoder = msgspec.msgpack.Decoder(dict[str, str])
DELIVERY_CODE = "delivery"
_PREFIX = TRANSACTION_PREFIX
_PREFIX_LEN = len(TRANSACTION_PREFIX)


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """A checkpoint key accepted before (as a pin file keeps it): its verifier key string
    and the tree size it signs from."""

    key: str
    valid_from_size: int


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
    #: Gateway deliveries in the range, each backed by the receipts it commits to.
    gateway_deliveries: int = 0
    receipts: int = 0
    #: The export's last checkpoint (at ``to_index``), the signed note as it is in the file.
    checkpoint_note: str = ""
    #: Sizes of the checkpoints you trust that the export was found consistent with.
    consistent_with: list[int] = field(default_factory=list)
    #: Sizes of those it cannot check (before its start, see `verify_file`).
    unchecked: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The keys accepted from the trusted one on, each with the size it signs from (what
    #: a pin keeps, for a later partial export: see `verify_file`'s ``later_keys``).
    accepted_keys: list[PinnedKey] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrustedCheckpoint:
    """A checkpoint the auditor already trusts: the signed note as the exchange serves it
    (``GET /v1/ledger/checkpoint``), and where it came from, for messages."""

    note: str
    source: str


@dataclass(slots=True)
class _Trusted:
    """A trusted checkpoint, opened (signed by key ``key_pos`` of the export's list)."""

    given: TrustedCheckpoint
    checkpoint: Checkpoint
    key_pos: int

    @property
    def where(self) -> str:
        return f"checkpoint {self.checkpoint.size} you trust ({self.given.source})"


@dataclass(slots=True)
class _Delivery:
    """A gateway delivery seen among the entries, waiting for its receipts."""

    tx_id: str
    index: int
    metadata: dict[str, str]
    burned: int  # tokens its entries take from the entitlement
    receipts: list[GatewayReceipt] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"delivery {self.tx_id} (entry {self.index})"


class _Verifier:
    def __init__(
        self,
        trusted: Verifier | None,
        given: Sequence[TrustedCheckpoint],
        later: Sequence[PinnedKey] = (),
    ) -> None:
        self.trusted_arg = trusted
        self.given = given
        self.later = later
        self.trusted_cps: list[_Trusted] = []
        self.want: list[int] = []  # sizes within the range whose roots to keep, ascending
        self.want_pos = 0
        self.roots_at: dict[int, bytes] = {}  # the export's root at each of those sizes
        self.last_note = ""
        self.header: Header | None = None
        self.keys: list[KeyRecord] = []
        self.key_verifiers: list[Verifier] = []
        self.trusted_pos = 0
        self.accepted_upto = 0  # keys[trusted_pos..accepted_upto] are trusted
        self.frontier = MerkleFrontier()
        self.next_index = 0
        self.balances: dict[tuple[str, str, str], list[int]] = {}
        self.closing: list[BalanceRow] = []
        self.opening: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.entry_sums: list[BalanceRow] = []
        self.opening_rows = 0
        self._last_opening: BalanceRow | None = None
        self.entries = 0
        self.checkpoints = 0
        self.last_cp_size = -1
        self.last_cp_time = 0
        self.max_time = 0
        # Every transaction id seen (ids are unique in a ledger).
        self.tx_ids: set[str] = set()
        self.pending: deque[_Delivery] = deque()  # gateway deliveries, in index order
        self.current: _Delivery | None = None  # the one whose receipts are being read
        self.receipt_ids: set[str] = set()
        self.gateway_deliveries = 0
        self.receipts = 0
        self.state = "header"  # header -> keys -> body -> closing -> sums -> receipts -> end

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
        self.trusted_pos = self.key_verifiers.index(trusted)
        self.accepted_upto = self._pinned_upto()
        self._open_trusted()

    def _pinned_upto(self) -> int:
        """The keys accepted before, after the trusted one (`later`): the export's list has
        each, in order, valid from the same size, or fails (a key swapped since). The newest
        valid at the export's start is accepted now: its rotation came before the range, so
        a partial export after it cannot show it. Returns its position."""
        assert self.header is not None
        upto = self.trusted_pos
        for n, pinned in enumerate(self.later, start=self.trusted_pos + 1):
            listed = self.keys[n] if n < len(self.keys) else None
            if (
                listed is None
                or listed.valid_from_size != pinned.valid_from_size
                or self.key_verifiers[n].encode() != pinned.key
            ):
                raise AuditFailure(
                    f"key {n}",
                    f"the export does not list the key accepted before as valid from size "
                    f"{pinned.valid_from_size} ({pinned.key}): its key list was changed",
                )
            if pinned.valid_from_size <= self.header.from_index:
                upto = n
        return upto

    # -- checkpoints the auditor trusts (see `verify_file`) ---------------------------

    def _open_trusted(self) -> None:
        """Open each trusted checkpoint under a key from the trusted one on (whether that
        key is accepted is known only at the end), and note the sizes whose roots to keep:
        those up to the start are read off the starting frontier now, before it grows."""
        assert self.header is not None
        lo, hi = self.header.from_index, self.header.to_index
        for given in self.given:
            t = self._open_one(given)
            self.trusted_cps.append(t)
            m = t.checkpoint.size
            if m <= lo:
                root = self.frontier.prefix_root(m)
                if root is not None:
                    self.roots_at[m] = root
            elif m <= hi:
                self.want.append(m)
        self.want = sorted(set(self.want))

    def _open_one(self, given: TrustedCheckpoint) -> _Trusted:
        where = f"checkpoint you trust ({given.source})"
        for pos in range(self.trusted_pos, len(self.key_verifiers)):
            try:
                text, _ = open_note(given.note, [self.key_verifiers[pos]])
                cp = Checkpoint.parse(text)
            except NoteUnverified:
                continue
            except NoteError as exc:
                raise AuditFailure(where, f"signature: {exc.message}") from None
            except DomainError as exc:
                raise AuditFailure(where, exc.message) from None
            if cp.origin != self._origin():
                raise AuditFailure(
                    where, f"origin {cp.origin!r} is not the export's {self._origin()!r}"
                )
            return _Trusted(given, cp, pos)
        raise AuditFailure(
            where, "not signed by the trusted key or a key the export lists after it"
        )

    def _extend(self, leaves: list[bytes], start: int) -> None:
        """Add the leaves of entries ``start..``, keeping the root at each wanted size."""
        want, pos, frontier = self.want, self.want_pos, self.frontier
        done = 0
        while pos < len(want) and want[pos] <= start + len(leaves):
            cut = want[pos] - start
            frontier.extend(leaves[done:cut])
            self.roots_at[want[pos]] = frontier.root()
            done, pos = cut, pos + 1
        frontier.extend(leaves[done:] if done else leaves)
        self.want_pos = pos

    def check_trusted(self) -> None:
        """Each trusted checkpoint is signed by a key the export accepts and, where the
        export covers its size, has the export's root at that size. One beyond the export's
        end is refused; one before its start that the starting frontier cannot give a root
        for is left unchecked (`unchecked`)."""
        assert self.header is not None
        end = self.header.to_index
        for t in self.trusted_cps:
            m = t.checkpoint.size
            if m > end:
                raise AuditFailure(
                    t.where,
                    f"the export ends at size {end}, before a checkpoint you trust: it may "
                    "be a fork or a rollback (an export reaching it can tell)",
                )
            if t.key_pos > self.accepted_upto:
                raise AuditFailure(
                    t.where,
                    f"signed by key {t.key_pos}, whose announcement is not among the entries",
                )
            ours = self.roots_at.get(m)
            if ours is not None and ours != t.checkpoint.root_hash:
                raise AuditFailure(
                    t.where,
                    f"its root {_b64(t.checkpoint.root_hash)} differs from the export's root "
                    f"{_b64(ours)} at size {m}: the same log signed two different histories "
                    f"of entries 0..{m - 1} (a fork)",
                )

    def unchecked(self) -> list[int]:
        return sorted({t.checkpoint.size for t in self.trusted_cps} - self.roots_at.keys())

    def opening_record(self, rec: Balances) -> None:
        assert self.header is not None
        if self.header.from_index == 0:
            raise AuditFailure("opening balances", "present in an export from index 0")
        balances = self.balances
        previous = check_order("opening", rec.rows, self.opening_rows, self._last_opening)
        for owner, asset, kind, available, held in rec.rows:
            key = (owner, asset, kind)
            if key in balances or not (available or held):
                raise AuditFailure("opening balances", f"repeated or zero row for {key}")
            if (available < 0 or held < 0) and kind not in SYSTEM_KINDS:
                raise AuditFailure(
                    "opening balances", f"account {owner}|{asset}|{kind} is below zero"
                )
            balances[key] = [available, held]
            self.opening[key] = (available, held)
        self.opening_rows += len(rec.rows)
        self._last_opening = previous

    def entries_record(self, rec: Entries) -> None:
        if rec.start != self.next_index:
            raise AuditFailure(f"entry {self.next_index}", f"entries record starts at {rec.start}")
        assert self.header is not None
        if rec.start + len(rec.bodies) > self.header.to_index:
            raise AuditFailure(f"entry {self.header.to_index}", "entry beyond the export's range")
        balances = self.balances
        tx_ids = self.tx_ids
        add_id = tx_ids.add
        system_kinds = SYSTEM_KINDS
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
                bal0 = balances.get(a0)
                if bal0 is None:
                    balances[a0] = bal0 = [0, 0]
                bal0[b0] += x0
                bal1 = balances.get(a1)
                if bal1 is None:
                    balances[a1] = bal1 = [0, 0]
                bal1[b1] += x1
                # Only a decrease can break the floor: check its account (after both
                # entries, which may be the two buckets of one account).
                if x0 < 0:
                    if bal0[b0] < 0 and a0[2] not in system_kinds:
                        below_zero(index, a0, bal0)
                elif bal1[b1] < 0 and a1[2] not in system_kinds:
                    below_zero(index, a1, bal1)
            else:
                apply_entries(balances, entries, index)
            seen = len(tx_ids)
            add_id(tx.id)
            if len(tx_ids) == seen:
                repeated_id(index, tx.id)
            if tx.code == KEY_ROTATION_CODE:
                self._rotation(body, index)
            elif tx.code == DELIVERY_CODE:
                self._delivery(tx, index)
            push(sha(b"\x00" + body).digest())
            index += 1
        if self.want_pos < len(self.want):
            self._extend(leaves, rec.start)
        else:
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

    def _delivery(self, tx: _Tx, index: int) -> None:
        """A delivery: if the gateway's (its metadata commits to receipts), keep it until
        its receipts come."""
        try:
            metadata = _metadata_decoder.decode(tx.metadata)
            c = commitment_of(metadata)
            if c is None:
                return
            burned = entitlement_burned(metadata, [(key, x) for key, _, x in tx.entries])
        except (msgspec.DecodeError, ValueError) as exc:
            raise AuditFailure(f"entry {index}", f"undecodable metadata: {exc}") from None
        except ReceiptMismatch as exc:
            raise AuditFailure(f"entry {index}", exc.message) from None
        self.pending.append(_Delivery(tx.id, index, metadata, burned))

    def receipts_record(self, rec: Receipts) -> None:
        d = self.current
        if d is None or d.tx_id != rec.transaction_id:
            self.finish_delivery()
            pending = self.pending
            first = pending[0] if pending else None
            if first is None or first.tx_id != rec.transaction_id:
                if first is not None and any(p.tx_id == rec.transaction_id for p in pending):
                    raise AuditFailure(first.where, "no receipts (its receipts were removed)")
                raise AuditFailure(
                    f"receipts of {rec.transaction_id}",
                    "not a gateway delivery among the entries (or its receipts are repeated)",
                )
            d = self.current = pending.popleft()
        if rec.start != len(d.receipts):
            raise AuditFailure(d.where, f"receipts record starts at {rec.start}")
        for n, body in enumerate(rec.bodies, start=rec.start):
            try:
                r = decode_receipt(body)
            except ValueError as exc:
                raise AuditFailure(d.where, f"receipt {n}: {exc}") from None
            if r.receipt_id in self.receipt_ids:
                raise AuditFailure(d.where, f"receipt {r.receipt_id} is in another delivery too")
            self.receipt_ids.add(r.receipt_id)
            d.receipts.append(r)

    def finish_delivery(self) -> None:
        d, self.current = self.current, None
        if d is None:
            return
        try:
            check_receipts(d.metadata, d.burned, d.receipts)
        except ReceiptMismatch as exc:
            raise AuditFailure(d.where, exc.message) from None
        self.gateway_deliveries += 1
        self.receipts += len(d.receipts)

    def finish_receipts(self) -> None:
        self.finish_delivery()
        for d in self.pending:
            raise AuditFailure(d.where, "no receipts (its receipts were removed)")

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
        self.last_note = rec.note
        self.checkpoints += 1

    def closing_record(self, rec: Balances) -> None:
        last = self.closing[-1] if self.closing else None
        check_order("closing", rec.rows, len(self.closing), last)
        self.closing.extend(rec.rows)

    def entry_sums_record(self, rec: Balances) -> None:
        last = self.entry_sums[-1] if self.entry_sums else None
        check_order("entries", rec.rows, len(self.entry_sums), last)
        self.entry_sums.extend(rec.rows)

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


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def verify_file(
    f: BinaryIO,
    trusted: Verifier | None = None,
    checkpoints: Sequence[TrustedCheckpoint] = (),
    later_keys: Sequence[PinnedKey] = (),
) -> VerifyReport:
    """Verify an audit file; return what was established or raise `AuditFailure`.

    ``checkpoints`` are checkpoints the auditor trusts from before (say, the last one they
    verified): the file alone cannot show that the exchange signed one history for
    everybody, since an export may leave out checkpoints before its last. Each must be
    signed by a key the export accepts, and the export's root at its size must be its root;
    one beyond the export's end is refused; one before a partial export's start is checked
    against the starting frontier when that holds its size (else reported in `unchecked`).

    ``later_keys`` are the keys accepted after ``trusted`` before (a pin's chain,
    `VerifyReport.accepted_keys` of an earlier export): the export must list each, in order,
    valid from the same size; a partial export is trusted from the newest of them valid at
    its start, whose rotation entry is before the range. A key the chain lacks is still
    accepted only from its rotation entry.
    """
    v = _Verifier(trusted, checkpoints, later_keys)
    accounts = _read(f, v)
    return _report(v, trusted, accounts)


def _read(f: BinaryIO, v: _Verifier) -> int:
    """Every record of the file through `v`, in the order the format has them; the
    number of accounts in the balances."""
    digest = hashlib.sha256()
    accounts = 0
    end: End | None = None
    for record, before in read_frames(f, digest):
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
            and state in ("body", "closing")
        ):
            if state == "body":
                v.finish_body()
            v.closing_record(record)
            v.state = "closing"
        elif (
            isinstance(record, Balances)
            and record.which == "entries"
            and state in ("body", "closing", "sums")
        ):
            if state == "body":
                v.finish_body()
            v.entry_sums_record(record)
            v.state = "sums"
        elif isinstance(record, Receipts) and state in ("body", "closing", "sums", "receipts"):
            if state == "body":
                v.finish_body()
            v.receipts_record(record)
            v.state = "receipts"
        elif isinstance(record, End) and state in ("body", "closing", "sums", "receipts"):
            if state == "body":
                v.finish_body()
            v.finish_receipts()
            accounts = check_closing(v.balances, v.closing)
            check_entry_sums(v.balances, v.opening, v.entry_sums, v.header)
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
    return accounts


def _report(v: _Verifier, trusted: Verifier | None, accounts: int) -> VerifyReport:
    assert v.header is not None
    v.check_trusted()
    unchecked = v.unchecked()
    notes = [
        f"checkpoint {m} you trust is before the export's start ({v.header.from_index}) and "
        f"cannot be checked from this file (an export from index {m} or before can)"
        for m in unchecked
    ]
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
        gateway_deliveries=v.gateway_deliveries,
        receipts=v.receipts,
        checkpoint_note=v.last_note,
        consistent_with=sorted({t.checkpoint.size for t in v.trusted_cps} - set(unchecked)),
        unchecked=unchecked,
        notes=notes,
        accepted_keys=[
            PinnedKey(v.key_verifiers[n].encode(), v.keys[n].valid_from_size)
            for n in range(v.trusted_pos, max(v.accepted_upto, v.trusted_pos + len(v.later)) + 1)
        ],
    )
