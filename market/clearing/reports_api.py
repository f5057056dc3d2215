"""Settlement report routes (`/v1/reports/...`), streamed as JSON or CSV.

- `GET /v1/reports/statement?account=&asset=&from_index=&to_index=&from_time_ms=&to_time_ms=`
- `GET /v1/reports/payouts?provider=&period=day|hour&from_time_ms=&to_time_ms=`
- `GET /v1/reports/instruments/{symbol}` (or `/v1/reports/instrument?instrument=`)
- `GET /v1/reports/fees?period=day|hour&from_time_ms=&to_time_ms=`
- `GET /v1/reports/trial-balance?to_index=`

Every route takes `format=json|csv` (default json; CSV is `text/csv`). Time bounds are
Unix milliseconds (`from_time_ms`, `to_time_ms`); their deprecated names `from_time` and
`to_time` are still accepted for one version, as Unix ms or ISO-8601 (UTC unless an
offset is given). Index and time ranges are half-open. The body is streamed (`Stream`),
read from one database snapshot; the bytes are exactly those of `tokex report ...` for the
same query (see `market.clearing.reports`).

Who sees what: operators and auditors every report of everyone. A buyer or provider
only its own statement and payouts (another account's: 403 `report_forbidden`), and of
an instrument only the pairs it bought or sold in; fee revenue and the trial balance
are the exchange's own books (403 for them).

The caller comes from the app's `principal` dependency (`market.auth`); this module
only needs its account id and role (`Caller`), not the authenticator's types.
Query checks that can fail (bad range, unknown instrument) run before the first byte,
so they answer a proper error instead of a cut stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Protocol, runtime_checkable

import asyncpg
from litestar import Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from market.clearing.reports import (
    InvalidReportQuery,
    ReportForbidden,
    check_query,
    parse_time,
    report_chunks,
)
from schemas.accounts import Role
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

__all__ = ["MEDIA_TYPES", "PRIVILEGED", "reports_router"]

#: Roles that see every report of every account.
PRIVILEGED = frozenset({Role.OPERATOR, Role.AUDITOR})

MEDIA_TYPES = {
    ReportFormat.JSON: "application/json",
    ReportFormat.CSV: "text/csv",
}  # Litestar adds the charset


@runtime_checkable  # Litestar checks the dependency's type at run time
class Caller(Protocol):
    """What the routes need of the authenticated principal."""

    @property
    def account_id(self) -> str: ...

    @property
    def role(self) -> Role: ...


Pool = NamedDependency[asyncpg.Pool]
Principal = NamedDependency[Caller]
Fmt = Annotated[ReportFormat, QueryParameter(name="format")]
TimeMs = Annotated[int | None, QueryParameter(ge=0, le=2**62, description="Unix ms")]
OldTime = Annotated[str | None, QueryParameter(description="deprecated: Unix ms or ISO-8601 (UTC)")]
Idx = Annotated[int | None, QueryParameter(ge=0)]


def _time(ms: int | None, old: str | None, name: str) -> int | None:
    """A time bound given as `name` (Unix ms) or by its deprecated name (`name` without
    `_ms`: Unix ms or ISO-8601), not both."""
    if old is None:
        return ms
    if ms is not None:
        raise InvalidReportQuery(f"{name.removesuffix('_ms')} is the deprecated name of {name}")
    return parse_time(old)


def _own(caller: Caller, account: str | None, what: str) -> str | None:
    """The account a report is about: any for operators and auditors (None: all), else
    the caller's own."""
    if caller.role in PRIVILEGED:
        return account
    if account is not None and account != caller.account_id:
        raise ReportForbidden(f"a {caller.role} sees only its own {what}")
    return caller.account_id


def _privileged(caller: Caller, what: str) -> None:
    if caller.role not in PRIVILEGED:
        raise ReportForbidden(f"only operators and auditors see the {what}")


async def _stream(pool: asyncpg.Pool, query: ReportQuery, fmt: ReportFormat) -> Stream:
    async with pool.acquire() as conn:
        await check_query(conn, query)

    async def body() -> AsyncIterator[bytes]:
        async with pool.acquire() as conn:
            async for chunk in report_chunks(conn, query, fmt):
                yield chunk

    return Stream(body(), media_type=MEDIA_TYPES[fmt])


