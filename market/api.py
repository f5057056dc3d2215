"""Trading routes (`/v1/...`): instruments, deposits, listings, orders, fills, balances,
and the public book and trades.

Handlers stay thin: they check who may do what, hand state changes to the
sequencer (`app.state.sequencer`) and answer with what it committed. Reads of
orders and fills come from the database (always committed state); the book
and balances from the sequencer's memory.

Who may do what:
- operator: create instruments, credit deposits, close (settle) an instrument,
  mark withdrawals paid or failed, see every withdrawal;
- provider: list capacity, place sell orders (and buy orders, to buy capacity back),
  report deliveries;
- buyer: place buy orders;
- buyer and provider: withdraw available cash;
- everyone signed: their own orders, fills, balances, entitlements,
  deliveries and withdrawals (another account's order id answers 404,
  exactly as a missing one);
- public: instruments, the book, recent trades, settlements.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import asyncpg
from litestar import Request, Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from market.auth import PUBLIC, ForbiddenRole, Principal, provide_principal, requires_role
from market.errors import UnknownInstrument
from market.pages import Page, decode_cursor, page_of
from market.sequencer import (
    AmendOp,
    CancelAfterOp,
    CancelAllOp,
    CancelOp,
    CloseInstrumentOp,
    CreateInstrumentOp,
    DeliveryOp,
    DepositOp,
    Done,
    Failed,
    ListingOp,
    OrderRefused,
    Outcome,
    PlaceOp,
    UnknownOrder,
    UnknownWithdrawal,
    WithdrawalOutcomeOp,
    WithdrawOp,
)
from market.sequencer.port import Exchange
from market.sequencer.queries import (
    BalancesQuery,
    BookQuery,
    CommitsQuery,
    EntitlementsQuery,
    InstrumentQuery,
    InstrumentsQuery,
    SettlementsQuery,
)
from market.signing import now_ms
from market.store import (
    DeliveryRow,
    OrderRow,
    WithdrawalRow,
    delivered_totals,
    deliveries_for,
    fills_for,
    get_order,
    get_order_by_client_id,
    instrument_listed,
    list_orders,
    list_withdrawals,
    recent_trades,
)
from schemas.accounts import Role
from schemas.errors import DomainError, ErrorKind
from schemas.market import Side
from schemas.trading import (
    AmendOrder,
    BalanceView,
    BookView,
    CancelAfter,
    CancelAfterView,
    CancelAll,
    CancelledOrders,
    CloseInstrument,
    CreateInstrument,
    DeliveryReport,
    DeliveryView,
    Deposit,
    EntitlementView,
    FillView,
    InstrumentView,
    LedgerReceipt,
    Listing,
    OrderResult,
    OrderView,
    PlaceOrder,
    PlaceOrders,
    ServerTime,
    SettlementView,
    TradeView,
    WithdrawalRequest,
    WithdrawalView,
)

__all__ = ["cancel", "place", "place_many", "trader_exchange", "trading_router"]


class ExchangeNotRunning(DomainError):
    code = "exchange_not_running"
    kind = ErrorKind.UNAVAILABLE


class WrongSide(DomainError):
    code = "forbidden_side"
    kind = ErrorKind.FORBIDDEN


class NoRoute(DomainError):
    """A path under a `:path` route that names no route (as Litestar's own 404)."""

    code = "not_found"
    kind = ErrorKind.NOT_FOUND


class UnknownAccount(DomainError):
    code = "unknown_account"
    kind = ErrorKind.NOT_FOUND


#: A list route's page size, and its cursor (`market.pages`).
Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
Cursor = Annotated[
    str | None,
    QueryParameter(description="from a page's next_cursor (older) or prev_cursor (newer)"),
]


def _same(fill: FillView) -> FillView:
    return fill


def provide_sequencer(state: State) -> Exchange:
    sequencer: Exchange | None = state.get("sequencer")
    if sequencer is None:
        raise ExchangeNotRunning("the exchange's sequencer is not running in this process")
    return sequencer


Seq = NamedDependency[Exchange]
Pool = NamedDependency[asyncpg.Pool]
Caller = NamedDependency[Principal]


_ID = re.compile(r"[\x21-\x7e]{1,64}")


def _check_withdrawal_ids(account_id: str, withdrawal_id: str) -> None:
    """Path ids are not validated by a schema: refuse what no withdrawal can have."""
    if not (_ID.fullmatch(account_id) and _ID.fullmatch(withdrawal_id)):
        raise UnknownWithdrawal(f"no withdrawal {withdrawal_id!r} of {account_id!r}")


def _check_side(principal: Principal, side: Side) -> None:
    """Only providers sell (they list the capacity they sell). Buyers buy, and so may
    providers — to buy back capacity they cannot serve; then self-trade prevention
    keeps them from trading with their own offers."""
    if side is Side.SELL and principal.role is not Role.PROVIDER:
        raise WrongSide("only providers place sell orders")


def _rejection(order: OrderView) -> OrderRefused:
    reason = order.reject_reason or "rejected"
    return OrderRefused(f"order {order.client_order_id} rejected: {reason}", code=reason)


def _refuse_if_rejected(order: OrderView) -> OrderView:
    if order.status == "rejected":
        raise _rejection(order)
    return order


# -- instruments -------------------------------------------------------------------------


@post("/instruments", guards=[requires_role(Role.OPERATOR)], status_code=201)
async def create_instrument(data: JSONBody[CreateInstrument], sequencer: Seq) -> InstrumentView:
    """List a new instrument (operator)."""
    return await sequencer.submit(CreateInstrumentOp(data))


@get("/instruments", opt=PUBLIC)
async def list_instruments(sequencer: Seq) -> list[InstrumentView]:
    return await sequencer.ask(InstrumentsQuery())


@get("/instruments/{symbol:path}", opt=PUBLIC)
async def get_instrument(symbol: FromPath[str], sequencer: Seq) -> InstrumentView:
    return await sequencer.ask(InstrumentQuery(symbol.lstrip("/")))


@get("/book", opt=PUBLIC)
async def book(
    instrument: FromQuery[str],
    sequencer: Seq,
    levels: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
) -> BookView:
    """Aggregated price levels, best first, and the last event seq they reflect."""
    return await sequencer.ask(BookQuery(instrument, levels))


@get("/trades", opt=PUBLIC)
async def trades(
    instrument: FromQuery[str],
    pool: Pool,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[TradeView]:
    """Trades of an instrument, newest first (no owners: they are private); paginated.
    An instrument never listed is 404 `unknown_instrument`, as for `GET /v1/book`, not an
    empty page (looked up only when the page is empty: one with trades names a listed one)."""
    keyset = decode_cursor(cursor, "trades", 1, (int,))
    async with pool.acquire() as conn:
        rows = await recent_trades(conn, instrument, limit + 1, keyset)
        if not rows and not await instrument_listed(conn, instrument):
            raise UnknownInstrument(f"unknown instrument {instrument!r}")

    def view(r: Any) -> TradeView:
        return TradeView(
            instrument=instrument, seq=r["seq"], time_ms=r["time_ms"], price=r["price"],
            quantity=r["quantity"], aggressor_side=Side(r["aggressor_side"]),
        )  # fmt: skip

    return page_of(rows, limit, keyset, lambda r: (r["seq"],), view)


# -- money and capacity ----------------------------------------------------------------------


@get("/time", opt=PUBLIC)
async def server_time() -> ServerTime:
    """The server's clock in Unix ms: sign requests within 30 s of it."""
    return ServerTime(server_time_ms=now_ms())


@post("/deposits", guards=[requires_role(Role.OPERATOR)], status_code=201)
async def deposit(data: JSONBody[Deposit], sequencer: Seq, pool: Pool) -> LedgerReceipt:
    """Credit cash to an account (operator). Idempotent per `deposit_id`."""
    async with pool.acquire() as conn:
        exists = await conn.fetchval(
            "SELECT 1 FROM accounts WHERE account_id = $1", data.account_id
        )
    if not exists:
        raise UnknownAccount(f"no account {data.account_id}")
    return await sequencer.submit(DepositOp(data))


@post("/listings", guards=[requires_role(Role.PROVIDER)], status_code=201)
async def list_capacity(
    data: JSONBody[Listing], sequencer: Seq, principal: Caller
) -> LedgerReceipt:
    """List token capacity of an instrument (provider). Idempotent per `listing_id`."""
    return await sequencer.submit(ListingOp(principal.account_id, data))


@get("/balances")
async def balances(sequencer: Seq, principal: Caller) -> list[BalanceView]:
    """The caller's balances: cash, capacity, and the escrows and entitlements it is party to."""
    return await sequencer.ask(BalancesQuery(principal.account_id))


# -- orders -----------------------------------------------------------------------------


_traders = [requires_role(Role.BUYER, Role.PROVIDER)]
_TRADER_ROLES = frozenset({Role.BUYER, Role.PROVIDER})


def _trader(request: Request[Any, Any, Any]) -> tuple[Exchange, Principal]:
    """The sequencer and the calling trader, for the order routes.

    These routes are the hot path, so they skip Litestar's dependency injection and
    guards: with two or more dependencies Litestar resolves them in an anyio task
    group, and it copies the route handler for every guard call — together more than
    a fifth of the server's time per order. The checks are the same as
    `requires_role(Role.BUYER, Role.PROVIDER)` and `provide_principal`.
    """
    principal = provide_principal(request)
    return trader_exchange(request.app.state, principal), principal


def trader_exchange(state: State, principal: Principal) -> Exchange:
    """The sequencer, for a trader (buyer or provider; else 403 `forbidden_role`)."""
    if principal.role not in _TRADER_ROLES:
        raise ForbiddenRole(f"role {principal.role} may not do this (needs: buyer, provider)")
    return provide_sequencer(state)


async def place(sequencer: Exchange, principal: Principal, data: PlaceOrder) -> OrderView:
    """`POST /v1/orders` itself (here and on the lean path, `market.orders_asgi`)."""
    _check_side(principal, data.side)
    return _refuse_if_rejected(await sequencer.submit(PlaceOp(principal.account_id, data)))


async def place_many(
    sequencer: Exchange, principal: Principal, data: PlaceOrders
) -> list[OrderResult]:
    """`POST /v1/orders/batch` itself (here and on the lean path, `market.orders_asgi`)."""
    refusals: list[DomainError | None] = []
    ops: list[PlaceOp] = []
    for order in data.orders:
        try:
            _check_side(principal, order.side)
        except DomainError as exc:
            refusals.append(exc)
        else:
            refusals.append(None)
            ops.append(PlaceOp(principal.account_id, order))
    placed = iter(await sequencer.submit_all(ops))
    results: list[OrderResult] = []
    for order, refused in zip(data.orders, refusals, strict=True):
        outcome: Outcome[OrderView] = Failed(refused) if refused is not None else next(placed)
        if isinstance(outcome, Done) and outcome.value.status == "rejected":
            outcome = Failed(_rejection(outcome.value))
        match outcome:
            case Done(value=view):
                results.append(OrderResult(client_order_id=order.client_order_id, order=view))
            case Failed(error=error):
                results.append(
                    OrderResult(
                        client_order_id=order.client_order_id, code=error.code,
                        message=error.message,
                    )
                )  # fmt: skip
    return results


async def cancel(sequencer: Exchange, principal: Principal, order_id: int) -> OrderView:
    """`DELETE /v1/orders/{order_id}` itself (here and on the lean path)."""
    return await sequencer.submit(CancelOp(principal.account_id, order_id))


@post("/orders", status_code=201)
async def place_order(data: JSONBody[PlaceOrder], request: Request[Any, Any, Any]) -> OrderView:
    """Place an order. Retrying with the same `client_order_id` and body returns the same order."""
    return await place(*_trader(request), data)


@post("/orders/batch", status_code=200)
async def place_orders(
    data: JSONBody[PlaceOrders], request: Request[Any, Any, Any]
) -> list[OrderResult]:
    """Place up to 50 orders; each is accepted or refused on its own, in order.

    The orders are queued all together or not at all: if the sequencer's queue has no
    room for every one, the whole request answers 503 `exchange_busy` (none placed)."""
    return await place_many(*_trader(request), data)


#: What `GET /orders?status=` takes (an unknown one is a 400, not an empty list).
OrderStatusFilter = Literal["open", "filled", "cancelled", "expired", "rejected", "all"]
#: What `GET /withdrawals?status=` takes.
WithdrawalStatusFilter = Literal["pending", "paid", "failed"]


@get("/orders")
async def my_orders(
    pool: Pool,
    principal: Caller,
    status: FromQuery[OrderStatusFilter | None] = "open",
    instrument: FromQuery[str | None] = None,
    limit: Limit = 200,
    cursor: Cursor = None,
) -> Page[OrderView]:
    """The caller's orders (default: open ones), newest first by id; `status=all` for
    every one. Paginated: follow `next_cursor` for older ones, `prev_cursor` for newer."""
    keyset = decode_cursor(cursor, "orders", 1, (int,))
    async with pool.acquire() as conn:
        rows = await list_orders(
            conn,
            principal.account_id,
            status=None if status == "all" else status,
            instrument=instrument,
            limit=limit + 1,
            keyset=keyset,
        )
    return page_of(rows, limit, keyset, lambda r: (r.order_id,), OrderRow.view)


@get("/orders/{order_id:int}")
async def my_order(order_id: FromPath[int], pool: Pool, principal: Caller) -> OrderView:
    async with pool.acquire() as conn:
        row = await get_order(conn, principal.account_id, order_id)
        if row is None:
            raise UnknownOrder(f"no order {order_id}")
        fills = await fills_for(conn, principal.account_id, order_id=order_id)
    return row.view(list(reversed(fills)))


@get("/orders/by-client-id/{client_order_id:path}")
async def my_order_by_client_id(
    client_order_id: FromPath[str], pool: Pool, principal: Caller
) -> OrderView:
    """The caller's order with this `client_order_id` (each is used once per account;
    percent-encode it in the path: a client id may hold `/`, `?` or `%`)."""
    client_order_id = client_order_id.removeprefix("/")
    async with pool.acquire() as conn:
        row = await get_order_by_client_id(conn, principal.account_id, client_order_id)
        if row is None:
            raise UnknownOrder(f"no order with client_order_id {client_order_id!r}")
        fills = await fills_for(conn, principal.account_id, order_id=row.order_id)
    return row.view(list(reversed(fills)))


@delete("/orders/by-client-id/{client_order_id:path}", status_code=200)
async def cancel_order_by_client_id(
    client_order_id: FromPath[str], request: Request[Any, Any, Any]
) -> OrderView:
    """Cancel the caller's order with this `client_order_id`.

    The id is looked up among the caller's committed orders (an order is visible only
    once durable, and its id never changes), then cancelled by the sequencer as by id.
    """
    sequencer, principal = _trader(request)
    client_order_id = client_order_id.removeprefix("/")
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        row = await get_order_by_client_id(conn, principal.account_id, client_order_id)
    if row is None:
        raise UnknownOrder(f"no order with client_order_id {client_order_id!r}")
    return await sequencer.submit(CancelOp(principal.account_id, row.order_id))


@delete("/orders/{order_id:int}", status_code=200)
async def cancel_order(order_id: FromPath[int], request: Request[Any, Any, Any]) -> OrderView:
    return await cancel(*_trader(request), order_id)


@patch("/orders/{order_id:int}")
async def amend_order(
    order_id: FromPath[int], data: JSONBody[AmendOrder], request: Request[Any, Any, Any]
) -> OrderView:
    """Change a resting order's price and/or open quantity (a decrease keeps priority)."""
    sequencer, principal = _trader(request)
    return await sequencer.submit(AmendOp(principal.account_id, order_id, data))


@post("/orders/cancel-after", status_code=200)
async def cancel_after(
    data: JSONBody[CancelAfter], request: Request[Any, Any, Any]
) -> CancelAfterView:
    """The dead-man switch: unless called again within `timeout_ms`, every open order of
    the caller is cancelled (within about 250 ms of the deadline); 0 disarms it."""
    sequencer, principal = _trader(request)
    return await sequencer.submit(CancelAfterOp(principal.account_id, data.timeout_ms))


@post("/orders/cancel-all", status_code=200)
async def cancel_all(data: JSONBody[CancelAll], request: Request[Any, Any, Any]) -> CancelledOrders:
    """Cancel every open order of the caller (in one instrument, or all)."""
    sequencer, principal = _trader(request)
    return await sequencer.submit(CancelAllOp(principal.account_id, data.instrument))


@get("/fills")
async def my_fills(
    pool: Pool,
    principal: Caller,
    instrument: FromQuery[str | None] = None,
    limit: Limit = 200,
    cursor: Cursor = None,
) -> Page[FillView]:
    """The caller's fills, newest first by (time, instrument, seq); paginated."""
    keyset = decode_cursor(cursor, "fills", 3, (int, str, int))
    async with pool.acquire() as conn:
        rows = await fills_for(
            conn, principal.account_id, instrument=instrument, limit=limit + 1, keyset=keyset
        )
    return page_of(rows, limit, keyset, lambda f: (f.time_ms, f.instrument, f.seq), _same)


# -- delivery, settlement, withdrawals ------------------------------------------------------


@post("/deliveries", guards=[requires_role(Role.PROVIDER)], status_code=201)
async def report_delivery(
    data: JSONBody[DeliveryReport], sequencer: Seq, principal: Caller
) -> DeliveryView:
    """Tokens served to a buyer (provider): burns that much of the buyer's entitlement from
    this provider and pays the provider its share of the escrow, less the provider fee.
    Idempotent per `report_id`; above the remaining entitlement: 422 `entitlement_exceeded`."""
    return await sequencer.submit(DeliveryOp(principal.account_id, data))


@get("/deliveries")
async def my_deliveries(
    pool: Pool,
    principal: Caller,
    instrument: FromQuery[str | None] = None,
    limit: Limit = 200,
    cursor: Cursor = None,
) -> Page[DeliveryView]:
    """Deliveries the caller made (provider) or received (buyer), newest first; paginated."""
    keyset = decode_cursor(cursor, "deliveries", 2, (int, str))
    async with pool.acquire() as conn:
        rows = await deliveries_for(
            conn, principal.account_id, instrument=instrument, limit=limit + 1, keyset=keyset
        )
    return page_of(rows, limit, keyset, lambda d: (d.time_ms, d.transaction_id), DeliveryRow.view)


@get("/entitlements")
async def my_entitlements(sequencer: Seq, pool: Pool, principal: Caller) -> list[EntitlementView]:
    """Per instrument and counterparty: tokens still owed, escrow, delivered so far."""
    # Balances come from memory, delivered totals from the database: read both with no
    # commit in between (a delivery between them would mix two moments), else again.
    for _ in range(10):
        marked = await sequencer.ask(EntitlementsQuery(principal.account_id))
        views = {(v.instrument, v.buyer, v.provider): v for v in marked.value}
        async with pool.acquire() as conn:
            totals = await delivered_totals(conn, principal.account_id)
        if await sequencer.ask(CommitsQuery()) == marked.commits:
            break
    for key, (tokens, released) in totals.items():
        view = views.get(key)
        if view is None:
            instrument, buyer, provider = key
            view = views[key] = EntitlementView(
                instrument=instrument, buyer=buyer, provider=provider, entitlement=0, escrow=0,
                delivered=0, released=0,
            )  # fmt: skip
        view.delivered = tokens
        view.released = released
    return [views[k] for k in sorted(views)]


@post("/settlements", guards=[requires_role(Role.OPERATOR)], status_code=200)
async def close_instrument(data: JSONBody[CloseInstrument], sequencer: Seq) -> SettlementView:
    """Close an instrument's window now and settle it (operator): open orders cancelled,
    remaining entitlement burned and escrow refunded, unsold capacity burned. Idempotent:
    closing a settled instrument answers its settlement."""
    return await sequencer.submit(CloseInstrumentOp(data.instrument))


@get("/settlements", opt=PUBLIC)
async def settlements(sequencer: Seq) -> list[SettlementView]:
    """Every settled instrument and what its settlement burned and refunded."""
    return await sequencer.ask(SettlementsQuery())


@post("/withdrawals", guards=_traders, status_code=201)
async def withdraw(
    data: JSONBody[WithdrawalRequest], sequencer: Seq, principal: Caller
) -> WithdrawalView:
    """Ask to withdraw available cash: it is held until the operator pays it out.
    Idempotent per `withdrawal_id`."""
    return await sequencer.submit(WithdrawOp(principal.account_id, data))


@get("/withdrawals")
async def my_withdrawals(
    pool: Pool,
    principal: Caller,
    status: FromQuery[WithdrawalStatusFilter | None] = None,
    limit: Limit = 200,
    cursor: Cursor = None,
) -> Page[WithdrawalView]:
    """The caller's withdrawals, newest first; the operator sees everyone's. Paginated."""
    everyone = principal.role is Role.OPERATOR
    keyset = decode_cursor(cursor, "withdrawals", 3, (int, str, str))
    async with pool.acquire() as conn:
        rows = await list_withdrawals(
            conn,
            account_id=None if everyone else principal.account_id,
            status=status,
            limit=limit + 1,
            keyset=keyset,
        )

    def key(w: WithdrawalRow) -> tuple[int, str, str]:
        return (w.created_ms, w.account_id, w.withdrawal_id)

    return page_of(rows, limit, keyset, key, WithdrawalRow.view)


_operator = [requires_role(Role.OPERATOR)]


#: The two outcomes of `POST /v1/withdrawals/{account_id}/{withdrawal_id}/paid|failed`.
WITHDRAWAL_OUTCOMES: dict[str, bool] = {"paid": True, "failed": False}


def _withdrawal_outcome(withdrawal_path: str) -> tuple[str, bool]:
    """The withdrawal id and the outcome (paid?) of `<withdrawal_id>/paid|failed`.

    One `:path` route serves both outcomes because a withdrawal id may hold `/` (a
    `ClientId`): Litestar decodes `%2F` before it matches routes, so a `{withdrawal_id:str}`
    segment could never match `w%2F1`. The outcome is the last segment, the id all before
    it; any other ending is a path that matches no route (404 `not_found`)."""
    withdrawal_id, _, outcome = withdrawal_path.removeprefix("/").rpartition("/")
    paid = WITHDRAWAL_OUTCOMES.get(outcome)
    if paid is None or not withdrawal_id:
        raise NoRoute("no route: POST /v1/withdrawals/{account_id}/{withdrawal_id}/paid|failed")
    return withdrawal_id, paid


@post("/withdrawals/{account_id:str}/{withdrawal_path:path}", guards=_operator, status_code=200)
async def withdrawal_outcome(
    account_id: FromPath[str], withdrawal_path: FromPath[str], sequencer: Seq
) -> WithdrawalView:
    """`.../paid`: the operator paid it out, the hold is posted to the operator's bank;
    `.../failed`: the payout failed, the hold is voided. Idempotent; 409
    `withdrawal_settled` after the other outcome. Percent-encode the id (it may hold `/`).

    Documented as two routes, `.../{withdrawal_id}/paid` and `.../failed`
    (`ops.openapi.SPLIT_ROUTES`)."""
    withdrawal_id, paid = _withdrawal_outcome(withdrawal_path)
    _check_withdrawal_ids(account_id, withdrawal_id)
    return await sequencer.submit(WithdrawalOutcomeOp(account_id, withdrawal_id, paid=paid))


def _dependencies() -> dict[str, Any]:
    return {"sequencer": Provide(provide_sequencer, sync_to_thread=False)}


trading_router = Router(
    path="/v1",
    route_handlers=[
        create_instrument,
        list_instruments,
        get_instrument,
        book,
        trades,
        server_time,
        deposit,
        list_capacity,
        balances,
        place_order,
        place_orders,
        my_orders,
        my_order,
        my_order_by_client_id,
        cancel_order_by_client_id,
        cancel_order,
        amend_order,
        cancel_after,
        cancel_all,
        my_fills,
        report_delivery,
        my_deliveries,
        my_entitlements,
        close_instrument,
        settlements,
        withdraw,
        my_withdrawals,
        withdrawal_outcome,
    ],
    dependencies=_dependencies(),
    tags=["trading"],
)
