"""PostgreSQL persistence of the market (asyncpg): instruments, journal, orders, fills,
deliveries, settlements and withdrawals.

Only the sequencer writes (staged into its batch's one statement); the API
reads orders and fills from here, so what it shows is always committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from ledger.rows import BatchRows
from market.clearing.rules import Delivered
from market.pages import FIRST_PAGE, Keyset
from schemas.market import Command, Instrument, OrderType, Side, TimeInForce
from schemas.trading import DeliveryView, FillView, OrderView, SettlementView, WithdrawalView


class ListInstrument(msgspec.Struct, kw_only=True, frozen=True, tag="list_instrument"):
    """Journal entry: an instrument was listed (with its settlement terms)."""

    instrument: Instrument
    maker_fee_bps: int
    taker_fee_bps: int
    provider_fee_bps: int
    currency: str
    time: int
    completion_weight: int = 1  # absent from entries written before the term existed


JournalEntry = Command | ListInstrument

_journal_encoder = msgspec.msgpack.Encoder()
_journal_decoder: msgspec.msgpack.Decoder[JournalEntry] = msgspec.msgpack.Decoder(JournalEntry)


def encode_entry(entry: JournalEntry) -> bytes:
    return _journal_encoder.encode(entry)


def decode_entry(body: bytes) -> JournalEntry:
    return _journal_decoder.decode(body)


@dataclass(slots=True)
class OrderRow:
    """The queryable state of one order (a row of `market_orders`)."""

    order_id: int
    account_id: str
    client_order_id: str
    request_digest: bytes
    instrument: str
    side: Side
    order_type: OrderType
    tif: TimeInForce | None
    price: int | None
    quantity: int
    open_quantity: int
    filled_quantity: int
    cancelled_quantity: int
    status: str
    reject_reason: str | None
    hold_id: str | None
    expire_at: int | None
    created_ms: int
    updated_ms: int

    def as_record(self) -> tuple[Any, ...]:
        return (
            self.order_id, self.account_id, self.client_order_id, self.request_digest,
            self.instrument, self.side.value, self.order_type.value,
            None if self.tif is None else self.tif.value, self.price, self.quantity,
            self.open_quantity, self.filled_quantity, self.cancelled_quantity, self.status,
            self.reject_reason, self.hold_id, self.expire_at, self.created_ms, self.updated_ms,
        )  # fmt: skip

    def view(self, fills: Sequence[FillView] = ()) -> OrderView:
        return OrderView(
            order_id=self.order_id,
            client_order_id=self.client_order_id,
            instrument=self.instrument,
            side=self.side,
            order_type=self.order_type,
            tif=self.tif,
            price=self.price,
            quantity=self.quantity,
            open_quantity=self.open_quantity,
            filled_quantity=self.filled_quantity,
            cancelled_quantity=self.cancelled_quantity,
            status=self.status,
            reject_reason=self.reject_reason,
            created_at_ms=self.created_ms,
            updated_at_ms=self.updated_ms,
            fills=list(fills),
        )


ORDER_COLUMNS = (
    "order_id", "account_id", "client_order_id", "request_digest", "instrument", "side",
    "order_type", "tif", "price", "quantity", "open_quantity", "filled_quantity",
    "cancelled_quantity", "status", "reject_reason", "hold_id", "expire_at", "created_ms",
    "updated_ms",
)  # fmt: skip
# An order's row is rewritten as it fills, is cancelled or expires (the first five columns
# never change).
_ORDER_UPSERT = "ON CONFLICT (order_id) DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c in ORDER_COLUMNS[5:]
)

FILL_COLUMNS = (
    "instrument", "seq", "time_ms", "maker_order_id", "taker_order_id", "maker_account",
    "taker_account", "aggressor_side", "price", "quantity", "buyer_fee",
)  # fmt: skip


DELIVERY_COLUMNS = (
    "provider", "report_id", "request_digest", "instrument", "buyer", "tokens", "released",
    "fee", "transaction_id", "time_ms",
)  # fmt: skip

WITHDRAWAL_COLUMNS = (
    "account_id", "withdrawal_id", "request_digest", "amount", "currency", "hold_id", "status",
    "created_ms", "updated_ms",
)  # fmt: skip


@dataclass(slots=True)
class DeliveryRow:
    """One accepted delivery report (a row of `market_deliveries`)."""

    provider: str
    report_id: str
    request_digest: bytes
    instrument: str
    buyer: str
    tokens: int
    released: int
    fee: int
    transaction_id: str
    time_ms: int

    def as_record(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in DELIVERY_COLUMNS)

    def view(self) -> DeliveryView:
        return DeliveryView(
            report_id=self.report_id, instrument=self.instrument, buyer=self.buyer,
            provider=self.provider, tokens=self.tokens, released=self.released, fee=self.fee,
            paid=self.released - self.fee, transaction_id=self.transaction_id, time_ms=self.time_ms,
        )  # fmt: skip


def delivery_from_record(r: asyncpg.Record) -> DeliveryRow:
    return DeliveryRow(**{c: r[c] for c in DELIVERY_COLUMNS})


@dataclass(slots=True)
class WithdrawalRow:
    """The state of one withdrawal (a row of `market_withdrawals`)."""

    account_id: str
    withdrawal_id: str
    request_digest: bytes
    amount: int
    currency: str
    hold_id: str
    status: str  # pending | paid | failed
    created_ms: int
    updated_ms: int

    def as_record(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in WITHDRAWAL_COLUMNS)

    def view(self) -> WithdrawalView:
        return WithdrawalView(
            account_id=self.account_id, withdrawal_id=self.withdrawal_id, amount=self.amount,
            currency=self.currency, status=self.status, created_at_ms=self.created_ms,
            updated_at_ms=self.updated_ms,
        )  # fmt: skip


def withdrawal_from_record(r: asyncpg.Record) -> WithdrawalRow:
    return WithdrawalRow(**{c: r[c] for c in WITHDRAWAL_COLUMNS})


def settlement_from_record(r: asyncpg.Record) -> SettlementView:
    return SettlementView(
        instrument=r["instrument"], reason=r["reason"], time_ms=r["time_ms"],
        entitlement_burned=r["entitlement_burned"], refunded=r["refunded"],
        capacity_burned=r["capacity_burned"],
    )  # fmt: skip


def order_from_record(r: asyncpg.Record) -> OrderRow:
    return OrderRow(
        order_id=r["order_id"],
        account_id=r["account_id"],
        client_order_id=r["client_order_id"],
        request_digest=r["request_digest"],
        instrument=r["instrument"],
        side=Side(r["side"]),
        order_type=OrderType(r["order_type"]),
        tif=None if r["tif"] is None else TimeInForce(r["tif"]),
        price=r["price"],
        quantity=r["quantity"],
        open_quantity=r["open_quantity"],
        filled_quantity=r["filled_quantity"],
        cancelled_quantity=r["cancelled_quantity"],
        status=r["status"],
        reject_reason=r["reject_reason"],
        hold_id=r["hold_id"],
        expire_at=r["expire_at"],
        created_ms=r["created_ms"],
        updated_ms=r["updated_ms"],
    )


def stage_market_batch(
    rows: BatchRows,
    *,
    journal: Sequence[tuple[int, int, bytes]],
    instruments: Sequence[tuple[Any, ...]],
    orders: Sequence[OrderRow],
    fills: Sequence[tuple[Any, ...]],
    deliveries: Sequence[DeliveryRow] = (),
    settlements: Sequence[SettlementView] = (),
    withdrawals: Sequence[WithdrawalRow] = (),
) -> None:
    """Stage one batch's market rows, written in the same statement as its ledger rows."""
    rows.insert(
        "market_instruments",
        (
            "symbol", "model", "window_start", "duration", "lot_size", "tick_size",
            "price_min", "price_max", "maker_fee_bps", "taker_fee_bps", "provider_fee_bps",
            "currency", "created_ms", "delivery_grace_seconds", "completion_weight",
            "dispute_period_seconds",
        ),
        instruments,
    )  # fmt: skip
    rows.insert("market_journal", ("seq", "time_ms", "body"), journal)
    rows.insert("market_fills", FILL_COLUMNS, fills)
    rows.insert(
        "market_orders",
        ORDER_COLUMNS,
        [o.as_record() for o in orders],
        on_conflict=_ORDER_UPSERT,
    )
    rows.insert("market_deliveries", DELIVERY_COLUMNS, [d.as_record() for d in deliveries])
    rows.insert(
        "market_settlements",
        (
            "instrument", "reason", "time_ms", "entitlement_burned", "refunded",
            "capacity_burned",
        ),
        [
            (
                s.instrument, s.reason, s.time_ms, s.entitlement_burned, s.refunded,
                s.capacity_burned,
            )
            for s in settlements
        ],
    )  # fmt: skip
    rows.insert(
        "market_withdrawals",
        WITHDRAWAL_COLUMNS,
        [w.as_record() for w in withdrawals],
        on_conflict="""ON CONFLICT (account_id, withdrawal_id)
            DO UPDATE SET status = EXCLUDED.status, updated_ms = EXCLUDED.updated_ms""",
    )


