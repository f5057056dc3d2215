"""Settlement reports over the ledger's entry tables: statement, provider payouts,
instrument settlement, fee revenue and trial balance, as JSON or CSV.

One entry point, `report_chunks(conn, query, fmt)`, yields the bytes of a report. It
reads in one read-only REPEATABLE READ transaction (one snapshot: the totals of a
report agree with each other even while the sequencer writes) and streams the
entries through a server-side cursor, so a statement over millions of entries is
never in memory. The HTTP routes (`market.clearing.reports_api`) and `tokex report` both
call it, so the same query gives the same bytes through either.

Deterministic, so a rerun over the same ledger range is byte-identical: every
ORDER BY is total and compares text with `COLLATE "C"` (code point order, whatever
the database's locale), integers are printed as plain digits, no float is ever
computed, and no report carries the time it was made. A statement or trial balance
without an upper bound ends at the ledger's size at the time of the query; the JSON
form names the resolved range in its `query`, and passing it back reproduces the
report exactly.

Reports are driven by ledger entries and transaction codes, not by the market's
code: a delivery is any transaction whose code is in `DELIVERY_CODES`; escrow or
entitlement leaving its account in any *other* transaction (window close, refund,
burn) counts as refunded or undelivered. Accounts are read by the names of the
posting rules (`market.clearing.rules`: `b@p` pairs, the exchange's fee account).
Only the instrument report reads the market's tables (`market_instruments` for the
lot and currency, `market_fills` for volume and prices).

Formats:
- CSV: a header row of the row type's fields in declared order, then one line per
  row (`\\n` line ends, minimal quoting); integers as digits, empty cells for None.
- JSON: one document, `{"report": name, "query": {...resolved...}, "columns": [...],
  "rows": [ {...}, ... ]}` with one row object per line; it is streamed, so a
  reader that wants rows one at a time can split on lines after the first.

Integer rules: VWAP = floor(notional * lot / volume), in minor units per lot
(notional = sum of quantity / lot * price, so this is the volume-weighted mean
price, rounded down), 0 when nothing traded. Time periods are UTC hours or days:
period_start_ms = floor(time_ms / period) * period (Unix ms, like every
time of the API).
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec

from market.clearing.rules import EXCHANGE, parse_pair, token_asset
from schemas.errors import DomainError, ErrorKind
from schemas.reports import (
    PERIOD_MS,
    FeeRow,
    FeesQuery,
    InstrumentQuery,
    InstrumentRow,
    PayoutRow,
    PayoutsQuery,
    ReportFormat,
    ReportQuery,
    ReportRow,
    StatementQuery,
    StatementRow,
    TrialBalanceQuery,
    TrialBalanceRow,
)

__all__ = [
    "DELIVERY_CODES",
    "InvalidReportQuery",
    "ReportForbidden",
    "UnknownReportInstrument",
    "check_query",
    "parse_time",
    "report_chunks",
    "report_columns",
    "report_name",
    "report_rows",
    "resolve_query",
]

#: Transaction codes that deliver tokens and pay providers out of escrow.
DELIVERY_CODES: Final[tuple[str, ...]] = ("delivery",)

#: Rows per chunk of output (a chunk is one write to the socket or file).
CHUNK_ROWS: Final = 500
#: Rows a server-side cursor fetches per round trip.
PREFETCH: Final = 2_000

_BUCKETS: Final = ("available", "held")


class InvalidReportQuery(DomainError):
    """The report's parameters are malformed or contradict each other."""

    code = "invalid_report_query"
    kind = ErrorKind.INVALID


class ReportForbidden(DomainError):
    """The caller may not see this report (another account's, or an operator's report)."""

    code = "report_forbidden"
    kind = ErrorKind.FORBIDDEN


class UnknownReportInstrument(DomainError):
    """No instrument has this symbol."""

    code = "unknown_instrument"
    kind = ErrorKind.NOT_FOUND


# --------------------------------------------------------------------------- helpers

_NAMES: Final[dict[type[Any], tuple[str, type[ReportRow]]]] = {
    StatementQuery: ("statement", StatementRow),
    PayoutsQuery: ("payouts", PayoutRow),
    InstrumentQuery: ("instrument", InstrumentRow),
    FeesQuery: ("fees", FeeRow),
    TrialBalanceQuery: ("trial-balance", TrialBalanceRow),
}


