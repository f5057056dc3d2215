"""Trading API request and response forms (REST), shared by the server and the client.

Prices and quantities are integers: quantity in tokens (whole lots), price in
minor currency units per lot. Times are Unix milliseconds, named `..._ms`; an
instrument's window and the durations measured against it are seconds, `..._s`
(`schemas.wire_time`: the convention, and the old request names still accepted).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.market import OrderType, Side, StpMode, TimeInForce
from schemas.wire_time import take_alias

Amount = Annotated[int, msgspec.Meta(gt=0, le=2**62)]
#: The most token capacity one provider may have listed on one instrument
#: (`market.sequencer.treasury`), and so the largest lot that could ever be listed whole.
MAX_LISTED_TOKENS = 10**15
LotSize = Annotated[int, msgspec.Meta(gt=0, le=MAX_LISTED_TOKENS)]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=366 * 86_400)]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]
CompletionWeight = Annotated[int, msgspec.Meta(ge=1, le=1000)]
# Patterns end in `(?!\n)$`: Python's `$` also matches before a final newline, so
# `^...$` alone would let "id\n" through (msgspec matches with `re.search`).
ClientId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+(?!\n)$")
]
Symbol = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+(?!\n)$")
]
AccountId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+(?!\n)$")
]

MAX_BATCH_ORDERS = 50


class CreateInstrument(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    symbol: Symbol
    lot_size: LotSize
    tick_size: Amount
    price_min: Amount
    price_max: Amount
    maker_fee_bps: Bps = 0
    taker_fee_bps: Bps = 0
    provider_fee_bps: Bps = 0
    #: Deliveries are still accepted this long after the window ends; then it settles.
    delivery_grace_s: Seconds = 0
    #: A window that has already started is refused (`window_started`) unless this is
    #: true: listing into a running window is an operator's explicit choice. A window
    #: that has ended is always refused (`window_over`).
    allow_started: bool = False
    #: What a completion token counts for: tokens charged = prompt + weight * completion
    #: (1: both alike, the upstream's total_tokens). Providers price output higher.
    completion_weight: CompletionWeight = 1
    #: A provider's own delivery report is pending (the buyer may dispute it) this long
    #: before it settles. None: the delivery grace.
    dispute_period_s: Seconds | None = None
    #: Deprecated names of `delivery_grace_s` and `dispute_period_s` (one version).
    delivery_grace_seconds: Seconds | None = None
    dispute_period_seconds: Seconds | None = None

    def __post_init__(self) -> None:
        take_alias(self, "delivery_grace_seconds", "delivery_grace_s", unset=0)
        take_alias(self, "dispute_period_seconds", "dispute_period_s")


class InstrumentView(msgspec.Struct, kw_only=True):
    symbol: str
    model: str
    window_start_s: int  # Unix seconds, as in the symbol
    duration_s: int
    lot_size: int
    tick_size: int
    price_min: int
    price_max: int
    maker_fee_bps: int
    taker_fee_bps: int
    provider_fee_bps: int
    currency: str
    state: str  # open | halted | closed (trading over, deliveries in grace) | settled
    delivery_grace_s: int = 0
    completion_weight: int = 1
    dispute_period_s: int = 0


class CurrencyView(msgspec.Struct, kw_only=True):
    """A currency of the exchange: amounts on the wire are integers of its minor units,
    `scale` digits of them per unit (USD 2: 2109875 is $21,098.75)."""

    code: str
    scale: int
    symbol: str


class Deposit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credit cash to an account (operator). `deposit_id` makes it idempotent."""

    deposit_id: ClientId
    account_id: AccountId
    amount: Amount


class Listing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider lists token capacity of an instrument. `listing_id` makes it idempotent."""

    listing_id: ClientId
    instrument: Symbol
    quantity: Amount


class LedgerReceipt(msgspec.Struct, kw_only=True):
    """The ledger transaction a deposit or listing became."""

    transaction_id: str
    ledger_index: int


class PlaceOrder(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A new order. `client_order_id` is the owner's idempotency key."""

    client_order_id: ClientId
    instrument: Symbol
    side: Side
    quantity: Amount
    price: Amount | None = None
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce | None = None  # default: GTC for limit, IOC for market
    expire_at_ms: TimeMs | None = None  # GTD only: Unix ms when it expires
    post_only: bool = False
    stp: StpMode = StpMode.CANCEL_NEWEST
    #: A market buy only: spend at most this on the tokens (fees on top); it buys what
    #: that pays for at the asks, at most `quantity`.
    max_notional: Amount | None = None
    #: Deprecated name of `expire_at_ms` (one version).
    expire_at: TimeMs | None = None

    def __post_init__(self) -> None:
        take_alias(self, "expire_at", "expire_at_ms")


class PlaceOrders(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    orders: Annotated[list[PlaceOrder], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ORDERS)]


