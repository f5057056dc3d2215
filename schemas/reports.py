"""Settlement reports: the queries and the rows (see `market.clearing.reports`).

Every row type has a fixed field order: it is the column order of the CSV form
and the key order of the JSON form. Amounts are integers (minor currency units
or tokens); times are ISO-8601 UTC strings with milliseconds
(`YYYY-MM-DDTHH:MM:SS.sssZ`). Empty values (a total row's provider, an opening
row's transaction) are `None` in JSON and empty cells in CSV.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec

Index = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"


class Period(StrEnum):
    HOUR = "hour"
    DAY = "day"


PERIOD_MS: dict[Period, int] = {Period.HOUR: 3_600_000, Period.DAY: 86_400_000}


# --------------------------------------------------------------------------- queries


class StatementQuery(msgspec.Struct, frozen=True, kw_only=True, tag="statement"):
    """Every account `owner` holds or is a party to (`owner`, `owner@*`, `*@owner`).

    The range is a half-open range of ledger indexes; time bounds select the
    transactions whose time is >= `from_time_ms` and < `to_time_ms` (the sequencer's
    times never decrease along the ledger, so this is also an index range).
    """

    owner: str
    asset: str | None = None
    from_index: Index | None = None
    to_index: Index | None = None
    from_time_ms: TimeMs | None = None
    to_time_ms: TimeMs | None = None


class PayoutsQuery(msgspec.Struct, frozen=True, kw_only=True, tag="payouts"):
    provider: str | None = None  # None: every provider
    period: Period = Period.DAY
    from_time_ms: TimeMs | None = None
    to_time_ms: TimeMs | None = None


class InstrumentQuery(msgspec.Struct, frozen=True, kw_only=True, tag="instrument"):
    instrument: str
    party: str | None = None  # restrict to the pairs this account is the buyer or provider of


class FeesQuery(msgspec.Struct, frozen=True, kw_only=True, tag="fees"):
    period: Period = Period.DAY
    from_time_ms: TimeMs | None = None
    to_time_ms: TimeMs | None = None


class TrialBalanceQuery(msgspec.Struct, frozen=True, kw_only=True, tag="trial-balance"):
    to_index: Index | None = None  # balances after the transactions before this index


ReportQuery = StatementQuery | PayoutsQuery | InstrumentQuery | FeesQuery | TrialBalanceQuery


# --------------------------------------------------------------------------- rows


class StatementRow(msgspec.Struct, frozen=True, kw_only=True):
    """`section` is `opening` (balance before the range), `entry` (one ledger entry, with
    the balance of its account and bucket after it) or `closing` (balance at the end)."""

    section: Literal["opening", "entry", "closing"]
    asset: str
    owner: str
    kind: str
    bucket: Literal["available", "held"]
    tx_index: int | None
    tx_id: str | None
    code: str | None
    time_ms: int | None
    amount: int | None
    balance: int


class PayoutRow(msgspec.Struct, frozen=True, kw_only=True):
    """What delivery transactions paid one provider in one period and currency.

    `gross` is the escrow released to the provider, `fees` the provider fee withheld
    (the fee revenue of those transactions), `net` = gross - fees, what reached its
    cash account."""

    period_start_ms: int
    provider: str
    currency: str
    transactions: int
    gross: int
    fees: int
    net: int


class InstrumentRow(msgspec.Struct, frozen=True, kw_only=True):
    """Settlement of an instrument: `scope` `total` (first row) then one `pair` row per
    (provider, buyer).

    From the fills: `fills`, `volume` (tokens), `notional`, `vwap` (integer, minor
    units per lot: floor(notional * lot / volume), 0 without fills), `buyer_fees`.
    From the ledger: `delivered` (entitlement burned by delivery transactions),
    `undelivered` (entitlement removed otherwise: window close), `paid` (escrow
    released to the provider by deliveries), `provider_fees` (fee revenue of those
    deliveries), `refunded` (escrow returned otherwise), `escrow` (still in escrow).
    So notional = paid + refunded + escrow and volume = delivered + undelivered +
    the entitlement still open."""

    scope: Literal["total", "pair"]
    instrument: str
    provider: str | None
    buyer: str | None
    fills: int
    volume: int
    notional: int
    vwap: int
    buyer_fees: int
    delivered: int
    undelivered: int
    paid: int
    provider_fees: int
    refunded: int
    escrow: int


class FeeRow(msgspec.Struct, frozen=True, kw_only=True):
    """Fee revenue (entries on the exchange's `fees` accounts) per period, currency, code."""

    period_start_ms: int
    currency: str
    code: str
    transactions: int
    amount: int


class TrialBalanceRow(msgspec.Struct, frozen=True, kw_only=True):
    """`row` `account` for every account with an entry, then `asset_total` after each
    asset's accounts: its `total` is zero in a sound ledger (its `available` and `held`
    need not be: open holds move value from one bucket to the other)."""

    row: Literal["account", "asset_total"]
    asset: str
    owner: str | None
    kind: str | None
    available: int
    held: int
    total: int


ReportRow = StatementRow | PayoutRow | InstrumentRow | FeeRow | TrialBalanceRow