async def journal_from(
    conn: asyncpg.Connection, start: int = 0
) -> AsyncIterator[tuple[int, JournalEntry]]:
    """The journal entries from seq `start` on, in order (run it inside a transaction:
    a cursor)."""
    async for row in conn.cursor(
        "SELECT seq, body FROM market_journal WHERE seq >= $1 ORDER BY seq", start
    ):
        yield row["seq"], decode_entry(row["body"])


async def load_live_orders(conn: asyncpg.Connection) -> list[OrderRow]:
    rows = await conn.fetch("SELECT * FROM market_orders WHERE status = 'open' ORDER BY order_id")
    return [order_from_record(r) for r in rows]


async def next_order_id(conn: asyncpg.Connection) -> int:
    value: int = await conn.fetchval("SELECT coalesce(max(order_id), 0) + 1 FROM market_orders")
    return value


async def instrument_listed(conn: asyncpg.Connection, symbol: str) -> bool:
    """Whether `symbol` was ever listed (settled instruments stay listed)."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM market_instruments WHERE symbol = $1)", symbol
    )
    return found


async def load_terms(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch("SELECT * FROM market_instruments ORDER BY symbol"))


async def _rows_by_pairs(
    conn: asyncpg.Connection, table: str, columns: tuple[str, str], keys: Sequence[tuple[str, str]]
) -> list[asyncpg.Record]:
    """The rows of `table` whose two key `columns` match one of `keys`, in one query."""
    if not keys:
        return []
    a, b = columns
    return list(
        await conn.fetch(
            f"""SELECT t.* FROM {table} t
                  JOIN unnest($1::text[], $2::text[]) AS k(a, b) ON t.{a} = k.a AND t.{b} = k.b""",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
    )


async def find_orders(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], OrderRow]:
    """Orders already placed under these (account, client order id) keys."""
    rows = await _rows_by_pairs(conn, "market_orders", ("account_id", "client_order_id"), keys)
    found = [order_from_record(r) for r in rows]
    return {(o.account_id, o.client_order_id): o for o in found}


async def get_order(conn: asyncpg.Connection, account_id: str, order_id: int) -> OrderRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM market_orders WHERE order_id = $1 AND account_id = $2",
        order_id,
        account_id,
    )
    return None if row is None else order_from_record(row)


#: A fill's place in an account's list of fills.
FILL_KEY = "(time_ms, instrument, seq)"


async def get_order_by_client_id(
    conn: asyncpg.Connection, account_id: str, client_order_id: str
) -> OrderRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM market_orders WHERE account_id = $1 AND client_order_id = $2",
        account_id,
        client_order_id,
    )
    return None if row is None else order_from_record(row)


async def list_orders(
    conn: asyncpg.Connection,
    account_id: str,
    *,
    status: str | None,
    instrument: str | None,
    limit: int,
    keyset: Keyset = FIRST_PAGE,
) -> list[OrderRow]:
    """An account's orders by id, newest first (`keyset`: from where)."""
    where, order, key = keyset.sql("(order_id)", 5)
    rows = await conn.fetch(
        f"""SELECT * FROM market_orders
            WHERE account_id = $1
              AND ($2::text IS NULL OR status = $2)
              AND ($3::text IS NULL OR instrument = $3)
              AND {where}
            ORDER BY {order} LIMIT $4""",
        account_id,
        status,
        instrument,
        limit,
        *key,
    )
    return [order_from_record(r) for r in rows]