def report_name(query: ReportQuery) -> str:
    return _NAMES[type(query)][0]


def report_columns(query: ReportQuery) -> tuple[str, ...]:
    """The fixed column order of the report's rows."""
    return _NAMES[type(query)][1].__struct_fields__


_DIGITS = re.compile(r"[0-9]{1,19}")


#: The latest time bound taken (ms): the database's times are bigint.
MAX_TIME_MS = 2**62


def parse_time(text: str) -> int:
    """A time bound as Unix milliseconds: digits (milliseconds), or ISO-8601 (a date, or a
    date and time; UTC unless it carries an offset); at most `MAX_TIME_MS`."""
    text = text.strip()
    if _DIGITS.fullmatch(text):
        return _at_most_max(int(text), text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidReportQuery(
            f"not a time: {text[:40]!r} (Unix milliseconds or ISO-8601, e.g. 2026-12-01T00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if ms < 0:
        raise InvalidReportQuery(f"time before 1970: {text[:40]!r}")
    return _at_most_max(ms, text)


def _at_most_max(ms: int, text: str) -> int:
    if ms > MAX_TIME_MS:
        raise InvalidReportQuery(f"time beyond {MAX_TIME_MS} ms: {text[:40]!r}")
    return ms


def _int(value: int | Decimal | None) -> int:
    """A sum from PostgreSQL (numeric for sums of bigint) as an exact int; NULL is 0."""
    return 0 if value is None else int(value)


def _vwap(notional: int, lot: int, volume: int) -> int:
    return notional * lot // volume if volume else 0


def _check_range(low: int | None, high: int | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise InvalidReportQuery(f"from_{what} {low} is after to_{what} {high}")


async def check_query(conn: asyncpg.Connection, query: ReportQuery) -> None:
    """Refuse a query that cannot be answered, before anything is streamed."""
    if isinstance(query, StatementQuery):
        _check_range(query.from_index, query.to_index, "index")
        _check_range(query.from_time_ms, query.to_time_ms, "time_ms")
        if not query.owner:
            raise InvalidReportQuery("a statement needs an account (owner)")
    elif isinstance(query, PayoutsQuery | FeesQuery):
        _check_range(query.from_time_ms, query.to_time_ms, "time_ms")
    elif isinstance(query, InstrumentQuery):
        await _instrument_terms(conn, query.instrument)


async def _instrument_terms(conn: asyncpg.Connection, symbol: str) -> tuple[int, str]:
    row = await conn.fetchrow(
        "SELECT lot_size, currency FROM market_instruments WHERE symbol = $1", symbol
    )
    if row is None:
        raise UnknownReportInstrument(f"unknown instrument {symbol[:100]!r}")
    return int(row["lot_size"]), str(row["currency"])


async def _ledger_size(conn: asyncpg.Connection) -> int:
    return _int(await conn.fetchval("SELECT max(idx) + 1 FROM ledger_transactions"))


async def _first_index_at(conn: asyncpg.Connection, time_ms: int, size: int) -> int:
    """The first index whose time is >= `time_ms`: a binary search by primary key (about
    log2(size) point reads, not a scan), sound because the sequencer's times never
    decrease along the ledger."""
    low, high = 0, size
    while low < high:
        mid = (low + high) // 2
        at = await conn.fetchval("SELECT time_ms FROM ledger_transactions WHERE idx = $1", mid)
        if at is not None and at >= time_ms:
            high = mid
        else:
            low = mid + 1
    return low


async def resolve_query(conn: asyncpg.Connection, query: ReportQuery) -> ReportQuery:
    """The query with its open ledger bounds made explicit (inside the snapshot)."""
    if isinstance(query, StatementQuery):
        size = await _ledger_size(conn)
        end = size if query.to_index is None else min(query.to_index, size)
        if query.to_time_ms is not None:
            end = min(end, await _first_index_at(conn, query.to_time_ms, size))
        start = query.from_index or 0
        if query.from_time_ms is not None:
            start = max(start, await _first_index_at(conn, query.from_time_ms, size))
        return msgspec.structs.replace(query, from_index=min(start, end), to_index=end)
    if isinstance(query, TrialBalanceQuery):
        size = await _ledger_size(conn)
        end = size if query.to_index is None else min(query.to_index, size)
        return msgspec.structs.replace(query, to_index=end)
    return query


# --------------------------------------------------------------------------- entry points


async def report_rows(conn: asyncpg.Connection, query: ReportQuery) -> AsyncIterator[ReportRow]:
    """The rows of a report (call inside a transaction: the cursor needs one)."""
    if isinstance(query, StatementQuery):
        async for s in _statement(conn, query):
            yield s
    elif isinstance(query, PayoutsQuery):
        async for p in _payouts(conn, query):
            yield p
    elif isinstance(query, InstrumentQuery):
        for i in await _instrument(conn, query):
            yield i
    elif isinstance(query, FeesQuery):
        async for f in _fees(conn, query):
            yield f
    else:
        async for t in _trial_balance(conn, query):
            yield t


async def report_chunks(
    conn: asyncpg.Connection, query: ReportQuery, fmt: ReportFormat
) -> AsyncIterator[bytes]:
    """The report's bytes in `fmt`, in chunks, read from one consistent snapshot."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await check_query(conn, query)
        query = await resolve_query(conn, query)
        writer = _CsvWriter(query) if fmt is ReportFormat.CSV else _JsonWriter(query)
        yield writer.head()
        batch: list[ReportRow] = []
        async for row in report_rows(conn, query):
            batch.append(row)
            if len(batch) >= CHUNK_ROWS:
                yield writer.rows(batch)
                batch.clear()
        if batch:
            yield writer.rows(batch)
        yield writer.tail()


class _CsvWriter:
    def __init__(self, query: ReportQuery) -> None:
        self.columns = report_columns(query)

    def _lines(self, rows: Iterable[Sequence[Any]]) -> bytes:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerows(rows)
        return out.getvalue().encode("utf-8")

    def head(self) -> bytes:
        return self._lines([self.columns])

    def rows(self, rows: Sequence[ReportRow]) -> bytes:
        # None -> empty cell (csv does this); ints -> digits; strs as they are.
        return self._lines([msgspec.structs.astuple(r) for r in rows])

    def tail(self) -> bytes:
        return b""


class _JsonWriter:
    def __init__(self, query: ReportQuery) -> None:
        self.query = query
        self.first = True
        self.encoder = msgspec.json.Encoder()

    def head(self) -> bytes:
        return b"".join(
            (
                b'{"report":',
                self.encoder.encode(report_name(self.query)),
                b',"query":',
                self.encoder.encode(self.query),
                b',"columns":',
                self.encoder.encode(list(report_columns(self.query))),
                b',"rows":[',
            )
        )

    def rows(self, rows: Sequence[ReportRow]) -> bytes:
        parts = []
        for row in rows:
            parts.append(b"\n" if self.first else b",\n")
            self.first = False
            parts.append(self.encoder.encode(row))
        return b"".join(parts)

    def tail(self) -> bytes:
        return b"]}\n" if self.first else b"\n]}\n"


# --------------------------------------------------------------------------- statement


async def _statement(
    conn: asyncpg.Connection, query: StatementQuery
) -> AsyncIterator[StatementRow]:
    start, end = query.from_index or 0, query.to_index or 0
    accounts = {
        r["id"]: (r["asset"], r["owner"], r["kind"])
        for r in await conn.fetch(
            """SELECT id, owner, asset, kind FROM ledger_accounts
                WHERE (owner = $1 OR split_part(owner, '@', 1) = $1
                       OR split_part(owner, '@', 2) = $1)
                  AND ($2::text IS NULL OR asset = $2)""",
            query.owner,
            query.asset,
        )
    }
    ids = list(accounts)
    # Every (account, bucket) with an entry before the end, with its balance at the start.
    balances: dict[tuple[int, int], int] = {
        (r["account_id"], r["bucket"]): _int(r["opening"])
        for r in await conn.fetch(
            """SELECT account_id, bucket, sum(amount) FILTER (WHERE tx_idx < $2) AS opening
                 FROM ledger_entries WHERE account_id = ANY($1::bigint[]) AND tx_idx < $3
                GROUP BY account_id, bucket""",
            ids,
            start,
            end,
        )
    }
    order = sorted(balances, key=lambda k: (*accounts[k[0]], k[1]))

    def fixed(section: Any, key: tuple[int, int]) -> StatementRow:
        asset, owner, kind = accounts[key[0]]
        return StatementRow(
            section=section, asset=asset, owner=owner, kind=kind, bucket=_BUCKETS[key[1]],
            tx_index=None, tx_id=None, code=None, time_ms=None, amount=None, balance=balances[key],
        )  # fmt: skip

    for key in order:
        yield fixed("opening", key)
    cursor = conn.cursor(
        """SELECT e.tx_idx, e.account_id, e.bucket, e.amount, t.tx_id, t.code, t.time_ms
             FROM ledger_entries e JOIN ledger_transactions t ON t.idx = e.tx_idx
            WHERE e.account_id = ANY($1::bigint[]) AND e.tx_idx >= $2 AND e.tx_idx < $3
            ORDER BY e.tx_idx, e.n""",
        ids,
        start,
        end,
        prefetch=PREFETCH,
    )
    async for r in cursor:
        key = (r["account_id"], r["bucket"])
        balances[key] += r["amount"]
        asset, owner, kind = accounts[key[0]]
        yield StatementRow(
            section="entry", asset=asset, owner=owner, kind=kind, bucket=_BUCKETS[key[1]],
            tx_index=r["tx_idx"], tx_id=r["tx_id"], code=r["code"], time_ms=r["time_ms"],
            amount=r["amount"], balance=balances[key],
        )  # fmt: skip
    for key in order:
        yield fixed("closing", key)


# --------------------------------------------------------------------------- payouts


async def _payouts(conn: asyncpg.Connection, query: PayoutsQuery) -> AsyncIterator[PayoutRow]:
    """A delivery moves escrow(b@p) to cash(p) and the provider fee to fees: `gross` is the
    escrow it released toward provider p, `fees` the fee revenue of the same transaction,
    `net` = gross - fees, what p's cash received (the transaction balances).

    Read from the escrow and fee accounts through the (account, index) index, never by
    scanning every entry. A delivery settles one pair; were there more in one
    transaction, its fee goes to the first provider in code point order.
    """
    period = PERIOD_MS[query.period]
    cursor = conn.cursor(
        """WITH esc AS (
               SELECT e.tx_idx, t.time_ms, split_part(a.owner, '@', 2) AS provider,
                      a.asset AS currency, sum(-e.amount) AS released
                 FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
                 JOIN ledger_transactions t ON t.idx = e.tx_idx
                WHERE a.kind LIKE 'escrow:%' AND e.amount < 0 AND t.code = ANY($1::text[])
                  AND ($2::bigint IS NULL OR t.time_ms >= $2)
                  AND ($3::bigint IS NULL OR t.time_ms < $3)
                  AND ($5::text IS NULL OR split_part(a.owner, '@', 2) = $5)
                GROUP BY e.tx_idx, t.time_ms, provider, currency),
           fee AS (
               SELECT e.tx_idx, a.asset AS currency, sum(e.amount) AS fee
                 FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
                WHERE a.owner = $6 AND a.kind = 'fees'
                  AND e.tx_idx IN (SELECT tx_idx FROM esc)
                GROUP BY e.tx_idx, a.asset),
           x AS (
               SELECT esc.*, CASE WHEN row_number() OVER (
                                     PARTITION BY esc.tx_idx, esc.currency
                                     ORDER BY esc.provider COLLATE "C") = 1
                                  THEN coalesce(fee.fee, 0) ELSE 0 END AS fee
                 FROM esc LEFT JOIN fee USING (tx_idx, currency))
           SELECT time_ms / $4 * $4 AS period, provider, currency,
                  count(DISTINCT tx_idx) AS n, sum(released) AS gross, sum(fee) AS fees
             FROM x
            GROUP BY period, provider, currency
            ORDER BY period, provider COLLATE "C", currency COLLATE "C" """,
        list(DELIVERY_CODES),
        query.from_time_ms,
        query.to_time_ms,
        period,
        query.provider,
        EXCHANGE,
        prefetch=PREFETCH,
    )
    async for r in cursor:
        gross, fees = _int(r["gross"]), _int(r["fees"])
        yield PayoutRow(
            period_start_ms=r["period"], provider=r["provider"], currency=r["currency"],
            transactions=r["n"], gross=gross, fees=fees, net=gross - fees,
        )  # fmt: skip


# --------------------------------------------------------------------------- instrument


@dataclass(slots=True)
class _Pair:
    fills: int = 0
    volume: int = 0
    notional: int = 0
    buyer_fees: int = 0
    delivered: int = 0
    undelivered: int = 0
    paid: int = 0
    provider_fees: int = 0
    refunded: int = 0
    escrow: int = 0

    def add(self, other: _Pair) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def row(
        self, scope: Any, symbol: str, provider: str | None, buyer: str | None, lot: int
    ) -> InstrumentRow:
        return InstrumentRow(
            scope=scope, instrument=symbol, provider=provider, buyer=buyer, fills=self.fills,
            volume=self.volume, notional=self.notional,
            vwap=_vwap(self.notional, lot, self.volume), buyer_fees=self.buyer_fees,
            delivered=self.delivered, undelivered=self.undelivered, paid=self.paid,
            provider_fees=self.provider_fees, refunded=self.refunded, escrow=self.escrow,
        )  # fmt: skip


def _pair_key(owner: str) -> tuple[str, str]:
    """The report's key, (provider, buyer), of an escrow or entitlement owner `buyer@provider`."""
    buyer, provider = parse_pair(owner)
    return provider, buyer


async def _instrument(conn: asyncpg.Connection, query: InstrumentQuery) -> list[InstrumentRow]:
    """One row per (provider, buyer) pair; small (the pairs of one instrument), so built
    in memory and sorted."""
    symbol = query.instrument
    lot, currency = await _instrument_terms(conn, symbol)
    pairs: defaultdict[tuple[str, str], _Pair] = defaultdict(_Pair)
    await _add_fills(conn, pairs, symbol, lot)
    await _add_deliveries_and_refunds(conn, pairs, symbol, currency)
    await _add_provider_fees(conn, pairs, symbol, currency)
    keys = sorted(k for k in pairs if query.party is None or query.party in k)
    total = _Pair()
    for key in keys:
        total.add(pairs[key])
    rows = [total.row("total", symbol, None, None, lot)]
    rows.extend(pairs[k].row("pair", symbol, k[0], k[1], lot) for k in keys)
    return rows


async def _add_fills(
    conn: asyncpg.Connection, pairs: defaultdict[tuple[str, str], _Pair], symbol: str, lot: int
) -> None:
    for r in await conn.fetch(
        """SELECT CASE WHEN aggressor_side = 'buy' THEN maker_account ELSE taker_account END
                      AS provider,
                  CASE WHEN aggressor_side = 'buy' THEN taker_account ELSE maker_account END
                      AS buyer,
                  count(*) AS fills, sum(quantity) AS volume,
                  sum(quantity / $2 * price) AS notional, sum(buyer_fee) AS buyer_fees
             FROM market_fills WHERE instrument = $1 GROUP BY 1, 2""",
        symbol,
        lot,
    ):
        p = pairs[(r["provider"], r["buyer"])]
        p.fills, p.volume = r["fills"], _int(r["volume"])
        p.notional, p.buyer_fees = _int(r["notional"]), _int(r["buyer_fees"])


async def _add_deliveries_and_refunds(
    conn: asyncpg.Connection,
    pairs: defaultdict[tuple[str, str], _Pair],
    symbol: str,
    currency: str,
) -> None:
    """Tokens delivered or burned undelivered, escrow paid out, refunded or still held."""
    for r in await conn.fetch(
        # Per transaction and account first: a hold moves value between an account's own
        # buckets (a pending delivery report's), which is not a debit; its post is.
        """WITH per_tx AS (
               SELECT a.owner, a.kind = 'entitlement' AS tokens,
                      t.code = ANY($4::text[]) AS delivery, sum(e.amount) AS net
                 FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
                 JOIN ledger_transactions t ON t.idx = e.tx_idx
                WHERE (a.asset = $1 AND a.kind = 'entitlement') OR (a.asset = $2 AND a.kind = $3)
                GROUP BY e.tx_idx, a.id, a.owner, a.kind, t.code)
           SELECT owner, tokens, delivery, sum(-net) FILTER (WHERE net < 0) AS debit,
                  sum(net) AS net
             FROM per_tx GROUP BY 1, 2, 3""",
        token_asset(symbol),
        currency,
        f"escrow:{symbol}",
        list(DELIVERY_CODES),
    ):
        p = pairs[_pair_key(r["owner"])]
        debit = _int(r["debit"])
        if r["tokens"]:
            if r["delivery"]:
                p.delivered += debit
            else:
                p.undelivered += debit
        else:
            p.escrow += _int(r["net"])
            if r["delivery"]:
                p.paid += debit
            else:
                p.refunded += debit


async def _add_provider_fees(
    conn: asyncpg.Connection,
    pairs: defaultdict[tuple[str, str], _Pair],
    symbol: str,
    currency: str,
) -> None:
    """The fee revenue of each delivery transaction, given to the pair whose escrow it
    released (a delivery settles one buyer, provider and instrument; were there more, the
    first pair in code point order takes the fee)."""
    for r in await conn.fetch(
        """WITH d AS (
               SELECT DISTINCT ON (e.tx_idx) e.tx_idx, a.owner
                 FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
                 JOIN ledger_transactions t ON t.idx = e.tx_idx
                WHERE a.asset = $1 AND a.kind = $2 AND e.amount < 0 AND t.code = ANY($3::text[])
                ORDER BY e.tx_idx, a.owner COLLATE "C")
           SELECT d.owner, sum(e.amount) AS fees
             FROM d JOIN ledger_entries e ON e.tx_idx = d.tx_idx
             JOIN ledger_accounts a ON a.id = e.account_id
            WHERE a.owner = $4 AND a.kind = 'fees' AND a.asset = $1
            GROUP BY d.owner""",
        currency,
        f"escrow:{symbol}",
        list(DELIVERY_CODES),
        EXCHANGE,
    ):
        pairs[_pair_key(r["owner"])].provider_fees += _int(r["fees"])


# --------------------------------------------------------------------------- fees


async def _fees(conn: asyncpg.Connection, query: FeesQuery) -> AsyncIterator[FeeRow]:
    period = PERIOD_MS[query.period]
    cursor = conn.cursor(
        """SELECT t.time_ms / $1 * $1 AS period, a.asset, t.code,
                  count(DISTINCT t.idx) AS n, sum(e.amount) AS amount
             FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
             JOIN ledger_transactions t ON t.idx = e.tx_idx
            WHERE a.owner = $2 AND a.kind = 'fees'
              AND ($3::bigint IS NULL OR t.time_ms >= $3)
              AND ($4::bigint IS NULL OR t.time_ms < $4)
            GROUP BY 1, 2, 3
            ORDER BY 1, a.asset COLLATE "C", t.code COLLATE "C" """,
        period,
        EXCHANGE,
        query.from_time_ms,
        query.to_time_ms,
        prefetch=PREFETCH,
    )
    async for r in cursor:
        yield FeeRow(
            period_start_ms=r["period"], currency=r["asset"], code=r["code"],
            transactions=r["n"], amount=_int(r["amount"]),
        )  # fmt: skip


# --------------------------------------------------------------------------- trial balance


async def _trial_balance(
    conn: asyncpg.Connection, query: TrialBalanceQuery
) -> AsyncIterator[TrialBalanceRow]:
    cursor = conn.cursor(
        """SELECT a.asset, a.owner, a.kind,
                  sum(e.amount) FILTER (WHERE e.bucket = 0) AS available,
                  sum(e.amount) FILTER (WHERE e.bucket = 1) AS held
             FROM ledger_accounts a JOIN ledger_entries e ON e.account_id = a.id
            WHERE e.tx_idx < $1
            GROUP BY a.id, a.asset, a.owner, a.kind
            ORDER BY a.asset COLLATE "C", a.owner COLLATE "C", a.kind COLLATE "C" """,
        query.to_index,
        prefetch=PREFETCH,
    )
    asset: str | None = None
    sums = [0, 0]

    def total_row() -> TrialBalanceRow:
        assert asset is not None
        return TrialBalanceRow(
            row="asset_total", asset=asset, owner=None, kind=None,
            available=sums[0], held=sums[1], total=sums[0] + sums[1],
        )  # fmt: skip

    async for r in cursor:
        if r["asset"] != asset:
            if asset is not None:
                yield total_row()
            asset, sums = r["asset"], [0, 0]
        available, held = _int(r["available"]), _int(r["held"])
        sums[0] += available
        sums[1] += held
        yield TrialBalanceRow(
            row="account", asset=r["asset"], owner=r["owner"], kind=r["kind"],
            available=available, held=held, total=available + held,
        )  # fmt: skip
    if asset is not None:
        yield total_row()
