"""The Merkle log of the ledger, persisted with every batch (a `ledger.writer.CommitHook`).

For each batch `MerkleLog.write` stages, in the rows the batch writes in one statement:

1. the leaf hash of each committed transaction's canonical bytes, appended to an in-memory
   `MerkleFrontier` (a copy, swapped in once everything is staged);
2. every perfect node those leaves completed (the leaves themselves at level 0, about
   two rows per leaf), for ``ledger_merkle_nodes``;
3. one C2SP checkpoint signed for the new tree size, for ``ledger_checkpoints``.

So a committed transaction is always in a signed checkpoint, and a failed commit leaves
nothing behind; the writer then calls `reload`, which rebuilds the frontier from the stored
nodes (the same path as start-up).

Checkpoint time
---------------
The ``time`` line of a checkpoint is the largest ``time`` of any transaction in the tree
(the previous checkpoint's time, raised by the batch's transactions), not the clock. Like
the rest of the ledger it then comes from the callers' times only: the log is a pure
function of the entries (Ed25519 signatures are deterministic too), checkpoint times never
go backwards, and a checkpoint never claims a time earlier than an entry it covers.

Proofs from the database
------------------------
`ledger.merkle` builds proofs through a synchronous ``get_node``. `with_nodes` runs the
proof function twice: first with a recording ``get_node`` (the node coordinates a proof
needs depend only on sizes and indices, never on hash values), then, after fetching all of
them with one ``unnest`` query, for real.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

import asyncpg
import msgspec

from ledger.canonical import TRANSACTION_PREFIX, decode_transaction
from ledger.checkpoint import Checkpoint, CheckpointMalformed, sign_checkpoint
from ledger.keys import KEY_ROTATION_CODE, KeyRotationInvalid, check_rotation
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    NodeSource,
    consistency_proof,
    inclusion_proof,
    tree_root,
)
from ledger.note import (
    NoteError,
    Signer,
    Verifier,
    open_note,
)
from ledger.rows import BatchRows
from ledger.writer import Ledger
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "CATCH_UP_CHUNK",
    "LedgerRegressed",
    "LogHeadNote",
    "LogInconsistent",
    "MerkleLog",
    "SigningKeyNotCurrent",
    "UnsignedJournal",
    "db_consistency_proof",
    "db_inclusion_proof",
    "db_root",
    "fetch_nodes",
    "log_size",
    "open_ledger",
    "with_nodes",
]

T = TypeVar("T")
CATCH_UP_CHUNK = 10_000
_PLACEHOLDER = bytes(32)


class LogInconsistent(DomainError):
    """The stored Merkle log does not match the ledger (missing nodes, sizes out of step)."""

    code = "merkle_log_inconsistent"
    kind = ErrorKind.UNAVAILABLE


class LedgerRegressed(DomainError):
    """The database's log is behind (or beside) the log this exchange already signed: a
    database that went back in time. Serving it would sign a fork of the log."""

    code = "ledger_regressed"
    kind = ErrorKind.UNAVAILABLE


class UnsignedJournal(LedgerRegressed):
    """The journal holds transactions past the last signed checkpoint. The exchange writes
    a batch's transactions and its checkpoint in one statement, so such rows were written
    outside it (with its database credentials: the app role may INSERT into the journal);
    signing them would vouch for them. Refused like a regressed database (503
    `ledger_regressed`) unless the operator accepts them (`TOKEX_ACCEPT_UNSIGNED_JOURNAL=1`:
    a ledger written by a tool without the log)."""


class CheckpointForged(LogInconsistent):
    """The latest stored checkpoint is not signed by the log's key, or does not sign the
    stored tree: rows were added to the log outside the exchange."""


class SigningKeyNotCurrent(DomainError):
    """The configured signing key is not the log's current key (rotate to change keys)."""

    code = "signing_key_not_current"
    kind = ErrorKind.UNAVAILABLE


class LogHeadNote(NamedTuple):
    """A size of the log, its root there and the checkpoint signed for it (None: empty)."""

    size: int
    root: bytes
    note: str | None


class _Head(msgspec.Struct, array_like=True, gc=False):
    """The first fields of a `CommittedTransaction` (msgspec skips the rest unparsed)."""

    index: int
    id: str
    code: str
    time: int


_head_decoder = msgspec.msgpack.Decoder(_Head)
_PREFIX_LEN = len(TRANSACTION_PREFIX)


# --------------------------------------------------------------------------- reads


