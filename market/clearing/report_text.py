"""A settlement report for people: the JSON document of `market.clearing.reports` as
aligned text columns, money in the currency's units (`$21,098.75`) and tokens with
thousands separators. Pure; what `tokex report ... --format text` and `tokex demo` print.

Which columns are money is a property of the report: the instrument report's notional,
VWAP, fees, paid, refunded and escrow; payouts' gross, fees and net; fees' amount; and in
a statement or the trial balance, a row's amounts when its asset is the currency (other
assets are tokens: capacity, entitlement).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from market.money import Currency, format_count, format_money

Row = Mapping[str, Any]

#: Money columns of each report, whatever the row's asset.
_MONEY: dict[str, frozenset[str]] = {
    "instrument": frozenset(
        {"notional", "vwap", "buyer_fees", "paid", "provider_fees", "refunded", "escrow"}
    ),
    "payouts": frozenset({"gross", "fees", "net"}),
    "fees": frozenset({"amount"}),
}
#: Columns of amounts of the row's asset (money if it is the currency, else tokens).
_AMOUNTS: dict[str, frozenset[str]] = {
    "statement": frozenset({"amount", "balance"}),
    "trial-balance": frozenset({"available", "held", "total"}),
}
#: Token counts.
_TOKENS = frozenset({"volume", "delivered", "undelivered", "fills", "transactions"})


def _cell(report: str, column: str, row: Row, money: Currency) -> str:
    value = row[column]
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        is_money = column in _MONEY.get(report, ()) or (
            column in _AMOUNTS.get(report, ()) and row.get("asset") == money.code
        )
        if is_money:
            return format_money(value, money)
        if column in _TOKENS or column in _AMOUNTS.get(report, ()):
            return format_count(value)
    return str(value)


def render_report(
    doc: Mapping[str, Any],
    money: Currency,
    names: Mapping[str, str] | None = None,
    skip: Callable[[Row], bool] | None = None,
) -> str:
    """The report document `doc` as text: a header line, then one line per row (those
    `skip` does not drop); account ids in `names` replaced by their names."""
    report, head = str(doc["report"]), [str(c) for c in doc["columns"]]

    def named(text: str) -> str:
        for account_id, name in (names or {}).items():
            text = text.replace(account_id, name)
        return text

    rows = [
        [named(_cell(report, c, row, money)) for c in head]
        for row in doc["rows"]
        if skip is None or not skip(row)
    ]
    widths = [max([len(h)] + [len(r[j]) for r in rows]) for j, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)
