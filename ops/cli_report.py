"""`tokex report ...`: settlement reports straight from the database, as JSON, CSV or text.

    tokex report statement --account ID [--asset A] [--from-index N] [--to-index M]
                           [--from-time T] [--to-time T]
    tokex report payouts [--provider ID] [--period day|hour] [--from-time T] [--to-time T]
    tokex report instrument SYMBOL
    tokex report fees [--period day|hour] [--from-time T] [--to-time T]
    tokex report trial-balance [--to-index M]

Each takes `--format json|csv|text` (default json; text: aligned columns for people, money
as `$21,098.75` in the scale of `TOKEX_CURRENCY_SCALE`, default the currency's usual one),
`--out FILE` (default stdout) and `--data-dir`, and honours DATABASE_URL. Times are Unix
milliseconds or ISO-8601 (UTC). The JSON and CSV bytes are those of the `/v1/reports/...`
route for the same query (both call
`market.clearing.reports.report_chunks`); the CLI reads everything, like an operator. With
`--out`, the file appears only once complete.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from market.clearing.report_text import render_report
from market.clearing.reports import parse_time, report_chunks
from market.money import Currency
from ops.cli import (
    add_database_options,
    index_arg,
    open_output,
    replace_output,
    settings_from_args,
)
from ops.database import connect, database_url
from schemas.reports import (
    FeesQuery,
    InstrumentQuery,
    PayoutsQuery,
    Period,
    ReportFormat,
    ReportQuery,
    StatementQuery,
    TrialBalanceQuery,
)


def _time(text: str | None) -> int | None:
    return None if text is None else parse_time(text)


def query_from_args(args: argparse.Namespace) -> ReportQuery:
    """The report query a parsed `tokex report ...` command asks for."""
    kind = args.report_command
    if kind == "statement":
        return StatementQuery(
            owner=args.account, asset=args.asset, from_index=args.from_index,
            to_index=args.to_index, from_time_ms=_time(args.from_time),
            to_time_ms=_time(args.to_time),
        )  # fmt: skip
    if kind == "payouts":
        return PayoutsQuery(
            provider=args.provider, period=Period(args.period),
            from_time_ms=_time(args.from_time), to_time_ms=_time(args.to_time),
        )  # fmt: skip
    if kind == "instrument":
        return InstrumentQuery(instrument=args.symbol)
    if kind == "fees":
        return FeesQuery(
            period=Period(args.period),
            from_time_ms=_time(args.from_time),
            to_time_ms=_time(args.to_time),
        )
    return TrialBalanceQuery(to_index=args.to_index)


async def write_report(url: str, query: ReportQuery, fmt: ReportFormat, out: BinaryIO) -> None:
    conn = await connect(url)  # no database: one line (`DatabaseUnreachable`), no traceback
    try:
        async for chunk in report_chunks(conn, query, fmt):
            out.write(chunk)
    finally:
        await conn.close()


def _text(url: str, query: ReportQuery, money: Currency) -> str:
    """The report as text for people (`market.clearing.report_text`), amounts in `money`."""
    doc = io.BytesIO()
    asyncio.run(write_report(url, query, ReportFormat.JSON, doc))
    return render_report(msgspec.json.decode(doc.getvalue()), money) + "\n"


def _run(args: argparse.Namespace) -> int:
    query = query_from_args(args)  # parse times before starting a database
    settings = settings_from_args(args)
    url = database_url(settings)
    if args.format == TEXT:
        text = _text(url, query, settings.money)
        if args.out is None:
            sys.stdout.write(text)
        else:
            with open_output(Path(args.out)) as f:
                f.write(text.encode("utf-8"))
        return 0
    fmt = ReportFormat(args.format)
    if args.out is None:
        asyncio.run(write_report(url, query, fmt, sys.stdout.buffer))
        sys.stdout.buffer.flush()
        return 0
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    try:
        with open_output(partial) as f:
            asyncio.run(write_report(url, query, fmt, f))
        replace_output(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return 0


#: The format for people: aligned columns, money in the currency's units (not a wire format).
TEXT = "text"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=[*(f.value for f in ReportFormat), TEXT], default="json",
        help="json, csv (integers of minor units, as the API) or text (for people: "
        "$21,098.75; the scale from TOKEX_CURRENCY_SCALE) (default: json)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="file to write (default: stdout)")
    add_database_options(parser)
    parser.set_defaults(handler=_run)


def _times(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-time", default=None, help="first time (Unix ms or ISO-8601)")
    parser.add_argument("--to-time", default=None, help="end time, exclusive")


def _period(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--period", choices=[p.value for p in Period], default="day", help="(default: day)"
    )


def register(subparsers: Any) -> None:
    report = subparsers.add_parser("report", help="settlement reports (JSON or CSV)")
    sub = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")

    st = sub.add_parser("statement", help="an account's opening balance, entries, closing")
    st.add_argument("--account", required=True, help="account id (or ledger owner)")
    st.add_argument("--asset", default=None, help="only this asset (e.g. USD)")
    st.add_argument("--from-index", type=index_arg, default=None, help="first ledger index")
    st.add_argument("--to-index", type=index_arg, default=None, help="end index, exclusive")
    _times(st)
    _common(st)

    po = sub.add_parser("payouts", help="provider payouts per period")
    po.add_argument("--provider", default=None, help="one provider (default: all)")
    _period(po)
    _times(po)
    _common(po)

    ins = sub.add_parser("instrument", help="settlement of one instrument")
    ins.add_argument("symbol")
    _common(ins)

    fe = sub.add_parser("fees", help="fee revenue per period and transaction code")
    _period(fe)
    _times(fe)
    _common(fe)

    tb = sub.add_parser("trial-balance", help="every account per asset; each asset sums to 0")
    tb.add_argument("--to-index", type=index_arg, default=None, help="as of this index (exclusive)")
    _common(tb)
