"""PostgreSQL persistence of the ledger (asyncpg).

Only the single writer (`ledger.writer.Ledger`) calls `stage_batch`; it has
already applied the batch to its in-memory `LedgerState`, so the database
work is bulk inserts into the append-only entry tables, staged in the batch's
`BatchRows` (one statement with the rest of the batch: `ledger.rows`). The
entries are the truth and the journal.

Balances and hold state are also kept as a snapshot (`write_snapshot`, every
so many transactions and on close): start-up loads the snapshot and replays
the journal after it (`load_sealed`). Rewriting every touched balance row in
every batch would cost about a third of the batch's time, for nothing that
the journal does not already make durable. The snapshot tables are not append-only,
so the writer seals each snapshot and loads only one whose seal holds
(`ledger.seal`); else it rebuilds from the journal alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ledger.accounts import may_go_negative
from ledger.canonical import decode_transaction
from ledger.errors import LedgerCorrupt
from ledger.rows import BatchRows
from ledger.rules import LedgerState, replay_into
from ledger.seal import (
    SnapshotDigest,
    SnapshotSealer,
    current_digest,
    lock_and_check,
    seal,
    seal_problem,
)
from schemas.ledger import Account, CommittedTransaction, Hold

log = logging.getLogger(__name__)

#: Key of the session-level advisory lock that makes a process the ledger's one writer.
WRITER_LOCK_KEY = 0x746F6B6578_01  # "tokex" 01


@dataclass(slots=True)
class AccountIds:
    """The numeric id of every open account, assigned in order of first use.

    Retired accounts are not here (they are not loaded), but their ids are never given
    again: a new account gets `next_id`, one more than the largest id ever assigned."""

    ids: dict[Account, int] = field(default_factory=dict)
    by_id: dict[int, Account] = field(default_factory=dict)
    next_id: int = 1

    def get_or_assign(self, account: Account, new: list[tuple[int, Account]]) -> int:
        account_id = self.ids.get(account)
        if account_id is None:
            account_id = self.next_id
            self.next_id = account_id + 1
            self.ids[account] = account_id
            self.by_id[account_id] = account
            new.append((account_id, account))
        return account_id

    def forget(self, account: Account) -> int:
        """Drop a retired account; its id, which is not given again."""
        account_id = self.ids.pop(account)
        del self.by_id[account_id]
        return account_id


@dataclass(slots=True)
class Dirty:
    """Accounts and holds changed since the last snapshot, and how many transactions;
    the ids of the accounts retired since (their balance rows go)."""

    accounts: set[Account] = field(default_factory=set)
    holds: set[str] = field(default_factory=set)
    transactions: int = 0
    retired: list[int] = field(default_factory=list)

    def add(self, committed: CommittedTransaction) -> None:
        self.transactions += 1
        accounts = self.accounts
        for entry in committed.entries:
            accounts.add(entry.account)
        for op in committed.holds:
            self.holds.add(op.hold_id)


@dataclass(slots=True)
class Rejection:
    tx_id: str
    digest: bytes
    code: str
    message: str
    time: int


@dataclass(slots=True)
class PriorOutcome:
    """What a transaction id already stands for in the database."""

    digest: bytes
    index: int | None  # set when it was committed
    code: str | None = None  # set when it was rejected
    message: str | None = None


@dataclass(slots=True)
class BatchWrite:
    """Everything one batch adds to the database."""

    committed: list[tuple[CommittedTransaction, bytes, bytes]] = field(default_factory=list)
    """(transaction, request digest, canonical bytes) in index order."""
    rejections: list[Rejection] = field(default_factory=list)
    retired: list[tuple[Account, int]] = field(default_factory=list)
    """(account, the ledger's next index when it was retired), in order."""


@dataclass(slots=True)
class Loaded:
    """The ledger as loaded: its state, account ids, what the replay changed since the
    snapshot, and the snapshot's digest as checked (None: not sealed, or not checked)."""

    state: LedgerState
    ids: AccountIds
    dirty: Dirty
    sealed: SnapshotDigest | None


async def load_state(conn: asyncpg.Connection) -> tuple[LedgerState, AccountIds, Dirty]:
    """The ledger as stored: the snapshot, unchecked, rolled forward through the journal
    (what an audit compares with the entries; the writer uses `load_sealed`)."""
    loaded = await load_sealed(conn, None)
    return loaded.state, loaded.ids, loaded.dirty


async def load_sealed(conn: asyncpg.Connection, sealer: SnapshotSealer | None) -> Loaded:
    """Rebuild the in-memory ledger from the database (start-up and recovery).

    Loads the last snapshot of balances and holds, then replays the journal
    (the canonical bodies of the transactions committed after it). With a `sealer`, the
    snapshot is loaded only if its seal holds; else it is ignored (an error is logged,
    naming what differs from the journal) and the whole journal is replayed.
    Everything is read in one repeatable-read transaction (or the caller's), so a
    snapshot written meanwhile in the background cannot be half seen.
    """
    outer = (
        contextlib.nullcontext()
        if conn.is_in_transaction()
        else conn.transaction(readonly=True, isolation="repeatable_read")
    )
    async with outer:
        if sealer is None:
            index = await conn.fetchval("SELECT next_index FROM ledger_snapshot") or 0
            return Loaded(*await _load_from(conn, index), sealed=None)
        digest = await current_digest(conn)
        problem = await seal_problem(conn, digest, sealer)
        if problem is None:
            return Loaded(*await _load_from(conn, digest.next_index), sealed=digest)
        stored = await _StoredSnapshot.read(conn, digest.next_index)
        state, ids, dirty = await _load_from(conn, 0, stored=stored)
        # An old snapshot that agrees with the journal (one from before seals) is no alarm.
        level = logging.WARNING if stored.differences == [] else logging.ERROR
        log.log(
            level,
            "the ledger's balance snapshot at index %d is not loaded: %s. Rebuilt from the"
            " journal alone (%d transactions); %s",
            digest.next_index,
            problem,
            state.next_index,
            stored.verdict(),
        )
        return Loaded(state, ids, dirty, sealed=None)


async def _load_from(
    conn: asyncpg.Connection, snapshot_index: int, stored: _StoredSnapshot | None = None
) -> tuple[LedgerState, AccountIds, Dirty]:
    """The snapshot at `snapshot_index` rolled forward; at 0, the journal alone (the
    snapshot's rows are not read). `stored`: a snapshot not loaded, compared with the
    replay when it reaches that snapshot's index."""
    last_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM ledger_accounts")
    ids = AccountIds(next_id=last_id + 1)
    # The accounts retired by the snapshot's index are not loaded at all (after a long
    # history, most accounts ever opened: an escrow and an entitlement per buyer,
    # provider and settled instrument): at zero as of that index, and no transaction
    # after it touches them. Those retired later are, for the replay.
    for row in await conn.fetch(
        """SELECT id, owner, asset, kind FROM ledger_accounts a
            WHERE NOT EXISTS (SELECT 1 FROM ledger_retired_accounts r
                               WHERE r.account_id = a.id AND r.retired_idx <= $1)""",
        snapshot_index,
    ):
        account = Account(row["owner"], row["asset"], row["kind"])
        ids.ids[account] = row["id"]
        ids.by_id[row["id"]] = account
    state = LedgerState(next_index=snapshot_index)
    if snapshot_index:
        for row in await conn.fetch(
            """SELECT account_id, available, held FROM ledger_balances b
                WHERE NOT EXISTS (SELECT 1 FROM ledger_retired_accounts r
                                   WHERE r.account_id = b.account_id AND r.retired_idx <= $1)""",
            snapshot_index,
        ):
            state.balances[ids.by_id[row["account_id"]]] = [row["available"], row["held"]]
        await _load_open_holds(conn, state, ids)
    dirty = Dirty()
    cursor = conn.cursor(
        "SELECT body FROM ledger_transactions WHERE idx >= $1 ORDER BY idx", snapshot_index
    )
    async for row in cursor:
        committed = decode_transaction(row["body"])
        if committed.index != state.next_index:
            raise LedgerCorrupt(
                f"journal has transaction {committed.index} where {state.next_index} belongs"
            )
        if stored is not None and stored.index == committed.index:
            stored.compare(state, ids)
        replay_into(state, committed)
        dirty.add(committed)
    if stored is not None and stored.index == state.next_index:
        stored.compare(state, ids)
    await _retire_replayed(conn, state, ids, dirty, snapshot_index)
    return state, ids, dirty


@dataclass(slots=True)
class _StoredSnapshot:
    """A snapshot that failed its seal, as stored: to name what it has that the journal
    does not (at its index), for the operator who must find out who changed it."""

    index: int
    balances: dict[int, tuple[int, int]]
    holds: dict[str, int]
    differences: list[str] | None = None

    @classmethod
    async def read(cls, conn: asyncpg.Connection, index: int) -> _StoredSnapshot:
        balances = {
            r["account_id"]: (r["available"], r["held"])
            for r in await conn.fetch("SELECT account_id, available, held FROM ledger_balances")
        }
        holds = {
            r["hold_id"]: r["remaining"]
            for r in await conn.fetch(
                "SELECT hold_id, remaining FROM ledger_hold_state WHERE remaining > 0"
            )
        }
        return cls(index, balances, holds)

    def compare(self, state: LedgerState, ids: AccountIds) -> None:
        """Compare with `state`, the journal replayed to this snapshot's index."""
        found = []
        replayed = {ids.ids[a]: (b[0], b[1]) for a, b in state.balances.items()}
        for account_id in sorted(self.balances.keys() | replayed.keys()):
            mine, theirs = self.balances.get(account_id, (0, 0)), replayed.get(account_id, (0, 0))
            if mine != theirs:
                name = ids.by_id.get(account_id, f"account id {account_id}")
                found.append(f"{name}: snapshot {mine}, journal {theirs} (available, held)")
        open_holds = {h: hold.remaining for h, hold in state.holds.items()}
        for hold_id in sorted(self.holds.keys() | open_holds.keys()):
            mine_r, theirs_r = self.holds.get(hold_id, 0), open_holds.get(hold_id, 0)
            if mine_r != theirs_r:
                found.append(f"hold {hold_id}: snapshot {mine_r}, journal {theirs_r} remaining")
        self.differences = found

    def verdict(self) -> str:
        if self.differences is None:
            return f"its index {self.index} is past the journal's end"
        if not self.differences:
            return "its rows agree with the journal at its index"
        shown = "; ".join(self.differences[:5])
        more = len(self.differences) - 5
        return f"it differs from the journal at its index: {shown}" + (
            f" (and {more} more)" if more > 0 else ""
        )


async def _load_open_holds(conn: asyncpg.Connection, state: LedgerState, ids: AccountIds) -> None:
    # Open holds only (a partial index finds them): the holds closed before the snapshot
    # are most holds ever made, and loading them made start-up grow with all of history.
    # `closed_holds` then knows the holds closed since; an id closed before is refused by
    # the database (ledger_holds' primary key) should a new hold reuse it, and a post or
    # void of it is `unknown_hold` rather than `hold_closed`. The exchange derives every
    # hold id from a new order id or a withdrawal id, which never come back.
    # A lookup of each open hold by its key (OFFSET 0 keeps the planner from joining by
    # hashing all of ledger_holds, which grows with history).
    for row in await conn.fetch(
        """SELECT s.hold_id, h.account_id, h.amount, h.expires_at, h.created_idx, s.remaining
             FROM ledger_hold_state s
            CROSS JOIN LATERAL (
                SELECT * FROM ledger_holds h WHERE h.hold_id = s.hold_id OFFSET 0) h
            WHERE s.remaining > 0"""
    ):
        state.holds[row["hold_id"]] = Hold(
            hold_id=row["hold_id"],
            account=ids.by_id[row["account_id"]],
            amount=row["amount"],
            remaining=row["remaining"],
            expires_at=row["expires_at"],
            created_index=row["created_idx"],
        )


async def _retire_replayed(
    conn: asyncpg.Connection, state: LedgerState, ids: AccountIds, dirty: Dirty, since: int
) -> None:
    """The accounts retired after the snapshot's index (`since`), now that the journal
    is replayed: each must be at zero; it leaves memory as it did when it was retired."""
    for row in await conn.fetch(
        "SELECT account_id FROM ledger_retired_accounts WHERE retired_idx > $1 ORDER BY 1",
        since,
    ):
        account = ids.by_id.get(row["account_id"])
        if account is None:
            raise LedgerCorrupt(f"retired account {row['account_id']} is not in ledger_accounts")
        balance = state.balances.pop(account, None)
        if balance is not None and (balance[0] or balance[1]):
            raise LedgerCorrupt(f"retired account {account} holds {balance} after the replay")
        dirty.accounts.discard(account)
        dirty.retired.append(ids.forget(account))
        state.retired.add(account)


#: Session settings of the writer's connections. Its statements are prepared once and run
#: thousands of times while the tables grow from empty; PostgreSQL's cached generic plan,
#: made when a table was small, can keep scanning the whole table on every batch (a join
#: against unnest() of the batch's keys did: the API bench fell from 3,300 to 2,000 orders/s
#: as the tables grew). A custom plan per execution sees each table's current size.
#:
#: TCP keepalives both ways (ignored on a Unix socket): the server ends the session of a
#: writer whose connection went dark (a partition) within about half a minute, and with
#: it the writer lock, which would otherwise stay held until the kernel gives up (hours),
#: refusing every new writer; the writer's side finds a server gone dark likewise.
WRITER_SETTINGS = {
    "application_name": "tokex-writer",
    "plan_cache_mode": "force_custom_plan",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}
#: The writer's side of its keepalives (idle s, interval s, probes), as `WRITER_SETTINGS`.
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


class WriterSession(NamedTuple):
    """A writer connection's server session: its pid and when it began (a pid alone may
    be another session's by the time the session is ended: pids are reused)."""

    pid: int
    started: datetime


#: When each writer connection's session began, read once at connect (`writer_session`).
_STARTED: weakref.WeakKeyDictionary[asyncpg.Connection, datetime] = weakref.WeakKeyDictionary()


async def connect_writer(dsn: str) -> asyncpg.Connection:
    """A connection for the exchange's single writer (ledger, sequencer)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, server_settings=WRITER_SETTINGS)
    _keep_alive(conn)
    started = await conn.fetchval(
        "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    )
    if isinstance(started, datetime):
        _STARTED[conn] = started
    return conn


def writer_session(conn: asyncpg.Connection) -> WriterSession | None:
    """The session of a connection `connect_writer` opened (None for another)."""
    started = _STARTED.get(conn)
    return None if started is None else WriterSession(conn.get_server_pid(), started)


def _keep_alive(conn: asyncpg.Connection) -> None:
    """TCP keepalives on the writer's socket (asyncpg sets none); nothing on a Unix one."""
    transport = getattr(conn, "_transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        option = getattr(socket, name, None)  # Linux has all three; others may not
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def end_writer_sessions(
    dsn: str, sessions: Sequence[WriterSession], *, wait_s: float = 2.0
) -> int:
    """End the server `sessions` of a writer this process gave up (`Ledger.abandon`)
    if they are still there, and wait up to `wait_s` for them to go: the old session
    holds the writer lock until it ends, and one cut off from its client (a partition, a
    stalled backend) stays until its keepalives fail, refusing the new writer ("another
    process is already the ledger's writer"). Only sessions of ours (`tokex-writer`, in
    the DSN's database: an exchange in another database of the server may by now have
    a session of a pid this one gave up), and begun when the session given up began (a
    later one has the pid of one that ended). Returns how many are still there (a
    stalled backend ends once it runs again)."""
    if not sessions:
        return 0
    pids, starts = [s.pid for s in sessions], [s.started for s in sessions]
    conn = await asyncpg.connect(dsn, timeout=wait_s)
    try:
        left = await _terminate_sessions(conn, pids, starts)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = await _sessions_left(conn, left)
    finally:
        await conn.close()
    return len(left)


async def _terminate_sessions(
    conn: asyncpg.Connection, pids: list[int], starts: list[datetime]
) -> list[WriterSession]:
    rows = await conn.fetch(
        """SELECT pid, backend_start FROM (
               SELECT a.pid, a.backend_start FROM pg_stat_activity a
                 JOIN unnest($1::int[], $2::timestamptz[]) AS s(pid, started)
                   ON a.pid = s.pid AND a.backend_start = s.started
                WHERE a.application_name = $3 AND a.datname = current_database()
               OFFSET 0) ours
            WHERE pg_terminate_backend(pid)""",
        pids,
        starts,
        WRITER_SETTINGS["application_name"],
    )
    return [WriterSession(row[0], row[1]) for row in rows]


async def _sessions_left(
    conn: asyncpg.Connection, sessions: list[WriterSession]
) -> list[WriterSession]:
    rows = await conn.fetch(
        """SELECT a.pid, a.backend_start FROM pg_stat_activity a
             JOIN unnest($1::int[], $2::timestamptz[]) AS s(pid, started)
               ON a.pid = s.pid AND a.backend_start = s.started""",
        [s.pid for s in sessions],
        [s.started for s in sessions],
    )
    return [WriterSession(row[0], row[1]) for row in rows]


async def connection_alive(conn: asyncpg.Connection) -> bool:
    """Whether a trivial query still goes through on `conn` (else: use a new one)."""
    try:
        await conn.fetchval("SELECT 1")
    except Exception:  # any failure of a trivial query means: use a new connection
        return False
    return True


async def writer_held(conn: asyncpg.Connection) -> bool:
    """Whether another session holds the ledger's writer lock now (a look: taken and at
    once released if free). Another process may still become the writer right after."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", WRITER_LOCK_KEY):
        return True
    await conn.fetchval("SELECT pg_advisory_unlock($1)", WRITER_LOCK_KEY)
    return False


async def prior_outcomes(
    conn: asyncpg.Connection, tx_ids: Sequence[str]
) -> dict[str, PriorOutcome]:
    """The first outcome of every id in `tx_ids` that was seen before."""
    found: dict[str, PriorOutcome] = {}
    rows = await conn.fetch(
        """SELECT tx_id, request_digest, idx, NULL AS code, NULL AS message
             FROM ledger_transactions WHERE tx_id = ANY($1::text[])
           UNION ALL
           SELECT tx_id, request_digest, NULL, code, message
             FROM ledger_rejections WHERE tx_id = ANY($1::text[])""",
        tx_ids,
    )
    for row in rows:
        found[row["tx_id"]] = PriorOutcome(
            row["request_digest"], row["idx"], row["code"], row["message"]
        )
    return found


def stage_batch(rows: BatchRows, batch: BatchWrite, ids: AccountIds) -> list[int]:
    """Stage a batch's rows for the append-only tables (new accounts get their ids;
    retired accounts leave `ids`). Returns the ids of the accounts retired."""
    new_accounts: list[tuple[int, Account]] = []
    tx_rows: list[tuple[int, str, str, int, bytes, bytes]] = []
    entry_rows: list[tuple[int, int, int, int, int]] = []
    hold_rows: list[tuple[str, int, int, int | None, int]] = []
    assign = ids.get_or_assign

    for committed, digest, body in batch.committed:  # in index order
        index = committed.index
        tx_rows.append((index, committed.id, committed.code, committed.time, digest, body))
        for n, entry in enumerate(committed.entries):
            account_id = assign(entry.account, new_accounts)
            entry_rows.append((index, n, account_id, int(entry.bucket), entry.amount))
        for op in committed.holds:
            if op.op == "create":
                account_id = assign(op.account, new_accounts)
                hold_rows.append((op.hold_id, account_id, op.amount, op.expires_at, index))

    rows.insert(
        "ledger_accounts",
        ("id", "owner", "asset", "kind", "may_go_negative"),
        [(i, a.owner, a.asset, a.kind, may_go_negative(a)) for i, a in new_accounts],
    )
    rows.insert(
        "ledger_transactions",
        ("idx", "tx_id", "code", "time_ms", "request_digest", "body"),
        tx_rows,
    )
    rows.insert("ledger_entries", ("tx_idx", "n", "account_id", "bucket", "amount"), entry_rows)
    rows.insert(
        "ledger_holds", ("hold_id", "account_id", "amount", "expires_at", "created_idx"), hold_rows
    )
    rows.insert(
        "ledger_rejections",
        ("tx_id", "request_digest", "code", "message", "time_ms"),
        [(r.tx_id, r.digest, r.code, r.message, r.time) for r in batch.rejections],
    )
    retired = [(ids.forget(account), index) for account, index in batch.retired]
    rows.insert("ledger_retired_accounts", ("account_id", "retired_idx"), retired)
    return [account_id for account_id, _ in retired]


@dataclass(slots=True)
class Snapshot:
    """Balances and holds as of `next_index`, copied out of memory to be written."""

    next_index: int
    balances: tuple[list[int], list[int], list[int], list[bool]]
    holds: tuple[list[str], list[int]]
    retired: list[int]
    """Ids of accounts retired since the last snapshot: their balance rows are deleted."""
    full: bool = False


def take_snapshot(
    state: LedgerState, ids: AccountIds, dirty: Dirty, *, full: bool = False
) -> Snapshot:
    """What changed since the last snapshot (`dirty`), or everything (`full`): a copy,
    so it can be written while the state moves on."""
    accounts = state.balances.keys() if full else dirty.accounts
    balances: tuple[list[int], list[int], list[int], list[bool]] = ([], [], [], [])
    for account in accounts:
        available, held = state.balances.get(account, (0, 0))
        balances[0].append(ids.ids[account])
        balances[1].append(available)
        balances[2].append(held)
        balances[3].append(may_go_negative(account))
    # Runs on the writer's loop between batches: no sorting (50,000 holds took 14 ms).
    hold_ids = list({*state.holds, *state.closed_holds} if full else dirty.holds)
    open_holds = state.holds
    remaining = [0 if (hold := open_holds.get(h)) is None else hold.remaining for h in hold_ids]
    return Snapshot(state.next_index, balances, (hold_ids, remaining), list(dirty.retired), full)


async def write_snapshot(
    conn: asyncpg.Connection,
    snapshot: Snapshot,
    sealer: SnapshotSealer | None = None,
    expected: SnapshotDigest | None = None,
) -> SnapshotDigest | None:
    """Write a snapshot (inside a transaction). Recovery loads it and replays the
    journal from `next_index`. With a `sealer`: first check that the tables still hold
    `expected`, what was sealed last (`SnapshotTampered` if not; a full snapshot replaces
    them and checks nothing), then seal what is written. Returns what was sealed."""
    if sealer is not None:
        await lock_and_check(conn, expected, full=snapshot.full)
    if snapshot.full:  # the whole truth as of its index: any other row goes
        await _replace_all(conn, snapshot)
    if snapshot.balances[0]:
        await conn.execute(
            """INSERT INTO ledger_balances (account_id, available, held, may_go_negative)
               SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[])
               ON CONFLICT (account_id) DO UPDATE
                  SET available = EXCLUDED.available, held = EXCLUDED.held""",
            *snapshot.balances,
        )
    if snapshot.holds[0]:
        await conn.execute(
            """INSERT INTO ledger_hold_state (hold_id, remaining)
               SELECT * FROM unnest($1::text[], $2::bigint[])
               ON CONFLICT (hold_id) DO UPDATE SET remaining = EXCLUDED.remaining""",
            *snapshot.holds,
        )
    if snapshot.retired and not snapshot.full:
        await conn.execute(
            "DELETE FROM ledger_balances WHERE account_id = ANY($1::bigint[])", snapshot.retired
        )
    if sealer is not None:
        return await seal(conn, snapshot.next_index, sealer)
    await conn.execute(
        """UPDATE ledger_snapshot SET next_index = $1, seal_key = NULL, seal = NULL
            WHERE next_index < $1""",
        snapshot.next_index,
    )
    return None


async def _replace_all(conn: asyncpg.Connection, snapshot: Snapshot) -> None:
    """Before a full snapshot's rows are written: drop the balance rows of the accounts it
    does not hold (the retirements of a snapshot that failed were lost with it; or rows
    that should not be there at all) and close the holds it does not hold. An account
    retired later (by a batch committed while this is written) is still in it: it may
    hold a balance as of this index."""
    await conn.execute(
        """DELETE FROM ledger_balances b
            WHERE NOT EXISTS (SELECT 1 FROM unnest($1::bigint[]) AS k(id)
                               WHERE k.id = b.account_id)""",
        snapshot.balances[0],
    )
    await conn.execute(
        """UPDATE ledger_hold_state s SET remaining = 0
            WHERE s.remaining > 0
              AND NOT EXISTS (SELECT 1 FROM unnest($1::text[]) AS k(id) WHERE k.id = s.hold_id)""",
        snapshot.holds[0],
    )


async def stored_balances(conn: asyncpg.Connection) -> dict[Account, tuple[int, int]]:
    """Balances as the derived table holds them."""
    rows = await conn.fetch(
        """SELECT a.owner, a.asset, a.kind, b.available, b.held
             FROM ledger_balances b JOIN ledger_accounts a ON a.id = b.account_id"""
    )
    return {Account(r["owner"], r["asset"], r["kind"]): (r["available"], r["held"]) for r in rows}


async def recomputed_balances(conn: asyncpg.Connection) -> dict[Account, tuple[int, int]]:
    """Balances recomputed from the append-only entries alone."""
    rows = await conn.fetch(
        """SELECT a.owner, a.asset, a.kind,
                  coalesce(sum(e.amount) FILTER (WHERE e.bucket = 0), 0)::bigint AS available,
                  coalesce(sum(e.amount) FILTER (WHERE e.bucket = 1), 0)::bigint AS held
             FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
            GROUP BY a.owner, a.asset, a.kind"""
    )
    return {Account(r["owner"], r["asset"], r["kind"]): (r["available"], r["held"]) for r in rows}


async def committed_transactions(
    conn: asyncpg.Connection, start: int = 0, stop: int | None = None
) -> list[bytes]:
    """Canonical bytes of committed transactions with start <= index < stop, in order."""
    rows = await conn.fetch(
        """SELECT body FROM ledger_transactions
            WHERE idx >= $1 AND ($2::bigint IS NULL OR idx < $2) ORDER BY idx""",
        start,
        stop,
    )
    return [r["body"] for r in rows]


def nonzero(balances: Iterable[tuple[Account, tuple[int, int]]]) -> dict[Account, tuple[int, int]]:
    """Drop all-zero balances, so stored and recomputed views compare equal."""
    return {a: b for a, b in balances if b != (0, 0)}
