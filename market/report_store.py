"""PostgreSQL persistence of providers' pending reports, their disputes, and buyer
vouchers (migration 0011). Written only by the sequencer, staged into its batch's one
statement (`stage_report_rows`); read by recovery (pending reports) and the API."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ledger.rows import BatchRows
from market.pages import FIRST_PAGE, Keyset
from schemas.disputes import DisputeView, VoucherView
from schemas.trading import DeliveryView

REPORT_COLUMNS = (
    "provider", "report_id", "request_digest", "instrument", "buyer", "tokens", "released",
    "fee", "hold_id", "created_ms", "due_ms", "status", "dispute_id", "dispute_reason",
    "disputed_ms", "settled_tx", "updated_ms",
)  # fmt: skip
_REPORT_UPSERT = "ON CONFLICT (provider, report_id) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}"
    for c in ("status", "dispute_id", "dispute_reason", "disputed_ms", "settled_tx", "updated_ms")
)

VOUCHER_COLUMNS = (
    "buyer", "provider", "instrument", "version", "tokens", "key_id", "signature", "delta",
    "transaction_id", "time_ms",
)  # fmt: skip

#: A report's states (the migration's trigger allows pending -> settled | disputed and
#: disputed -> paid | refunded, nothing else).
PENDING, SETTLED, DISPUTED, PAID, REFUNDED = "pending", "settled", "disputed", "paid", "refunded"


@dataclass(frozen=True, slots=True)
class ReportRow:
    """A provider's own delivery report (a row of `market_reports`)."""

    provider: str
    report_id: str
    request_digest: bytes
    instrument: str
    buyer: str
    tokens: int
    released: int
    fee: int
    hold_id: str
    created_ms: int
    due_ms: int
    status: str
    dispute_id: str | None = None
    dispute_reason: str | None = None
    disputed_ms: int | None = None
    settled_tx: str | None = None
    updated_ms: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.report_id)

    def step(self, status: str, time_ms: int, **changes: Any) -> ReportRow:
        return dataclasses.replace(self, status=status, updated_ms=time_ms, **changes)

    def as_record(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in REPORT_COLUMNS)

    def view(self) -> DeliveryView:
        return DeliveryView(
            report_id=self.report_id, instrument=self.instrument, buyer=self.buyer,
            provider=self.provider, tokens=self.tokens, released=self.released, fee=self.fee,
            paid=self.released - self.fee, transaction_id=self.settled_tx or self.hold_id,
            time_ms=self.created_ms, status=self.status,
            settles_at_ms=self.due_ms if self.status == PENDING else None,
            dispute_id=self.dispute_id,
        )  # fmt: skip

    def dispute_view(self) -> DisputeView:
        assert self.dispute_id is not None and self.disputed_ms is not None
        return DisputeView(
            dispute_id=self.dispute_id, provider=self.provider, report_id=self.report_id,
            buyer=self.buyer, instrument=self.instrument, tokens=self.tokens,
            released=self.released, reason=self.dispute_reason or "",
            status="open" if self.status == DISPUTED else self.status,
            created_at_ms=self.disputed_ms, updated_at_ms=self.updated_ms,
            transaction_id=self.settled_tx,
        )  # fmt: skip


def report_from_record(r: asyncpg.Record) -> ReportRow:
    return ReportRow(**{c: r[c] for c in REPORT_COLUMNS})


@dataclass(frozen=True, slots=True)
class VoucherRow:
    """An accepted voucher (a row of `market_vouchers`) and what its delivery moved."""

    buyer: str
    provider: str
    instrument: str
    version: int
    tokens: int
    key_id: str
    signature: bytes
    delta: int
    transaction_id: str
    time_ms: int
    released: int = 0
    fee: int = 0

    def as_record(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in VOUCHER_COLUMNS)

    def view(self) -> VoucherView:
        return VoucherView(
            buyer=self.buyer, provider=self.provider, instrument=self.instrument,
            tokens=self.tokens, version=self.version, delta=self.delta, released=self.released,
            fee=self.fee, paid=self.released - self.fee, transaction_id=self.transaction_id,
            time_ms=self.time_ms,
        )  # fmt: skip


Triple = tuple[str, str, str]  # (buyer, provider, instrument)


