"""The sequencer: the one writer of every state change of the exchange.

A package by stage (see `core` for the path of one batch):

- `core`: the loop — bounded queue, group commit, rebuild after a failed commit,
  answering, publishing — and `dispatch`, the one `match` over the ops;
- `ops`: the op types (`Op[T]`, one tagged union) and their outcomes;
- `batch`: the batch context the handlers share;
- `orders`: pre-trade check and engine; `settle`: engine events -> ledger
  transactions and order rows; `treasury`: deposits, listings, deliveries,
  withdrawals; `lifecycle`: instrument listing, window close, settlement;
- `state`: the market's memory (one `InstrumentState` per instrument);
  `recovery`: that memory rebuilt from the database; `views`: reads of it;
- `disputes`: providers' reports pending for their dispute period, disputes and their
  resolution; `vouchers`: buyer vouchers; `delivery`: the gateway's charges;
- `errors`: what the sequencer refuses.
"""

from market.sequencer.core import MAX_OPEN_ORDERS, QUEUE_MAX, Sequencer, SequencerState
from market.sequencer.dispatch import dispatch
from market.sequencer.errors import (
    EntitlementExceeded,
    ExchangeBusy,
    IdempotencyConflict,
    InstrumentSettled,
    InvalidInstrument,
    OrderRefused,
    SequencerStopped,
    TransactionRefused,
    UnknownOrder,
    UnknownWithdrawal,
    WithdrawalSettled,
)
from market.sequencer.ops import (
    AmendOp,
    AnyOp,
    CancelAfterOp,
    CancelAllOp,
    CancelOp,
    CloseInstrumentOp,
    CreateInstrumentOp,
    DeliveryOp,
    DepositOp,
    DisputeOp,
    Done,
    Failed,
    ListingOp,
    Op,
    Outcome,
    PlaceOp,
    ResolveDisputeOp,
    TickOp,
    VoucherOp,
    WithdrawalOutcomeOp,
    WithdrawOp,
)
from market.sequencer.state import InstrumentState, MarketState
from market.sequencer.treasury import MAX_LISTED_CAPACITY
from market.snapshot_writer import wall_clock_ms

__all__ = [
    "MAX_LISTED_CAPACITY",
    "MAX_OPEN_ORDERS",
    "QUEUE_MAX",
    "AmendOp",
    "AnyOp",
    "CancelAfterOp",
    "CancelAllOp",
    "CancelOp",
    "CloseInstrumentOp",
    "CreateInstrumentOp",
    "DeliveryOp",
    "DepositOp",
    "DisputeOp",
    "Done",
    "EntitlementExceeded",
    "ExchangeBusy",
    "Failed",
    "IdempotencyConflict",
    "InstrumentSettled",
    "InstrumentState",
    "InvalidInstrument",
    "ListingOp",
    "MarketState",
    "Op",
    "OrderRefused",
    "Outcome",
    "PlaceOp",
    "ResolveDisputeOp",
    "Sequencer",
    "SequencerState",
    "SequencerStopped",
    "TickOp",
    "TransactionRefused",
    "UnknownOrder",
    "UnknownWithdrawal",
    "VoucherOp",
    "WithdrawOp",
    "WithdrawalOutcomeOp",
    "WithdrawalSettled",
    "dispatch",
    "wall_clock_ms",
]
