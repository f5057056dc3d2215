"""Market wire forms: instruments, commands to the matching engine, its events, snapshots.

Every price and quantity is an `int`: quantity in tokens (a multiple of the
instrument's lot), price in minor currency units per lot (a multiple of the
tick). Times are integers in the caller's unit (the sequencer uses Unix
milliseconds); the engine only compares them and never reads a clock.

These are formats of record: commands and `Instrument` are the journal's entries and
snapshots hold books, so their names stay (`time`, `expire_at`, `window_start`,
`duration`) for old records to replay. The API sends views of them with the wire's
names (`time_ms`, `expire_at_ms`, `window_start_s`: `schemas.wire_time`).

Order ids are assigned by the sequencer and arrive with the command, so a
replay assigns the same ids. Client order ids are chosen by the owner.

Events are positional-capable Structs (not `kw_only`) so that the engine's hot
path can build them positionally, which is measurably faster; everywhere else,
build them with keywords. `gc=False` is safe because they hold only scalars.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

# --------------------------------------------------------------------------- enums


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "gtc"  # good till cancelled: the remainder rests
    IOC = "ioc"  # immediate or cancel: fill what you can, cancel the rest
    FOK = "fok"  # fill or kill: all of it now, or reject before any fill
    GTD = "gtd"  # good till date: rests until `expire_at`


class StpMode(StrEnum):
    """Self-trade prevention, chosen by the incoming (taker) order.

    When the taker meets a resting order of the same owner:
    - cancel_newest: cancel the taker's remainder; the resting order stays.
    - cancel_oldest: cancel the resting order, keep matching.
    - cancel_both: cancel the resting order and the taker's remainder.
    - decrement_and_cancel: reduce both by the smaller open quantity (each
      reduction is an `OrderCancelled` with the reduced amount); an order whose
      open quantity reaches zero is done; keep matching while the taker has any.
    """

    CANCEL_NEWEST = "cancel_newest"
    CANCEL_OLDEST = "cancel_oldest"
    CANCEL_BOTH = "cancel_both"
    DECREMENT_AND_CANCEL = "decrement_and_cancel"


class TradingState(StrEnum):
    OPEN = "open"  # everything allowed
    HALTED = "halted"  # new orders and amends rejected; cancels allowed
    CLOSED = "closed"  # terminal: all commands rejected; open orders were cancelled


class RejectReason:
    """Stable reject codes carried by `OrderRejected.reason`."""

    UNKNOWN_INSTRUMENT: Final = "unknown_instrument"
    INSTRUMENT_HALTED: Final = "instrument_halted"
    INSTRUMENT_CLOSED: Final = "instrument_closed"
    UNKNOWN_ORDER: Final = "unknown_order"
    DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
    DUPLICATE_CLIENT_ORDER_ID: Final = "duplicate_client_order_id"
    PRICE_REQUIRED: Final = "price_required"
    PRICE_OFF_TICK: Final = "price_off_tick"
    PRICE_OUT_OF_BAND: Final = "price_out_of_band"
    QTY_INVALID: Final = "qty_invalid"
    QTY_OFF_LOT: Final = "qty_off_lot"
    INVALID_TIME_IN_FORCE: Final = "invalid_time_in_force"
    INVALID_EXPIRE_AT: Final = "invalid_expire_at"
    EXPIRE_AT_IN_PAST: Final = "expire_at_in_past"
    POST_ONLY_NOT_ALLOWED: Final = "post_only_not_allowed"
    POST_ONLY_WOULD_TAKE: Final = "post_only_would_take"
    FOK_UNFILLABLE: Final = "fok_unfillable"
    AMEND_NO_CHANGE: Final = "amend_no_change"
    AMEND_WOULD_CROSS: Final = "amend_would_cross"
    INVALID_STATE_CHANGE: Final = "invalid_state_change"


class CancelReason:
    """Stable codes carried by `OrderCancelled.reason`."""

    USER: Final = "user"  # a CancelOrder command
    MASS_CANCEL: Final = "mass_cancel"
    IOC_REMAINDER: Final = "ioc_remainder"  # unfilled rest of an IOC or market order
    SELF_TRADE: Final = "self_trade_prevented"
    INSTRUMENT_CLOSED: Final = "instrument_closed"


class CommandKind:
    """Which command an `OrderRejected` answers."""

    NEW: Final = "new"
    CANCEL: Final = "cancel"
    AMEND: Final = "amend"
    MASS_CANCEL: Final = "mass_cancel"
    SET_STATE: Final = "set_state"


# --------------------------------------------------------------------------- instrument


class Instrument(msgspec.Struct, kw_only=True, frozen=True):
    """A contract for `model` tokens delivered in [window_start, window_start + duration).

    `symbol` is `<model>/<window start>/<duration>` (see `market.instruments`).
    `window_start` is Unix seconds; `duration` is seconds.
    """

    symbol: str
    model: str
    window_start: int
    duration: int
    lot_size: int  # tokens per lot; every quantity is a multiple of it
    tick_size: int  # price increment; every price is a multiple of it
    price_min: int  # inclusive price band
    price_max: int
    state: TradingState = TradingState.OPEN


# --------------------------------------------------------------------------- commands


class NewOrder(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="new_order"):
    """Place an order.

    `price` is the limit for a limit order (required) and the protection cap
    for a market order (optional: without it, the band edge on the far side).
    `tif` defaults to GTC for a limit order and IOC for a market order; a market
    order never rests, so its time in force must be IOC or FOK.
    `expire_at` is required for GTD and forbidden otherwise.
    `post_only` is allowed only on GTC/GTD limit orders.
    """

    instrument: str
    order_id: int
    owner: str
    side: Side
    quantity: int
    time: int
    price: int | None = None
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce | None = None
    expire_at: int | None = None
    post_only: bool = False
    stp: StpMode = StpMode.CANCEL_NEWEST
    client_order_id: str | None = None


class CancelOrder(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="cancel_order"):
    instrument: str
    order_id: int
    owner: str
    time: int


class AmendOrder(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="amend_order"):
    """Change a resting order's price and/or open quantity.

    `quantity` is the new *open* quantity (what is left to fill), not the total.
    A decrease at the same price keeps time priority; a price change or an
    increase moves the order to the back of its (new) level. A new price that
    would cross the opposite side is rejected (`amend_would_cross`): an amend
    never trades.
    """

    instrument: str
    order_id: int
    owner: str
    time: int
    price: int | None = None
    quantity: int | None = None


class MassCancel(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="mass_cancel"):
    """Cancel all open orders of `owner` (None: every owner) in `instrument` (None: all)."""

    time: int
    owner: str | None = None
    instrument: str | None = None


class SetTradingState(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="set_state"):
    """Open, halt or close an instrument. Closing cancels every open order; it is final."""

    instrument: str
    state: TradingState
    time: int


class AdvanceTime(msgspec.Struct, kw_only=True, frozen=True, gc=False, tag="advance_time"):
    """Tell every book that time has reached `time`, so resting GTD orders expire."""

    time: int


Command = NewOrder | CancelOrder | AmendOrder | MassCancel | SetTradingState | AdvanceTime


# --------------------------------------------------------------------------- events
#
# Every event carries `seq` (per instrument, from 1, gap-free; 0 only on a reject
# for an instrument the engine does not know), the command `time` and the
# `instrument` symbol. Field order is part of the contract (positional build).


class OrderAccepted(msgspec.Struct, frozen=True, gc=False, tag="accepted"):
    """An order entered the book's matching. `price` is the effective limit: the
    limit price, or a market order's protection limit (cap or band edge), so a
    buy hold can be computed as quantity / lot * price."""

    seq: int
    time: int
    instrument: str
    order_id: int
    owner: str
    client_order_id: str | None
    side: Side
    order_type: OrderType
    price: int
    quantity: int
    tif: TimeInForce
    expire_at: int | None
    post_only: bool
    stp: StpMode


class OrderRejected(msgspec.Struct, frozen=True, gc=False, tag="rejected"):
    """A command was refused; nothing changed. `order_id` is None for mass cancel
    and state changes."""

    seq: int
    time: int
    instrument: str
    command: str  # CommandKind
    order_id: int | None
    owner: str | None
    client_order_id: str | None
    reason: str  # RejectReason


class Fill(msgspec.Struct, frozen=True, gc=False, tag="fill"):
    """A trade of `quantity` tokens at the maker's `price`. `*_open` is what is
    left open of each order after this fill (0: that order is done)."""

    seq: int
    time: int
    instrument: str
    maker_order_id: int
    taker_order_id: int
    maker_owner: str
    taker_owner: str
    aggressor_side: Side
    price: int
    quantity: int
    maker_open: int
    taker_open: int


class OrderCancelled(msgspec.Struct, frozen=True, gc=False, tag="cancelled"):
    """`cancelled_quantity` of the order was cancelled; `open_quantity` is what
    stays open (non-zero only for a decrement under self-trade prevention).
    `price` is the order's limit (protection limit for a market order)."""

    seq: int
    time: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    price: int
    cancelled_quantity: int
    open_quantity: int
    reason: str  # CancelReason