async def fills_for(
    conn: asyncpg.Connection,
    account_id: str,
    *,
    instrument: str | None = None,
    order_id: int | None = None,
    limit: int = 500,
    keyset: Keyset = FIRST_PAGE,
) -> list[FillView]:
    """An account's fills, newest first by (time, instrument, seq), from its own point of
    view (`keyset`: from where)."""
    where, order, key = keyset.sql(FILL_KEY, 5)
    rows = await conn.fetch(
        f"""SELECT * FROM market_fills
            WHERE (maker_account = $1 OR taker_account = $1)
              AND ($2::text IS NULL OR instrument = $2)
              AND ($3::bigint IS NULL OR maker_order_id = $3 OR taker_order_id = $3)
              AND {where}
            ORDER BY {order} LIMIT $4""",
        account_id,
        instrument,
        order_id,
        limit,
        *key,
    )
    views: list[FillView] = []
    for r in rows:
        aggressor = Side(r["aggressor_side"])
        # One account may be on both sides only if self-trade prevention failed; it cannot.
        is_taker = r["taker_account"] == account_id and (
            order_id is None or r["taker_order_id"] == order_id
        )
        side = aggressor if is_taker else (Side.SELL if aggressor is Side.BUY else Side.BUY)
        views.append(
            FillView(
                instrument=r["instrument"],
                seq=r["seq"],
                time_ms=r["time_ms"],
                order_id=r["taker_order_id"] if is_taker else r["maker_order_id"],
                side=side,
                role="taker" if is_taker else "maker",
                price=r["price"],
                quantity=r["quantity"],
                fee=r["buyer_fee"] if side is Side.BUY else 0,
            )
        )
    await _add_client_ids(conn, account_id, views)
    return views


