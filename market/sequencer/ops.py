"""What the API queues: one tagged union of operations, and the outcome each gets back.

Every op is an `Op[T]`, T being what it produces once its batch is durable
(`PlaceOp` is an `Op[OrderView]`), so `Sequencer.submit(op: Op[T]) -> T` is typed.
`dispatch.dispatch` handles the union `AnyOp` with one `match` (as msgspec's asyncio-kv
example does its requests).

An outcome travels one way: a handler returns its value or raises a `DomainError`;
the batch turns that into `Done(value)` or `Failed(error)`, the future carries the
outcome (never an exception), and `submit` unwraps it (returns or raises).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from schemas.disputes import DisputeRequest, DisputeView, Voucher, VoucherView
from schemas.errors import DomainError
from schemas.gateway import CallMark, GatewayDelivery, GatewayReceipt
from schemas.trading import (
    AmendOrder,
    CancelAfterView,
    CancelledOrders,
    CreateInstrument,
    DeliveryReport,
    DeliveryView,
    Deposit,
    InstrumentView,
    LedgerReceipt,
    Listing,
    OrderView,
    PlaceOrder,
    SettlementView,
    WithdrawalRequest,
    WithdrawalView,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Op(Generic[T_co]):
    """Base of every operation; `T_co` is what it produces."""

    __slots__ = ()


@dataclass(slots=True)
class CreateInstrumentOp(Op[InstrumentView]):
    request: CreateInstrument


@dataclass(slots=True)
class DepositOp(Op[LedgerReceipt]):
    request: Deposit


@dataclass(slots=True)
class ListingOp(Op[LedgerReceipt]):
    account_id: str
    request: Listing


@dataclass(slots=True)
class PlaceOp(Op[OrderView]):
    account_id: str
    request: PlaceOrder


@dataclass(slots=True)
class CancelOp(Op[OrderView]):
    account_id: str
    order_id: int


@dataclass(slots=True)
class AmendOp(Op[OrderView]):
    account_id: str
    order_id: int
    request: AmendOrder


@dataclass(slots=True)
class CancelAllOp(Op[CancelledOrders]):
    account_id: str
    instrument: str | None


@dataclass(slots=True)
class DeliveryOp(Op[DeliveryView]):
    """A provider reports tokens served to a buyer."""

    provider_account: str
    request: DeliveryReport


@dataclass(slots=True)
class CloseInstrumentOp(Op[SettlementView]):
    """Close an instrument's window now and settle it (operator)."""

    symbol: str


@dataclass(slots=True)
class WithdrawOp(Op[WithdrawalView]):
    """An account asks to withdraw available cash."""

    account_id: str
    request: WithdrawalRequest


@dataclass(slots=True)
class WithdrawalOutcomeOp(Op[WithdrawalView]):
    """The operator marks a withdrawal paid (posted to bank) or failed (hold voided)."""

    account_id: str
    withdrawal_id: str
    paid: bool


@dataclass(slots=True)
class GatewayChargeOp(Op[list[GatewayDelivery]]):
    """The gateway's metered calls since its last flush: their receipts, charged as one
    delivery per (buyer, provider, instrument) (`market.sequencer.delivery`). `closes`:
    the receipt ids whose progress marks (`gateway_calls`) go with this op's commit (the
    calls whose progress was recorded, or, at a restart, whose receipt already was).

    `resubmitted`: these receipts may have been submitted before (a retry after a commit
    that failed or whose outcome is unknown, or calls a crash cut, closed at a restart), so
    their deliveries are looked up first and one that committed after all is not charged
    again. A first submission skips that look-up: its receipt ids are new, so no delivery
    of them can exist, and the look-up would wait for every commit in flight (it reads on
    the ledger writer's connection) and add a round trip to every charge. (Were it wrong,
    the ledger's unique transaction id would still refuse a second delivery: the batch
    fails, nothing is charged twice.)"""

    receipts: tuple[GatewayReceipt, ...]
    closes: tuple[str, ...] = ()
    resubmitted: bool = False


@dataclass(slots=True)
class GatewayProgressOp(Op[int]):
    """The gateway's streaming calls in flight, as far as each has come: their marks
    replace what `gateway_calls` held of them (`market.sequencer.calls`). Produces how
    many were recorded."""

    marks: tuple[CallMark, ...]


@dataclass(slots=True)
class CancelAfterOp(Op[CancelAfterView]):
    """Arm, refresh (timeout_ms > 0) or disarm (0) the account's dead-man switch."""

    account_id: str
    timeout_ms: int


@dataclass(slots=True)
class VoucherOp(Op[VoucherView]):
    """A provider submits a buyer's voucher whose signature the API checked
    (`market.vouchers_api`): escrow is released up to its tokens at once."""

    provider_account: str
    voucher: Voucher
    signature: bytes


@dataclass(slots=True)
class DisputeOp(Op[DisputeView]):
    """A buyer disputes a provider's pending report."""

    buyer_account: str
    request: DisputeRequest


@dataclass(slots=True)
class ResolveDisputeOp(Op[DisputeView]):
    """The operator resolves a dispute: pay the provider, or refund the buyer."""

    dispute_id: str
    pay: bool


@dataclass(slots=True)
class TickOp(Op[None]):
    """Nothing but the passing of time: lets GTD orders expire on a quiet book."""


#: The tagged union the sequencer handles (the dataclass is the tag).
AnyOp = (
    CreateInstrumentOp
    | DepositOp
    | ListingOp
    | PlaceOp
    | CancelOp
    | AmendOp
    | CancelAllOp
    | DeliveryOp
    | CloseInstrumentOp
    | WithdrawOp
    | WithdrawalOutcomeOp
    | GatewayChargeOp
    | GatewayProgressOp
    | CancelAfterOp
    | VoucherOp
    | DisputeOp
    | ResolveDisputeOp
    | TickOp
)


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The op committed (or was an idempotent replay): its value."""

    value: T

    def unwrap(self) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class Failed:
    """The op was refused, or its batch did not commit: the error to answer."""

    error: DomainError

    def unwrap(self) -> NoReturn:
        raise self.error


Outcome = Done[T] | Failed


def type_argument(cls: type, generic: type) -> Any:
    """T of `cls`'s `generic[T]` base (`Op[T]`, `Query[T]`): the type its answer decodes
    into. A string there (a forward reference, which msgspec cannot decode) is refused."""
    for base in getattr(cls, "__orig_bases__", ()):
        if typing.get_origin(base) is generic:
            (argument,) = typing.get_args(base)
            if isinstance(argument, typing.ForwardRef | str):
                raise TypeError(f"{cls.__name__} names its answer as a string: {argument}")
            return argument
    raise TypeError(f"{cls.__name__} does not say what it answers")
