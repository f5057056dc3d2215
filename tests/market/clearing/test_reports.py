"""Settlement reports on a real PostgreSQL with real trades, deliveries and a window close
(see `reports_support`): every report reconciles with the ledger, reruns are
byte-identical, and over HTTP each account sees only what it may."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from ledger.store import recomputed_balances
from market.auth import sign_request
from market.clearing.reports import (
    InvalidReportQuery,
    UnknownReportInstrument,
    parse_time,
    report_chunks,
    report_rows,
    resolve_query,
)
from ops.app import create_app
from ops.config import Settings
from schemas.ledger import Account
from schemas.reports import (
    FeesQuery,
    InstrumentQuery,
    InstrumentRow,
    PayoutRow,
    PayoutsQuery,
    Period,
    ReportFormat,
    ReportQuery,
    ReportRow,
    StatementQuery,
    StatementRow,
    TrialBalanceQuery,
    TrialBalanceRow,
)
from tests.market.clearing.reports_support import DAY, HOUR, SYM, T0, Activity, Key, build_activity
from tests.support.pg import PgServer


@pytest.fixture(scope="module")
async def market(pg: PgServer, pg_template: str) -> AsyncIterator[tuple[str, Activity]]:
    """One database with the activity, shared by the module: reports only read."""
    async with pg.fresh_database(pg_template) as url:
        yield url, await build_activity(url)


@pytest.fixture
async def conn(market: tuple[str, Activity]) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(market[0])
    try:
        yield c
    finally:
        await c.close()


async def rows(conn: asyncpg.Connection, query: ReportQuery) -> list[Any]:
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        resolved = await resolve_query(conn, query)
        return [r async for r in report_rows(conn, resolved)]


async def render(conn: asyncpg.Connection, query: ReportQuery, fmt: ReportFormat) -> bytes:
    return b"".join([chunk async for chunk in report_chunks(conn, query, fmt)])


# --------------------------------------------------------------------------- pure parts


def test_time_bounds_are_unix_ms_or_iso_utc() -> None:
    assert parse_time("2027-01-15T08:00:00.000Z") == T0
    assert parse_time("2027-01-15T09:00:00+01:00") == T0
    assert parse_time("2027-01-15T08:00") == T0  # naive means UTC
    assert parse_time("2027-01-15") == T0 - 8 * HOUR
    assert parse_time(str(T0)) == T0
    with pytest.raises(InvalidReportQuery):
        parse_time("yesterday")


def test_a_time_bound_beyond_the_databases_bigint_is_refused() -> None:
    """Found in review: 19 digits were taken unchecked; the report then answered 200 and
    was cut mid-body (and the CLI died with a traceback) when the database refused it."""
    assert parse_time(str(2**62)) == 2**62
    for text in ("9999999999999999999", str(2**62 + 1)):
        with pytest.raises(InvalidReportQuery):
            parse_time(text)


# --------------------------------------------------------------------------- statement


def _closing(statement: list[StatementRow]) -> dict[tuple[Account, int], int]:
    return {
        (Account(r.owner, r.asset, r.kind), 0 if r.bucket == "available" else 1): r.balance
        for r in statement
        if r.section == "closing"
    }


async def test_statement_closing_balance_is_the_ledger_balance(
    market: tuple[str, Activity], conn: asyncpg.Connection
) -> None:
    _, a = market
    ledger = await recomputed_balances(conn)
    for name in ("b1", "b2", "p1", "p2"):
        owner = a.id(name)
        statement = await rows(conn, StatementQuery(owner=owner))
        closing = _closing(statement)
        # every account the owner holds or is a party to, at its ledger balance
        expected = {
            (acc, bucket): balance[bucket]
            for acc, balance in ledger.items()
            if owner in (acc.owner, *acc.owner.split("@"))
            for bucket in (0, 1)
            if (acc, bucket) in closing or balance[bucket]
        }
        assert closing == expected, name
        # opening + entries = closing, and each entry's running balance follows
        running = {
            (Account(r.owner, r.asset, r.kind), r.bucket): r.balance
            for r in statement
            if r.section == "opening"
        }
        assert set(running.values()) == {0}  # from the start of the ledger
        for r in statement:
            if r.section == "entry":
                key = (Account(r.owner, r.asset, r.kind), r.bucket)
                assert r.amount is not None and r.time_ms is not None and r.time_ms >= T0
                running[key] += r.amount
                assert r.balance == running[key]
        assert {(k[0], 0 if k[1] == "available" else 1): v for k, v in running.items()} == closing
    # b1's cash: deposit, holds, fills, and the refund of the window close
    b1 = await rows(conn, StatementQuery(owner=a.id("b1"), asset="USD"))
    assert {r.asset for r in b1} == {"USD"}
    codes = [r.code for r in b1 if r.section == "entry" and r.kind == "cash"]
    assert codes[0] == "deposit" and codes[-1] == "close_refund"
    # held: m1's open 5,000 at 4,800 (24,000) and the larger fee on it (48), no more
    assert ledger[Account(a.id("b1"), "USD", "cash")] == (876_728, 24_048)


async def test_statement_ranges_chain_opening_to_closing(
    market: tuple[str, Activity], conn: asyncpg.Connection
) -> None:
    _, a = market
    owner = a.id("p1")
    whole = await rows(conn, StatementQuery(owner=owner))
    size = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
    for cut in (0, 3, 9, size):
        first = await rows(conn, StatementQuery(owner=owner, to_index=cut))
        second = await rows(conn, StatementQuery(owner=owner, from_index=cut))
        opening = {
            (r.asset, r.owner, r.kind, r.bucket): r.balance
            for r in second
            if r.section == "opening"
        }
        closing = {
            (r.asset, r.owner, r.kind, r.bucket): r.balance for r in first if r.section == "closing"
        }
        assert {k: v for k, v in opening.items() if k in closing} == closing
        entries = [r for r in first + second if r.section == "entry"]
        assert entries == [r for r in whole if r.section == "entry"]
    # a time range: only the delivery of day 1 (an hour after T0) touches p1's accounts
    paid = await rows(
        conn, StatementQuery(owner=owner, from_time_ms=T0 + HOUR, to_time_ms=T0 + DAY)
    )
    assert [(r.code, r.kind, r.amount) for r in paid if r.section == "entry"] == [
        ("delivery", "entitlement", -15_000),
        ("delivery", f"escrow:{SYM}", -75_000),
        ("delivery", "cash", 74_250),
    ]


# --------------------------------------------------------------------------- trial balance


async def test_trial_balance_covers_every_account_and_each_asset_sums_to_zero(
    conn: asyncpg.Connection,
) -> None:
    report: list[TrialBalanceRow] = await rows(conn, TrialBalanceQuery())
    ledger = await recomputed_balances(conn)
    accounts = {
        Account(r.owner, r.asset, r.kind): (r.available, r.held)
        for r in report
        if r.row == "account" and r.owner is not None and r.kind is not None
    }
    assert accounts == ledger
    assert await conn.fetchval("SELECT count(*) FROM ledger_accounts") == len(accounts)
    totals = [r for r in report if r.row == "asset_total"]
    assert {r.asset for r in totals} == {"USD", f"tok:{SYM}"}
    for total in totals:
        assert total.total == 0
        assert total.available == sum(v[0] for k, v in ledger.items() if k.asset == total.asset)
    # as of an earlier index: still zero per asset, and the balances of that moment
    early: list[TrialBalanceRow] = await rows(conn, TrialBalanceQuery(to_index=4))
    assert all(r.total == 0 for r in early if r.row == "asset_total")
    assert sum(r.total for r in early if r.kind == "bank") == -2_000_000


# --------------------------------------------------------------------------- instrument


async def test_instrument_volume_is_the_sum_of_fills_and_vwap_is_exact(
    market: tuple[str, Activity], conn: asyncpg.Connection
) -> None:
    _, a = market
    report: list[InstrumentRow] = await rows(conn, InstrumentQuery(instrument=SYM))
    total, pairs = report[0], report[1:]
    fills = await conn.fetch("SELECT price, quantity, buyer_fee FROM market_fills")
    assert total.scope == "total" and total.fills == len(fills) == 4
    assert total.volume == sum(f["quantity"] for f in fills) == 55_000
    assert total.notional == sum(f["quantity"] // 1000 * f["price"] for f in fills) == 284_000
    # 20 lots at 5,000 + 10 at 5,000 + 20 at 5,500 + 5 at 4,800 = 284,000 over 55 lots
    assert total.vwap == 284_000 // 55 == 5_163
    assert total.buyer_fees == sum(f["buyer_fee"] for f in fills) == 544
    assert (total.delivered, total.undelivered) == (35_000, 5_000)
    assert (total.paid, total.provider_fees, total.refunded) == (185_000, 1_850, 25_000)
    # what was paid for is paid out, refunded, or still in escrow: to the unit
    ledger = await recomputed_balances(conn)
    escrow = sum(sum(v) for k, v in ledger.items() if k.kind == f"escrow:{SYM}")
    assert total.escrow == escrow == total.notional - total.paid - total.refunded == 74_000
    fee_account = sum(ledger[Account("exchange", "USD", "fees")])
    assert total.buyer_fees + total.provider_fees == fee_account
    by_pair = {(r.provider, r.buyer): r for r in pairs}
    assert list(by_pair) == sorted(by_pair)
    b1p1 = by_pair[(a.id("p1"), a.id("b1"))]
    assert (b1p1.volume, b1p1.vwap, b1p1.delivered, b1p1.undelivered) == (
        20_000,
        5_000,
        15_000,
        5_000,
    )
    assert (b1p1.paid, b1p1.provider_fees, b1p1.refunded, b1p1.escrow) == (75_000, 750, 25_000, 0)
    b1p2 = by_pair[(a.id("p2"), a.id("b1"))]
    assert (b1p2.volume, b1p2.vwap, b1p2.buyer_fees, b1p2.escrow) == (5_000, 4_800, 24, 24_000)
    for field in ("fills", "volume", "notional", "buyer_fees", "paid", "refunded", "escrow"):
        assert getattr(total, field) == sum(getattr(r, field) for r in pairs), field
    # restricted to a party: only its pairs, and a total of those
    mine: list[InstrumentRow] = await rows(conn, InstrumentQuery(instrument=SYM, party=a.id("b1")))
    assert {r.buyer for r in mine[1:]} == {a.id("b1")}
    assert mine[0].volume == 25_000 and mine[0].vwap == (100_000 + 24_000) // 25


async def test_unknown_instrument_and_bad_ranges_are_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(UnknownReportInstrument):
        await render(conn, InstrumentQuery(instrument="nope/2027-01-01T00Z/1h"), ReportFormat.CSV)
    with pytest.raises(InvalidReportQuery):
        await render(conn, StatementQuery(owner="x", from_index=5, to_index=2), ReportFormat.CSV)


# --------------------------------------------------------------------------- payouts, fees


async def test_payouts_per_period_are_the_deliveries(
    market: tuple[str, Activity], conn: asyncpg.Connection
) -> None:
    _, a = market
    report: list[PayoutRow] = await rows(conn, PayoutsQuery())
    assert [(r.period_start_ms, r.provider, r.gross, r.fees, r.net) for r in report] == [
        (parse_time("2027-01-15"), a.id("p1"), 75_000, 750, 74_250),
        (parse_time("2027-01-16"), a.id("p2"), 110_000, 1_100, 108_900),
    ]
    hourly: list[PayoutRow] = await rows(
        conn, PayoutsQuery(period=Period.HOUR, provider=a.id("p1"))
    )
    assert [(r.period_start_ms, r.transactions, r.net) for r in hourly] == [
        (parse_time("2027-01-15T09:00Z"), 1, 74_250)
    ]
    # net payouts are exactly what delivery transactions credited to provider cash
    credited = await conn.fetchval(
        """SELECT sum(e.amount) FROM ledger_entries e
             JOIN ledger_accounts a ON a.id = e.account_id
             JOIN ledger_transactions t ON t.idx = e.tx_idx
            WHERE t.code = 'delivery' AND a.kind = 'cash'"""
    )
    assert sum(r.net for r in report) == credited
    assert await rows(conn, PayoutsQuery(from_time_ms=T0 + 2 * DAY)) == []


async def test_fee_revenue_per_period_and_code_sums_to_the_fees_account(
    conn: asyncpg.Connection,
) -> None:
    report = await rows(conn, FeesQuery())
    assert [(r.period_start_ms, r.code, r.transactions, r.amount) for r in report] == [
        (parse_time("2027-01-15"), "delivery", 1, 750),
        (parse_time("2027-01-15"), "fill", 4, 544),
        (parse_time("2027-01-16"), "delivery", 1, 1_100),
    ]
    ledger = await recomputed_balances(conn)
    assert sum(r.amount for r in report) == sum(ledger[Account("exchange", "USD", "fees")])


# --------------------------------------------------------------------------- formats


def queries(a: Activity) -> list[ReportQuery]:
    return [
        StatementQuery(owner=a.id("b1")),
        PayoutsQuery(period=Period.HOUR),
        InstrumentQuery(instrument=SYM),
        FeesQuery(),
        TrialBalanceQuery(),
    ]


async def test_json_and_csv_are_byte_identical_on_rerun_and_agree(
    market: tuple[str, Activity], conn: asyncpg.Connection
) -> None:
    _, a = market
    for query in queries(a):
        typed: list[ReportRow] = await rows(conn, query)
        csv_bytes = await render(conn, query, ReportFormat.CSV)
        json_bytes = await render(conn, query, ReportFormat.JSON)
        assert csv_bytes == await render(conn, query, ReportFormat.CSV)
        assert json_bytes == await render(conn, query, ReportFormat.JSON)
        # CSV: header of the fixed columns, then the rows, plain digits, empty for None
        table = list(csv.reader(io.StringIO(csv_bytes.decode())))
        columns = list(type(typed[0]).__struct_fields__)
        assert table[0] == columns
        assert table[1:] == [
            ["" if v is None else str(v) for v in msgspec.structs.astuple(r)] for r in typed
        ]
        assert csv_bytes.endswith(b"\n") and b"\r" not in csv_bytes
        # JSON: one document with the same rows, one per line
        doc = json.loads(json_bytes)
        assert doc["columns"] == columns
        assert doc["rows"] == [msgspec.to_builtins(r) for r in typed]
        assert json_bytes.count(b"\n") == len(typed) + 2
        for row in doc["rows"]:
            for key in ("time_ms", "period_start_ms"):
                if row.get(key) is not None:
                    assert type(row[key]) is int  # Unix ms, as everywhere on the wire
    statement = json.loads(await render(conn, queries(a)[0], ReportFormat.JSON))
    size = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
    assert (statement["query"]["from_index"], statement["query"]["to_index"]) == (0, size)


async def test_an_empty_ledger_has_empty_reports(db_url: str) -> None:
    c = await asyncpg.connect(db_url)
    try:
        assert await render(c, TrialBalanceQuery(), ReportFormat.CSV) == (
            b"row,asset,owner,kind,available,held,total\n"
        )
        doc = json.loads(await render(c, StatementQuery(owner="nobody"), ReportFormat.JSON))
        assert doc["rows"] == [] and doc["query"]["to_index"] == 0
    finally:
        await c.close()


# --------------------------------------------------------------------------- HTTP


class Signed:
    """Signs each request as one account (strictly increasing timestamps: no replays)."""

    def __init__(self, client: AsyncTestClient[Litestar], key: Key) -> None:
        self.client, self.key, self.last = client, key, 0

    async def get(self, target: str) -> Any:
        from market.auth import now_ms

        self.last = max(now_ms(), self.last + 1)
        headers = sign_request(self.key.private_key, self.key.key_id, "GET", target, b"", self.last)
        return await self.client.get(target, headers=headers)


@pytest.fixture
async def http(market: tuple[str, Activity]) -> AsyncIterator[dict[str, Signed]]:
    url, a = market
    app = create_app(Settings(database_url=url))
    async with AsyncTestClient(app) as client:
        yield {name: Signed(client, key) for name, key in a.keys.items()}


async def test_routes_stream_the_same_bytes_and_enforce_who_sees_what(
    market: tuple[str, Activity], conn: asyncpg.Connection, http: dict[str, Signed]
) -> None:
    _, a = market
    b1, b2, p1 = a.id("b1"), a.id("b2"), a.id("p1")
    # a buyer's own statement, with or without naming itself, is the report's bytes
    own = await http["b1"].get("/v1/reports/statement?format=csv")
    assert own.status_code == 200 and own.headers["content-type"] == "text/csv; charset=utf-8"
    expected = await render(conn, StatementQuery(owner=b1), ReportFormat.CSV)
    assert own.content == expected
    assert (await http["b1"].get(f"/v1/reports/statement?account={b1}&format=csv")).content == (
        expected
    )
    # ... and nobody else's
    other = await http["b1"].get(f"/v1/reports/statement?account={b2}")
    assert (other.status_code, other.json()["code"]) == (403, "report_forbidden")
    for path in ("/v1/reports/trial-balance", "/v1/reports/fees"):
        for who in ("b1", "p1"):
            refused = await http[who].get(path)
            assert (refused.status_code, refused.json()["code"]) == (403, "report_forbidden")
    assert (await http["p1"].get(f"/v1/reports/payouts?provider={a.id('p2')}")).status_code == 403
    mine = await http["p1"].get("/v1/reports/payouts")
    assert mine.status_code == 200
    assert {r["provider"] for r in mine.json()["rows"]} == {p1}
    # operators and auditors see everything, as the report builder renders it
    for who in ("operator", "auditor"):
        tb = await http[who].get("/v1/reports/trial-balance")
        assert tb.status_code == 200 and tb.headers["content-type"] == "application/json"
        assert tb.content == await render(conn, TrialBalanceQuery(), ReportFormat.JSON)
        st = await http[who].get(f"/v1/reports/statement?account={b2}&to_index=10&format=csv")
        assert st.content == await render(
            conn, StatementQuery(owner=b2, to_index=10), ReportFormat.CSV
        )
    fees = await http["auditor"].get(f"/v1/reports/fees?period=hour&from_time_ms={T0}&format=csv")
    assert fees.content == await render(
        conn, FeesQuery(period=Period.HOUR, from_time_ms=T0), ReportFormat.CSV
    )
    # the instrument, by path or by query; a buyer sees only its own pairs
    by_path = await http["operator"].get(f"/v1/reports/instruments/{SYM}?format=csv")
    by_query = await http["operator"].get(f"/v1/reports/instrument?instrument={SYM}&format=csv")
    assert by_path.status_code == 200 and by_path.content == by_query.content
    assert by_path.content == await render(conn, InstrumentQuery(instrument=SYM), ReportFormat.CSV)
    seen = (await http["b1"].get(f"/v1/reports/instruments/{SYM}")).json()["rows"]
    assert {r["buyer"] for r in seen if r["scope"] == "pair"} == {b1}
    missing = await http["operator"].get("/v1/reports/instruments/nope/2027-01-01T00Z/1h")
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_instrument")
    bad = await http["operator"].get("/v1/reports/statement?account=x&from_time=soon")
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_report_query")
    # the deprecated names still work for a version (Unix ms or ISO-8601), not with the new
    old = await http["auditor"].get(f"/v1/reports/fees?period=hour&from_time={T0}&format=csv")
    assert old.content == fees.content
    both = await http["operator"].get(f"/v1/reports/fees?from_time={T0}&from_time_ms={T0}")
    assert (both.status_code, both.json()["code"]) == (400, "invalid_report_query")
    iso = await http["operator"].get("/v1/reports/fees?from_time_ms=2027-01-15")
    assert (iso.status_code, iso.json()["code"]) == (400, "invalid_request")


async def test_reports_need_a_signed_request(http: dict[str, Signed]) -> None:
    response = await http["b1"].client.get("/v1/reports/statement")
    assert response.status_code == 401


async def test_output_does_not_depend_on_chunking(
    market: tuple[str, Activity], conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed in many small chunks (as a large range is), the bytes are the same."""
    from market.clearing import reports

    _, a = market
    whole = {(q, f): await render(conn, q, f) for q in queries(a) for f in ReportFormat}
    monkeypatch.setattr(reports, "CHUNK_ROWS", 2)
    monkeypatch.setattr(reports, "PREFETCH", 3)
    for (query, fmt), expected in whole.items():
        chunks = [chunk async for chunk in report_chunks(conn, query, fmt)]
        assert b"".join(chunks) == expected
    statement = [c async for c in report_chunks(conn, queries(a)[0], ReportFormat.CSV)]
    assert len(statement) > 5