class OrderExpired(msgspec.Struct, frozen=True, gc=False, tag="expired"):
    """A resting GTD order reached `expire_at`; its open quantity is released."""

    seq: int
    time: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    price: int
    expired_quantity: int


class OrderAmended(msgspec.Struct, frozen=True, gc=False, tag="amended"):
    """A resting order's price and/or open quantity changed.
    `priority_kept` is False when it moved to the back of its level."""

    seq: int
    time: int
    instrument: str
    order_id: int
    owner: str
    side: Side
    old_price: int
    new_price: int
    old_open_quantity: int
    new_open_quantity: int
    priority_kept: bool


class TradingStateChanged(msgspec.Struct, frozen=True, gc=False, tag="state_changed"):
    seq: int
    time: int
    instrument: str
    old_state: TradingState
    new_state: TradingState


Event = (
    OrderAccepted
    | OrderRejected
    | Fill
    | OrderCancelled
    | OrderExpired
    | OrderAmended
    | TradingStateChanged
)


# --------------------------------------------------------------------------- queries


class TopOfBook(msgspec.Struct, kw_only=True, frozen=True):
    instrument: str
    bid_price: int | None
    bid_quantity: int
    ask_price: int | None
    ask_quantity: int


class DepthLevel(msgspec.Struct, frozen=True, array_like=True):
    price: int
    quantity: int
    orders: int