async def _add_client_ids(conn: asyncpg.Connection, account_id: str, views: list[FillView]) -> None:
    """Fill in each fill's `client_order_id` from the account's orders (one query)."""
    if not views:
        return
    ids = sorted({v.order_id for v in views})
    rows = await conn.fetch(
        """SELECT order_id, client_order_id FROM market_orders
            WHERE account_id = $1 AND order_id = ANY($2::bigint[])""",
        account_id,
        ids,
    )
    by_id = {r["order_id"]: r["client_order_id"] for r in rows}
    for view in views:
        view.client_order_id = by_id.get(view.order_id, "")


async def recent_trades(
    conn: asyncpg.Connection, instrument: str, limit: int, keyset: Keyset = FIRST_PAGE
) -> list[Any]:
    """An instrument's trades by seq, newest first (`keyset`: from where)."""
    where, order, key = keyset.sql("(seq)", 3)
    return list(
        await conn.fetch(
            f"""SELECT seq, time_ms, price, quantity, aggressor_side FROM market_fills
                WHERE instrument = $1 AND {where} ORDER BY {order} LIMIT $2""",
            instrument,
            limit,
            *key,
        )
    )


# -- deliveries, settlements, withdrawals --------------------------------------------------


async def find_deliveries(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], DeliveryRow]:
    """Deliveries already accepted under these (provider, report id) keys."""
    rows = await _rows_by_pairs(conn, "market_deliveries", ("provider", "report_id"), keys)
    found = [delivery_from_record(r) for r in rows]
    return {(d.provider, d.report_id): d for d in found}