async def test_reports_follow_the_sequencers_own_deliveries_close_and_withdrawals(
    db_url: str,
) -> None:
    """Driven by entries and codes, the reports pick up what the sequencer writes for
    deliveries (`delivery`), the window close and withdrawals, with no change."""
    from market.sequencer import (
        CloseInstrumentOp,
        DeliveryOp,
        PlaceOp,
        Sequencer,
        TickOp,
        WithdrawalOutcomeOp,
        WithdrawOp,
    )
    from schemas.market import Side
    from schemas.trading import DeliveryReport, PlaceOrder, WithdrawalRequest
    from tests.market.clearing.reports_support import Clock, setup_market

    clock = Clock()
    seq = await Sequencer.open(db_url, clock=clock)
    try:
        await setup_market(seq, "b", "p")
        for coid, owner, side, qty in (("s", "p", Side.SELL, 30_000), ("t", "b", Side.BUY, 20_000)):
            order = PlaceOrder(
                client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=5_000
            )
            await seq.submit(PlaceOp(owner, order))
        clock.now += HOUR
        await seq.submit(
            DeliveryOp("p", DeliveryReport(report_id="r", instrument=SYM, buyer="b", tokens=5_000))
        )
        # the report was pending (held) for the instrument's dispute period, 0 s here (its
        # delivery grace): the next batch settles it, and then the window can be closed
        await seq.submit(TickOp())
        await seq.submit(CloseInstrumentOp(SYM))
        await seq.submit(WithdrawOp("p", WithdrawalRequest(withdrawal_id="w", amount=10_000)))
        await seq.submit(WithdrawalOutcomeOp("p", "w", paid=True))
    finally:
        await seq.close()
    c = await asyncpg.connect(db_url)
    try:
        ledger = await recomputed_balances(c)
        codes = {r["code"] for r in await c.fetch("SELECT DISTINCT code FROM ledger_transactions")}
        assert {"delivery_report", "delivery", "withdrawal", "withdrawal_paid"} <= codes
        [total, pair] = await rows(c, InstrumentQuery(instrument=SYM))
        assert total == msgspec.structs.replace(pair, scope="total", provider=None, buyer=None)
        assert (total.volume, total.notional, total.delivered) == (20_000, 100_000, 5_000)
        assert total.delivered + total.undelivered == total.volume
        assert total.paid + total.refunded == total.notional and total.escrow == 0
        [payout] = await rows(c, PayoutsQuery())
        assert (payout.gross, payout.fees, payout.net) == (25_000, 250, 24_750)
        statement = await rows(c, StatementQuery(owner="p", asset="USD"))
        closing = _closing(statement)
        assert closing[(Account("p", "USD", "cash"), 0)] == ledger[Account("p", "USD", "cash")][0]
        assert [r.code for r in statement if r.section == "entry"][-2:] == [
            "withdrawal",
            "withdrawal_paid",
        ]
        report: list[TrialBalanceRow] = await rows(c, TrialBalanceQuery())
        assert all(r.total == 0 for r in report if r.row == "asset_total")
        assert {(r.owner, r.asset, r.kind) for r in report if r.row == "account"} == {
            (k.owner, k.asset, k.kind) for k in ledger
        }
    finally:
        await c.close()
