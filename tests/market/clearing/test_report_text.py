"""Reports for people: money columns in the currency's units, tokens as counts."""

from __future__ import annotations

from market.clearing.report_text import render_report
from market.money import currency

USD = currency("USD")


def test_money_columns_by_report_and_asset() -> None:
    doc = {
        "report": "statement",
        "columns": ["section", "asset", "owner", "amount", "balance"],
        "rows": [
            {"section": "entry", "asset": "USD", "owner": "acc_1", "amount": -2109875,
             "balance": 5},
            {"section": "entry", "asset": "ent:x", "owner": "acc_1", "amount": 30000,
             "balance": 1000000},
            {"section": "closing", "asset": "USD", "owner": "acc_1", "amount": None,
             "balance": 0},
        ],
    }  # fmt: skip
    lines = render_report(doc, USD, {"acc_1": "buyer-0"}).splitlines()
    assert lines[0].split() == ["section", "asset", "owner", "amount", "balance"]
    assert lines[1].split() == ["entry", "USD", "buyer-0", "-$21,098.75", "$0.05"]
    assert lines[2].split() == ["entry", "ent:x", "buyer-0", "30,000", "1,000,000"]
    assert lines[3].split() == ["closing", "USD", "buyer-0", "$0.00"]  # no amount: blank


def test_instrument_report_and_skip() -> None:
    doc = {
        "report": "instrument",
        "columns": ["scope", "fills", "volume", "notional", "vwap", "refunded"],
        "rows": [
            {"scope": "total", "fills": 1200, "volume": 240000, "notional": 143379, "vwap": 597,
             "refunded": 0},
            {"scope": "pair", "fills": 0, "volume": 0, "notional": 0, "vwap": 0, "refunded": 0},
        ],
    }  # fmt: skip
    text = render_report(doc, currency("JPY"), skip=lambda row: row["fills"] == 0)
    assert text.splitlines()[1].split() == ["total", "1,200", "240,000", "¥143,379", "¥597", "¥0"]
    assert len(text.splitlines()) == 2