def stage_report_rows(
    rows: BatchRows, reports: Sequence[ReportRow], vouchers: Sequence[VoucherRow]
) -> None:
    """Stage a batch's reports (inserted, or their state stepped) and vouchers."""
    rows.insert(
        "market_reports", REPORT_COLUMNS, [r.as_record() for r in reports],
        on_conflict=_REPORT_UPSERT,
    )  # fmt: skip
    rows.insert("market_vouchers", VOUCHER_COLUMNS, [v.as_record() for v in vouchers])


async def find_reports(
    conn: asyncpg.Connection,
    keys: Sequence[tuple[str, str]],
    dispute_ids: Sequence[str] = (),
) -> dict[tuple[str, str], ReportRow]:
    """Reports under these (provider, report id) keys or with these dispute ids."""
    if not keys and not dispute_ids:
        return {}
    rows = await conn.fetch(
        """SELECT r.* FROM market_reports r
            WHERE (r.provider, r.report_id) IN (
                    SELECT * FROM unnest($1::text[], $2::text[]))
               OR r.dispute_id = ANY($3::text[])""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        list(dispute_ids),
    )
    found = [report_from_record(r) for r in rows]
    return {r.key: r for r in found}


async def load_pending_reports(conn: asyncpg.Connection) -> list[ReportRow]:
    rows = await conn.fetch(
        "SELECT * FROM market_reports WHERE status = 'pending' ORDER BY due_ms, provider, report_id"
    )
    return [report_from_record(r) for r in rows]


async def latest_vouchers(
    conn: asyncpg.Connection, triples: Sequence[Triple]
) -> dict[Triple, VoucherRow]:
    """The last accepted voucher (the most tokens) of each (buyer, provider, instrument)."""
    if not triples:
        return {}
    rows = await conn.fetch(
        """SELECT DISTINCT ON (v.buyer, v.provider, v.instrument) v.*
             FROM market_vouchers v
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(b, p, i)
               ON v.buyer = k.b AND v.provider = k.p AND v.instrument = k.i
            ORDER BY v.buyer, v.provider, v.instrument, v.tokens DESC""",
        [t[0] for t in triples],
        [t[1] for t in triples],
        [t[2] for t in triples],
    )
    found = [VoucherRow(**{c: r[c] for c in VOUCHER_COLUMNS}) for r in rows]
    return {(v.buyer, v.provider, v.instrument): v for v in found}


async def list_vouchers(
    conn: asyncpg.Connection, account_id: str, *, limit: int, keyset: Keyset = FIRST_PAGE
) -> list[VoucherRow]:
    """Vouchers an account signed (buyer) or submitted (provider), newest first by
    (time, transaction id), with what their deliveries released (`market_deliveries`)."""
    where, order, key = keyset.sql("(v.time_ms, v.transaction_id)", 3)
    rows = await conn.fetch(
        f"""SELECT v.*, d.released, d.fee FROM market_vouchers v
             JOIN market_deliveries d ON d.transaction_id = v.transaction_id
            WHERE (v.buyer = $1 OR v.provider = $1) AND {where}
            ORDER BY {order} LIMIT $2""",
        account_id,
        limit,
        *key,
    )
    return [
        VoucherRow(**{c: r[c] for c in VOUCHER_COLUMNS}, released=r["released"], fee=r["fee"])
        for r in rows
    ]


async def list_reports(
    conn: asyncpg.Connection,
    account_id: str | None,
    *,
    statuses: Sequence[str],
    disputed_only: bool = False,
    limit: int,
    keyset: Keyset = FIRST_PAGE,
) -> list[ReportRow]:
    """Reports an account made or received (None: everyone's), in these states, newest
    first by (created, provider, report id); `disputed_only`: those that were disputed."""
    where, order, key = keyset.sql("(created_ms, provider, report_id)", 5)
    rows = await conn.fetch(
        f"""SELECT * FROM market_reports
            WHERE ($1::text IS NULL OR provider = $1 OR buyer = $1)
              AND status = ANY($2::text[])
              AND (NOT $3 OR dispute_id IS NOT NULL)
              AND {where}
            ORDER BY {order} LIMIT $4""",
        account_id,
        list(statuses),
        disputed_only,
        limit,
        *key,
    )
    return [report_from_record(r) for r in rows]