class AmendOrder(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """New price and/or new open quantity of a resting order."""

    price: Amount | None = None
    quantity: Amount | None = None


class CancelAll(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    instrument: Symbol | None = None


class FillView(msgspec.Struct, kw_only=True):
    instrument: str
    seq: int
    time_ms: int
    order_id: int
    side: Side
    role: str  # "maker" | "taker"
    price: int
    quantity: int
    fee: int  # what this account paid in fees on this fill (buyer side; providers pay on delivery)
    client_order_id: str = ""  # the client id of this account's order (`order_id`)


class OrderView(msgspec.Struct, kw_only=True):
    order_id: int
    client_order_id: str
    instrument: str
    side: Side
    order_type: OrderType
    tif: TimeInForce | None
    price: int | None
    quantity: int
    open_quantity: int
    filled_quantity: int
    cancelled_quantity: int
    status: str  # open | filled | cancelled | expired | rejected
    reject_reason: str | None = None
    created_at_ms: int
    updated_at_ms: int
    fills: list[FillView] = []


class OrderResult(msgspec.Struct, kw_only=True):
    """One item of a batch placement: the order, or why it was refused."""

    client_order_id: str
    order: OrderView | None = None
    code: str | None = None
    message: str | None = None


class CancelAfter(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Arm the caller's dead-man switch for `timeout_ms` (refresh by calling again), or
    disarm it with 0; at most a day."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)]


class CancelAfterView(msgspec.Struct, kw_only=True):
    """The switch after the call: armed until `deadline_ms`, or not armed (null)."""

    deadline_ms: int | None
    server_time_ms: int


class ServerTime(msgspec.Struct, kw_only=True):
    """The server's clock, the one signed requests are checked against (within 30 s)."""

    server_time_ms: int


class CancelledOrders(msgspec.Struct, kw_only=True):
    cancelled: list[int]


class BalanceView(msgspec.Struct, kw_only=True):
    asset: str
    kind: str
    account: str
    available: int
    held: int
    total: int


class BookLevel(msgspec.Struct, array_like=True):
    price: int
    quantity: int
    orders: int


class BookView(msgspec.Struct, kw_only=True):
    instrument: str
    seq: int
    bids: list[BookLevel]
    asks: list[BookLevel]


class TradeView(msgspec.Struct, kw_only=True):
    instrument: str
    seq: int
    time_ms: int
    price: int
    quantity: int
    aggressor_side: Side


# -- delivery, settlement, withdrawals ---------------------------------------------------


class DeliveryReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider served `tokens` of `instrument` to `buyer`. `report_id` makes it idempotent."""

    report_id: ClientId
    instrument: Symbol
    buyer: AccountId
    tokens: Amount


class DeliveryView(msgspec.Struct, kw_only=True):
    """A delivery: tokens burned, escrow released, provider fee, provider paid.

    A provider's own report is `pending` until its dispute period ends (`settles_at_ms`):
    its tokens and escrow are held, `transaction_id` is the hold's; then `settled` (the
    delivery's transaction), or `disputed` by the buyer and resolved by the operator
    (`paid` or `refunded`). Vouchers and gateway deliveries are `settled` at once."""

    report_id: str
    instrument: str
    buyer: str
    provider: str
    tokens: int
    released: int
    fee: int
    paid: int
    transaction_id: str
    time_ms: int
    status: str = "settled"  # pending | settled | disputed | paid | refunded
    settles_at_ms: int | None = None  # a pending report: when its dispute period ends
    dispute_id: str | None = None


class EntitlementView(msgspec.Struct, kw_only=True):
    """What a buyer holds of one provider's tokens on one instrument, and what was delivered."""

    instrument: str
    buyer: str
    provider: str
    entitlement: int  # tokens still to be delivered
    escrow: int  # cash paid for them, held until delivery (refunded at settlement)
    delivered: int  # tokens delivered so far
    released: int  # escrow released to the provider so far (before its fee)
    #: Of a provider's reports still pending or disputed: tokens and escrow held for them
    #: (not in `entitlement` and `escrow`, which are what is free).
    pending_tokens: int = 0
    pending_escrow: int = 0


class CloseInstrument(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    instrument: Symbol


class SettlementView(msgspec.Struct, kw_only=True):
    """An instrument's settlement: what was burned and refunded when its window closed."""

    instrument: str
    reason: str  # window (the clock passed window end + grace) | operator
    time_ms: int
    entitlement_burned: int
    refunded: int
    capacity_burned: int


class WithdrawalRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Withdraw available cash. `withdrawal_id` makes it idempotent."""

    withdrawal_id: ClientId
    amount: Amount


class WithdrawalView(msgspec.Struct, kw_only=True):
    account_id: str
    withdrawal_id: str
    amount: int
    currency: str
    status: str  # pending | paid | failed
    created_at_ms: int
    updated_at_ms: int