class Depth(msgspec.Struct, kw_only=True, frozen=True):
    """Aggregated levels, best first on each side."""

    instrument: str
    seq: int  # the last event's seq this view reflects
    bids: list[DepthLevel]
    asks: list[DepthLevel]


class OpenOrder(msgspec.Struct, kw_only=True, frozen=True):
    instrument: str
    order_id: int
    owner: str
    client_order_id: str | None
    side: Side
    price: int
    quantity: int  # total ordered (after amends)
    open_quantity: int
    filled_quantity: int
    cancelled_quantity: int
    tif: TimeInForce
    expire_at: int | None


# --------------------------------------------------------------------------- snapshot


class RestingOrder(msgspec.Struct, array_like=True, gc=False, eq=False):
    """A resting order as the book holds it (mutable in memory, array-encoded in
    snapshots). Invariant: filled + open + cancelled == quantity.
    `eq=False`: compared by identity, which keeps `deque.remove` cheap."""

    order_id: int
    owner: str
    client_order_id: str | None
    side: Side
    price: int
    quantity: int
    open: int
    filled: int
    cancelled: int
    tif: TimeInForce
    expire_at: int | None
    stp: StpMode


class BookSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """Everything a book needs to resume exactly: canonical (the same book state
    gives the same bytes), so its SHA-256 is the book's state hash.

    `bids`/`asks` are in priority order (best level first, FIFO within a level).
    `client_order_ids` are the (owner, client order id) pairs used so far in
    this instrument, sorted.
    """

    version: int
    instrument: Instrument
    next_seq: int
    bids: list[RestingOrder]
    asks: list[RestingOrder]
    client_order_ids: list[tuple[str, str]]


class EngineSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    books: list[BookSnapshot]  # sorted by symbol
