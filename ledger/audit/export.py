"""Audit export: the ``tokex-audit/v3`` file of a range of the ledger, read from PostgreSQL
(see `ledger.audit` for the format).

The ledger knows receipts only as evidence a transaction commits to (`ledger.receipts`);
where they are stored is the application's: it passes a `ReceiptSource` (the exchange's is
`market.gateway.receipts.delivery_receipts`), read in the export's one snapshot."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

import asyncpg

from ledger.audit.records import (
    BALANCE_CHUNK,
    CHUNK,
    FORMAT,
    BalanceRow,
    Balances,
    CheckpointRecord,
    End,
    Entries,
    FrameWriter,
    Header,
    KeyRecord,
    Keys,
    Receipts,
)
from ledger.log import with_nodes
from ledger.merkle import MerkleFrontier
from ledger.store import load_state
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "WINDOW",
    "ExportEmpty",
    "ExportSummary",
    "ReceiptSource",
    "export",
    "stderr_progress",
]

WINDOW = 10_000  # entries fetched per query while exporting

#: The receipts of the deliveries at ledger indices [from, to), as (transaction id,
#: canonical receipt bytes) in index order, each delivery's in the order of its tree.
ReceiptSource = Callable[[asyncpg.Connection, int, int], AsyncIterator[tuple[str, bytes]]]


class ExportEmpty(DomainError):
    """There is no checkpoint in the requested range: nothing signed to export."""

    code = "audit_export_empty"
    kind = ErrorKind.NOT_FOUND


@dataclass(slots=True)
class ExportSummary:
    origin: str
    from_index: int
    to_index: int
    entries: int = 0
    checkpoints: int = 0
    receipts: int = 0
    bytes: int = 0


_BALANCES_UPTO = """
SELECT a.owner, a.asset, a.kind,
       coalesce(sum(e.amount) FILTER (WHERE e.bucket = 0), 0)::bigint AS available,
       coalesce(sum(e.amount) FILTER (WHERE e.bucket = 1), 0)::bigint AS held
  FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
 WHERE e.tx_idx < $1
 GROUP BY a.owner, a.asset, a.kind
"""


#: Per account, the sums of the stored entries of [$1, $2): one grouped scan, by account id
#: (the reports read these rows, so the verifier checks them against the signed bodies).
_ENTRY_SUMS = """
SELECT a.owner, a.asset, a.kind, s.available, s.held
  FROM (SELECT account_id,
               coalesce(sum(amount) FILTER (WHERE bucket = 0), 0)::bigint AS available,
               coalesce(sum(amount) FILTER (WHERE bucket = 1), 0)::bigint AS held
          FROM ledger_entries
         WHERE tx_idx >= $1 AND tx_idx < $2
         GROUP BY account_id) s
  JOIN ledger_accounts a ON a.id = s.account_id
"""


async def _entry_sums(conn: asyncpg.Connection, start: int, end: int) -> list[BalanceRow]:
    """What `ledger_entries` says each account moved over [start, end), non-zero, sorted."""
    rows = await conn.fetch(_ENTRY_SUMS, start, end)
    out = [(r["owner"], r["asset"], r["kind"], r["available"], r["held"]) for r in rows]
    return sorted(r for r in out if r[3] or r[4])


async def _balances(conn: asyncpg.Connection, upto: int, ledger_size: int) -> list[BalanceRow]:
    """Balances after the first ``upto`` transactions: the stored balances when that is the
    whole ledger (so the audit checks what the exchange actually holds), else summed from
    the stored entries."""
    if upto == ledger_size:
        # What the exchange holds: its balance snapshot rolled forward through the
        # journal after it (ledger.store.load_state), as stored: without the signing key
        # the seal is not checked, so an edited snapshot shows here as a difference.
        state, _, _ = await load_state(conn)
        held = [(a.owner, a.asset, a.kind, b[0], b[1]) for a, b in state.balances.items()]
        return sorted(r for r in held if r[3] or r[4])
    else:
        rows = await conn.fetch(_BALANCES_UPTO, upto)
    out = [(r["owner"], r["asset"], r["kind"], r["available"], r["held"]) for r in rows]
    return sorted(r for r in out if r[3] or r[4])


def _write_balances(
    w: FrameWriter, which: Literal["opening", "closing", "entries"], rows: list[BalanceRow]
) -> None:
    for i in range(0, len(rows), BALANCE_CHUNK):
        w.write(Balances(which, rows[i : i + BALANCE_CHUNK]))


async def _write_receipts(
    w: FrameWriter, source: AsyncIterator[tuple[str, bytes]], summary: ExportSummary
) -> None:
    """Receipts records, at most `CHUNK` receipts each, one delivery's per record."""
    tx_id: str | None = None
    start = 0
    bodies: list[bytes] = []
    async for delivery, body in source:
        if delivery != tx_id or len(bodies) == CHUNK:
            if tx_id is not None:
                w.write(Receipts(tx_id, start, bodies))
            start = start + len(bodies) if delivery == tx_id else 0
            tx_id, bodies = delivery, []
        bodies.append(body)
        summary.receipts += 1
    if tx_id is not None:
        w.write(Receipts(tx_id, start, bodies))


async def export(
    conn: asyncpg.Connection,
    out: BinaryIO,
    from_index: int = 0,
    to_index: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    receipts: ReceiptSource | None = None,
) -> ExportSummary:
    """Write the audit file of entries [from_index, to_index) to ``out``.

    ``to_index`` (default: the latest checkpoint) is rounded down to a checkpoint size.
    ``progress(done, total)`` is called after each window of entries. ``receipts``: where
    the receipts of the range's deliveries are read (none without it).
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
        w = FrameWriter(out)
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
        _write_balances(w, "entries", await _entry_sums(conn, from_index, end))
        if receipts is not None:
            await _write_receipts(w, receipts(conn, from_index, end), summary)
        w.write(End(summary.entries, summary.checkpoints, w.digest()))
        summary.bytes = w.bytes
    return summary


def stderr_progress() -> Callable[[int, int], None] | None:
    """A progress printer for exports, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\rexported {done:,} / {total:,} entries", end=end, file=sys.stderr, flush=True)

    return show