async def deliveries_for(
    conn: asyncpg.Connection,
    account_id: str,
    *,
    instrument: str | None = None,
    limit: int = 500,
    keyset: Keyset = FIRST_PAGE,
) -> list[DeliveryRow]:
    """Deliveries an account made (provider) or received (buyer), newest first by
    (time, transaction id) (`keyset`: from where)."""
    where, order, key = keyset.sql("(time_ms, transaction_id)", 4)
    rows = await conn.fetch(
        f"""SELECT * FROM market_deliveries
            WHERE (provider = $1 OR buyer = $1)
              AND ($2::text IS NULL OR instrument = $2)
              AND {where}
            ORDER BY {order} LIMIT $3""",
        account_id,
        instrument,
        limit,
        *key,
    )
    return [delivery_from_record(r) for r in rows]


async def delivered_totals(
    conn: asyncpg.Connection, account_id: str
) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(instrument, buyer, provider) -> (tokens delivered, escrow released), for an account
    on either side."""
    rows = await conn.fetch(
        """SELECT instrument, buyer, provider, sum(tokens) AS tokens, sum(released) AS released
             FROM market_deliveries
            WHERE provider = $1 OR buyer = $1
            GROUP BY instrument, buyer, provider""",
        account_id,
    )
    return {
        (r["instrument"], r["buyer"], r["provider"]): (int(r["tokens"]), int(r["released"]))
        for r in rows
    }


async def load_delivered(
    conn: asyncpg.Connection, symbols: Sequence[str]
) -> dict[tuple[str, str, str], Delivered]:
    """(instrument, buyer, provider) -> what it delivered so far, on these instruments
    (`InstrumentState.delivered`): every delivery (gateway charges, vouchers, reports
    settled or paid) and every report still pending or disputed, whose split is fixed;
    a refunded report is in neither."""
    rows = await conn.fetch(
        """SELECT instrument, buyer, provider, sum(tokens) AS tokens,
                  sum(released) AS released, sum(fee) AS fee
             FROM (SELECT instrument, buyer, provider, tokens, released, fee
                     FROM market_deliveries WHERE instrument = ANY($1::text[])
                   UNION ALL
                   SELECT instrument, buyer, provider, tokens, released, fee
                     FROM market_reports
                    WHERE status IN ('pending', 'disputed') AND instrument = ANY($1::text[])
                  ) AS d
            GROUP BY instrument, buyer, provider""",
        list(symbols),
    )
    return {
        (r["instrument"], r["buyer"], r["provider"]): Delivered(
            tokens=int(r["tokens"]), released=int(r["released"]), fee=int(r["fee"])
        )
        for r in rows
    }


async def load_settlements(conn: asyncpg.Connection) -> list[SettlementView]:
    rows = await conn.fetch("SELECT * FROM market_settlements ORDER BY instrument")
    return [settlement_from_record(r) for r in rows]


async def find_withdrawals(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], WithdrawalRow]:
    """Withdrawals under these (account, withdrawal id) keys."""
    rows = await _rows_by_pairs(conn, "market_withdrawals", ("account_id", "withdrawal_id"), keys)
    found = [withdrawal_from_record(r) for r in rows]
    return {(w.account_id, w.withdrawal_id): w for w in found}


async def list_withdrawals(
    conn: asyncpg.Connection,
    *,
    account_id: str | None,
    status: str | None,
    limit: int,
    keyset: Keyset = FIRST_PAGE,
) -> list[WithdrawalRow]:
    """Withdrawals of one account (or of all, for the operator), newest first by
    (created, account, withdrawal id) (`keyset`: from where)."""
    where, order, key = keyset.sql("(created_ms, account_id, withdrawal_id)", 4)
    rows = await conn.fetch(
        f"""SELECT * FROM market_withdrawals
            WHERE ($1::text IS NULL OR account_id = $1)
              AND ($2::text IS NULL OR status = $2)
              AND {where}
            ORDER BY {order} LIMIT $3""",
        account_id,
        status,
        limit,
        *key,
    )
    return [withdrawal_from_record(r) for r in rows]