async def log_size(conn: asyncpg.Connection) -> int:
    """Number of leaves in the stored log."""
    size = await conn.fetchval(
        "SELECT coalesce(max(idx) + 1, 0) FROM ledger_merkle_nodes WHERE level = 0"
    )
    return int(size)


async def fetch_nodes(
    conn: asyncpg.Connection, coords: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The stored perfect nodes at ``coords``, in one query; `LogInconsistent` if one is
    missing."""
    wanted = set(coords)
    if not wanted:
        return {}
    levels = [c[0] for c in wanted]
    idxs = [c[1] for c in wanted]
    rows = await conn.fetch(
        """SELECT n.level, n.idx, n.hash
             FROM unnest($1::smallint[], $2::bigint[]) AS q(level, idx)
             JOIN ledger_merkle_nodes n ON n.level = q.level AND n.idx = q.idx""",
        levels,
        idxs,
    )
    found = {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}
    if len(found) != len(wanted):
        missing = sorted(wanted - found.keys())[:3]
        raise LogInconsistent(f"Merkle nodes missing from the log: {missing}")
    return found


async def with_nodes(conn: asyncpg.Connection, fn: Callable[[NodeSource], T]) -> T:
    """``fn(get_node)`` with the nodes it asks for fetched from the database in one query."""
    wanted: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        wanted.append((level, index))
        return _PLACEHOLDER

    fn(record)
    nodes = await fetch_nodes(conn, wanted)
    return fn(lambda level, index: nodes[(level, index)])


async def db_inclusion_proof(conn: asyncpg.Connection, index: int, size: int) -> list[bytes]:
    return await with_nodes(conn, lambda get: inclusion_proof(index, size, get))


async def db_consistency_proof(conn: asyncpg.Connection, first: int, second: int) -> list[bytes]:
    return await with_nodes(conn, lambda get: consistency_proof(first, second, get))


async def db_root(conn: asyncpg.Connection, size: int) -> bytes:
    return await with_nodes(conn, lambda get: tree_root(size, get))


# --------------------------------------------------------------------------- the hook


async def regression(
    conn: asyncpg.Connection, size: int, head_size: int, head_root: bytes
) -> str | None:
    """Why the database's log, of `size` leaves, does not extend a head this exchange
    committed (`head_size` leaves, root `head_root`): it went back in time or holds another
    history. None when it extends it."""
    if size < head_size:
        return (
            f"the database's ledger has {size} entries, but this exchange already signed"
            f" a checkpoint of {head_size}: it went back in time"
        )
    if await db_root(conn, head_size) != head_root:
        return (
            f"the database's ledger differs from the log this exchange signed at size"
            f" {head_size}: another history"
        )
    return None


class MerkleLog:
    """The ledger's commit hook that keeps the Merkle log and signs a checkpoint per batch.

    ``signer`` is the configured key; it must be the log's current key (the first key is
    recorded in ``ledger_keys`` on the first `reload`). ``origin`` is the checkpoints'
    first line (default: the key's name). ``accept_unsigned``: `reload` signs journal rows
    past the last checkpoint instead of refusing them (`UnsignedJournal`).
    """

    def __init__(
        self, signer: Signer, origin: str | None = None, *, accept_unsigned: bool = False
    ) -> None:
        self.origin = origin or signer.name
        #: Sign journal rows no checkpoint covers at `reload` (else `UnsignedJournal`).
        self.accept_unsigned = accept_unsigned
        self._signers: dict[Verifier, Signer] = {signer.verifier(): signer}
        self._configured = signer
        self._signer = signer
        self._frontier = MerkleFrontier()
        self._time_ms = 0
        self._latest_note: str | None = None
        #: The heads staged and not committed yet, oldest first, and the last committed:
        #: what this log has signed and the database durably holds (size, root, note).
        self._pending: deque[LogHeadNote] = deque()
        self._committed = LogHeadNote(0, EMPTY_ROOT, None)

    # -- state --------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._frontier.size

    @property
    def root(self) -> bytes:
        return self._frontier.root()

    @property
    def committed_head(self) -> LogHeadNote:
        """The log as the last committed batch left it (memory may be ahead: `size`)."""
        return self._committed

    @property
    def signer(self) -> Signer:
        """The key that signs the next checkpoint."""
        return self._signer

    @property
    def checkpoint_time_ms(self) -> int:
        """The time (Unix ms) of the latest signed checkpoint; 0 for an empty log."""
        return self._time_ms

    @property
    def latest_checkpoint(self) -> str | None:
        """The latest signed checkpoint note (None for an empty log)."""
        return self._latest_note

    def stage(self, signer: Signer) -> None:
        """Make a new key available, to be switched to when its announcement commits."""
        self._signers[signer.verifier()] = signer

    # -- SnapshotSealer (ledger.seal) ---------------------------------------------------

    def seal_snapshot(self, message: bytes) -> tuple[str, bytes]:
        """Sign a snapshot's digest with the key that signs the checkpoints now."""
        return self._signer.verifier().encode(), self._signer.sign(message)

    def snapshot_sealed(self, key: str, message: bytes, seal: bytes) -> bool:
        """Whether `key` is one of this log's keys (the configured one, or one staged for
        a rotation) and `seal` its signature of `message`. A snapshot sealed by a key
        rotated away from before a restart is not: the ledger is then rebuilt once."""
        for verifier in self._signers:
            if verifier.encode() == key:
                return verifier.verify(message, seal)
        return False

    # -- CommitHook -----------------------------------------------------------------

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        self.stage_leaves(rows, leaves)

    def stage_leaves(self, rows: BatchRows, leaves: Sequence[bytes]) -> None:
        """Stage the nodes `leaves` complete, any key they rotate to and the new signed
        checkpoint; the log's memory moves on now (a failed commit reloads it)."""
        if not leaves:
            return
        frontier = self._frontier.copy()
        signer = self._signer
        time_ms = self._time_ms
        records: list[tuple[int, int, bytes]] = []
        new_keys: list[tuple[Verifier, int, int]] = []  # (key, valid_from_size, tx index)
        extend = records.extend
        append = frontier.append
        sha = hashlib.sha256
        decode = _head_decoder.decode
        for body in leaves:
            head = decode(memoryview(body)[_PREFIX_LEN:])
            if head.index != frontier.size:
                raise LogInconsistent(f"leaf {head.index} offered to a log of size {frontier.size}")
            if head.time > time_ms:
                time_ms = head.time
            if head.code == KEY_ROTATION_CODE:
                signer = self._rotate(body, signer)
                new_keys.append((signer.verifier(), head.index + 1, head.index))
            extend(append(sha(b"\x00" + body).digest()))
        rows.insert("ledger_merkle_nodes", ("level", "idx", "hash"), records)
        rows.insert(
            "ledger_keys",
            _KEY_COLUMNS,
            [_key_record(key, valid_from, tx_index) for key, valid_from, tx_index in new_keys],
        )
        root = frontier.root()
        note = sign_checkpoint(
            Checkpoint(origin=self.origin, size=frontier.size, root_hash=root, time_ms=time_ms),
            signer,
        )
        rows.insert(
            "ledger_checkpoints",
            ("tree_size", "note", "root", "time_ms", "key"),
            [(frontier.size, note, root, time_ms, signer.verifier().encode())],
        )
        self._frontier = frontier
        self._signer = signer
        self._time_ms = time_ms
        self._latest_note = note
        self._pending.append(LogHeadNote(frontier.size, root, note))

    def committed(self, leaves: int) -> None:
        """A batch committed (`ledger.writer.CommitListener`): its head is durable."""
        if leaves and self._pending:
            self._committed = self._pending.popleft()

    def _rotate(self, body: bytes, current: Signer) -> Signer:
        new = check_rotation(decode_transaction(body), current.verifier(), self.origin)
        staged = self._signers.get(new)
        if staged is None:
            raise KeyRotationInvalid(
                f"key rotation to {new.encode()} but that private key was not staged"
            )
        return staged

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Rebuild from the database; record the first key; check that the latest checkpoint
        is this log's signature of the stored tree and that no journal row lies past it
        (`UnsignedJournal`, unless `accept_unsigned`: then they are signed now)."""
        async with conn.transaction():
            size = await log_size(conn)
            frontier = await with_nodes(conn, lambda get: MerkleFrontier.from_nodes(size, get))
            row = await conn.fetchrow(
                "SELECT tree_size, note, root, time_ms FROM ledger_checkpoints "
                "ORDER BY tree_size DESC LIMIT 1"
            )
            if (0 if row is None else row["tree_size"]) != size or (
                row is not None and bytes(row["root"]) != frontier.root()
            ):
                raise LogInconsistent(
                    f"the latest checkpoint does not match the stored tree of size {size}"
                )
            await self._check_extends_committed(conn, size)
            self._signer = await self._current_signer(conn)
            if row is not None:
                self._check_signed(row["note"], size, frontier.root())
            self._frontier = frontier
            self._time_ms = 0 if row is None else row["time_ms"]
            self._latest_note = None if row is None else row["note"]
            await self._catch_up(conn, size)
        self._pending.clear()  # what is in memory now is what the database holds
        self._committed = LogHeadNote(self._frontier.size, self._frontier.root(), self._latest_note)

    def _check_signed(self, note: str, size: int, root: bytes) -> None:
        """The latest checkpoint must be signed by the log's current key (a rotation's
        checkpoint is signed by the key it rotates to) for the stored tree: the app role
        may INSERT nodes and checkpoints, but holds no key."""
        try:
            text, _sigs = open_note(note, [self._signer.verifier()])
            checkpoint = Checkpoint.parse(text)
        except (NoteError, CheckpointMalformed) as exc:
            raise CheckpointForged(
                f"the latest checkpoint (size {size}) is not signed by the log's key"
                f" {self._signer.verifier().encode()}: {exc}"
            ) from None
        if (checkpoint.size, checkpoint.root_hash) != (size, root):
            raise CheckpointForged(
                f"the latest checkpoint's row says size {size}, its signed text size"
                f" {checkpoint.size} (or another root)"
            )

    async def _catch_up(self, conn: asyncpg.Connection, size: int) -> None:
        """Journal rows past the signed tree of `size` leaves: refused, or (accepted by the
        operator: a ledger written without the log) signed now."""
        ledger_size = int(
            await conn.fetchval("SELECT coalesce(max(idx) + 1, 0) FROM ledger_transactions")
        )
        if ledger_size < size:
            raise LogInconsistent(f"the log has {size} leaves, the ledger {ledger_size}")
        if ledger_size > size and not self.accept_unsigned:
            raise UnsignedJournal(
                f"the journal holds {ledger_size - size} transactions from index {size} on"
                f" that no signed checkpoint covers (the last signs {size}): written outside"
                " the exchange, not signing them. Remove them, or set"
                " TOKEX_ACCEPT_UNSIGNED_JOURNAL=1 to sign them into the log"
            )
        while self._frontier.size < ledger_size:
            start = self._frontier.size
            rows = await conn.fetch(
                "SELECT body FROM ledger_transactions WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                start,
                min(ledger_size, start + CATCH_UP_CHUNK),
            )
            staged = BatchRows()
            self.stage_leaves(staged, [bytes(r["body"]) for r in rows])
            await staged.execute(conn)

    async def _check_extends_committed(self, conn: asyncpg.Connection, size: int) -> None:
        """A reload after a failed commit must find at least what had committed: a database
        that went back in time meanwhile would have this log sign a fork of itself."""
        head = self._committed
        if head.size == 0:
            return
        why = await regression(conn, size, head.size, head.root)
        if why is not None:
            raise LedgerRegressed(why)

    async def _current_signer(self, conn: asyncpg.Connection) -> Signer:
        row = await conn.fetchrow(
            "SELECT key FROM ledger_keys ORDER BY valid_from_size DESC LIMIT 1"
        )
        if row is None:
            await _insert_key(conn, self._configured.verifier(), 0, None)
            return self._configured
        current = Verifier.parse(row["key"])
        signer = self._signers.get(current)
        if signer is None:
            raise SigningKeyNotCurrent(
                f"the ledger's checkpoints are signed by {current.encode()}, but the "
                f"configured key is {self._configured.verifier().encode()}"
            )
        return signer


_KEY_COLUMNS = ("key", "name", "key_id", "public_key", "valid_from_size", "announced_in_tx")


def _key_record(
    key: Verifier, valid_from_size: int, tx_index: int | None
) -> tuple[str, str, int, bytes, int, int | None]:
    return (key.encode(), key.name, key.key_id, key.public_key, valid_from_size, tx_index)


async def _insert_key(
    conn: asyncpg.Connection, key: Verifier, valid_from_size: int, tx_index: int | None
) -> None:
    staged = BatchRows()
    staged.insert("ledger_keys", _KEY_COLUMNS, [_key_record(key, valid_from_size, tx_index)])
    await staged.execute(conn)


async def open_ledger(
    dsn: str, signer: Signer, origin: str | None = None, *, accept_unsigned: bool = False
) -> tuple[Ledger, MerkleLog]:
    """Open the single writer with the Merkle log installed (see `MerkleLog`)."""
    log = MerkleLog(signer, origin, accept_unsigned=accept_unsigned)
    ledger = await Ledger.open(dsn, hooks=[log])
    return ledger, log