@get("/statement", summary="Account statement: opening balance, every entry, closing balance")
async def statement(
    pool: Pool,
    principal: Principal,
    account: FromQuery[str | None] = None,
    asset: FromQuery[str | None] = None,
    from_index: Idx = None,
    to_index: Idx = None,
    from_time_ms: TimeMs = None,
    to_time_ms: TimeMs = None,
    from_time: OldTime = None,
    to_time: OldTime = None,
    fmt: Fmt = ReportFormat.JSON,
) -> Stream:
    owner = _own(principal, account, "statement") or principal.account_id
    query = StatementQuery(
        owner=owner, asset=asset, from_index=from_index, to_index=to_index,
        from_time_ms=_time(from_time_ms, from_time, "from_time_ms"),
        to_time_ms=_time(to_time_ms, to_time, "to_time_ms"),
    )  # fmt: skip
    return await _stream(pool, query, fmt)


@get("/payouts", summary="Provider payouts per period (deliveries, fees withheld)")
async def payouts(
    pool: Pool,
    principal: Principal,
    provider: FromQuery[str | None] = None,
    period: FromQuery[Period] = Period.DAY,
    from_time_ms: TimeMs = None,
    to_time_ms: TimeMs = None,
    from_time: OldTime = None,
    to_time: OldTime = None,
    fmt: Fmt = ReportFormat.JSON,
) -> Stream:
    query = PayoutsQuery(
        provider=_own(principal, provider, "payouts"), period=period,
        from_time_ms=_time(from_time_ms, from_time, "from_time_ms"),
        to_time_ms=_time(to_time_ms, to_time, "to_time_ms"),
    )  # fmt: skip
    return await _stream(pool, query, fmt)


async def _instrument(pool: asyncpg.Pool, caller: Caller, symbol: str, fmt: ReportFormat) -> Stream:
    party = None if caller.role in PRIVILEGED else caller.account_id
    return await _stream(pool, InstrumentQuery(instrument=symbol, party=party), fmt)


@get("/instruments/{symbol:path}", summary="Instrument settlement (volume, VWAP, delivery)")
async def instrument_by_path(
    pool: Pool, principal: Principal, symbol: FromPath[str], fmt: Fmt = ReportFormat.JSON
) -> Stream:
    return await _instrument(pool, principal, symbol.lstrip("/"), fmt)


@get("/instrument", summary="Instrument settlement, the symbol as a query parameter")
async def instrument_by_query(
    pool: Pool, principal: Principal, instrument: FromQuery[str], fmt: Fmt = ReportFormat.JSON
) -> Stream:
    return await _instrument(pool, principal, instrument, fmt)


@get("/fees", summary="Fee revenue per period and transaction code")
async def fee_revenue(
    pool: Pool,
    principal: Principal,
    period: FromQuery[Period] = Period.DAY,
    from_time_ms: TimeMs = None,
    to_time_ms: TimeMs = None,
    from_time: OldTime = None,
    to_time: OldTime = None,
    fmt: Fmt = ReportFormat.JSON,
) -> Stream:
    _privileged(principal, "fee revenue")
    query = FeesQuery(
        period=period, from_time_ms=_time(from_time_ms, from_time, "from_time_ms"),
        to_time_ms=_time(to_time_ms, to_time, "to_time_ms"),
    )  # fmt: skip
    return await _stream(pool, query, fmt)


@get("/trial-balance", summary="Every account per asset; each asset totals zero")
async def trial_balance(
    pool: Pool, principal: Principal, to_index: Idx = None, fmt: Fmt = ReportFormat.JSON
) -> Stream:
    _privileged(principal, "trial balance")
    return await _stream(pool, TrialBalanceQuery(to_index=to_index), fmt)


reports_router = Router(
    path="/v1/reports",
    route_handlers=[
        statement, payouts, instrument_by_path, instrument_by_query, fee_revenue, trial_balance,
    ],
    tags=["reports"],
)  # fmt: skip
