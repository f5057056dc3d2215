"""The gateway's streaming calls in flight, as far as the exchange has recorded them
(`gateway_calls`): what `GatewayProgressOp` and `GatewayChargeOp` stage of them.

A progress op's marks replace the rows of their calls (an upsert: the call as opened, and
its latest progress); a charge op deletes the rows of the calls its receipts close, in the
same statement as the receipts, so a call has a row until its receipt is durable and none
after. A mark and a close of the same call in one batch (the mark was queued before the
call ended) leave no row: the close drops the mark. What is left when the exchange
restarts is a call cut by a crash (`market.gateway.progress.close_crashed`).

A charge op also deletes its receipts' rows of `gateway_receipts_owed` (written with each
receipt by the receipt journal, `market.gateway.journal`): once this batch commits, they
are charged (or found charged, or charged nothing, or refused), and no restart charges
them again.

Each batch's marks and closes are kept in its `CallRows` and staged once, with the batch's
other rows (`Batch.stage`): a call is written at most once per statement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ledger.rows import BatchRows
from schemas.gateway import CallMark

TABLE = "gateway_calls"
#: Receipts journaled whose charge is owed (`market.gateway.journal` writes them).
OWED_TABLE = "gateway_receipts_owed"
COLUMNS = tuple(CallMark.__struct_fields__)
#: A newer mark replaces the progress; the call's opening is the same in every mark.
_PROGRESS = (
    "chunks", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
    "response_sha256", "marked_ms",
)  # fmt: skip
UPSERT = "ON CONFLICT (receipt_id) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c in _PROGRESS
)


@dataclass(slots=True)
class CallRows:
    """One batch's marks (by receipt id: the last one of a call wins) and closes."""

    marks: dict[str, CallMark] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)
    #: receipt ids whose owed rows go (their charge is decided by this batch)
    charged: list[str] = field(default_factory=list)

    def stage(self, rows: BatchRows) -> None:
        rows.insert(TABLE, COLUMNS, [_record(m) for m in self.marks.values()], on_conflict=UPSERT)
        rows.delete(TABLE, "receipt_id", self.closed)
        rows.delete(OWED_TABLE, "receipt_id", self.charged)


def _record(m: CallMark) -> tuple[object, ...]:
    return tuple(getattr(m, c) for c in COLUMNS)


def mark(rows: CallRows, marks: Iterable[CallMark]) -> int:
    """Stage the marks of a `GatewayProgressOp`; how many."""
    n = 0
    for m in marks:
        rows.marks[m.receipt_id] = m
        n += 1
    return n


def close(rows: CallRows, receipt_ids: Iterable[str]) -> None:
    """Stage the deletion of the rows of calls whose receipts this batch commits (and
    drop their marks staged by this batch)."""
    for receipt_id in receipt_ids:
        rows.marks.pop(receipt_id, None)
        rows.closed.append(receipt_id)


def charged(rows: CallRows, receipt_ids: Iterable[str]) -> None:
    """Stage the deletion of these receipts' owed rows (this batch decides their charge)."""
    rows.charged.extend(receipt_ids)
