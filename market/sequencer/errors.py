"""What the sequencer refuses, by stage: each a `DomainError` with a stable code;
`ops.errors` maps them to HTTP answers (the one place that does)."""

from __future__ import annotations

from ledger.errors import IdempotencyConflict, LedgerUnavailable
from market.errors import DuplicateInstrument, InvalidInstrument, UnknownInstrument
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "DuplicateInstrument",
    "EntitlementExceeded",
    "ExchangeBusy",
    "IdempotencyConflict",
    "InstrumentSettled",
    "InvalidInstrument",
    "LedgerUnavailable",
    "OrderRefused",
    "SequencerStopped",
    "TransactionRefused",
    "UnknownInstrument",
    "UnknownOrder",
    "UnknownWithdrawal",
    "WindowOver",
    "WindowStarted",
    "WithdrawalSettled",
]

# -- taking a command in ------------------------------------------------------------------


#: The answer to an op whose batch's commit failed or was cut off: it may be durable.
MAY_HAVE_COMMITTED = (
    "the batch could not be committed; retrying with the same ids is safe "
    "(had it committed after all, a retry returns its first outcome)"
)


class SequencerStopped(DomainError):
    code = "sequencer_stopped"
    kind = ErrorKind.UNAVAILABLE


class AnswerNotSent(DomainError):
    """The sequencer process could not send a request's answer (say, larger than NATS
    takes): whatever it was, a retry with the same ids gets the first outcome."""

    code = "answer_not_sent"
    kind = ErrorKind.UNAVAILABLE


class ExchangeBusy(DomainError):
    """The sequencer's queue is full: nothing of the request was queued; retry shortly."""

    code = "exchange_busy"
    kind = ErrorKind.UNAVAILABLE


# -- orders (pre-trade check and engine) ---------------------------------------------------


class UnknownOrder(DomainError):
    code = "unknown_order"
    kind = ErrorKind.NOT_FOUND


class OrderRefused(DomainError):
    """The engine or a pre-trade check refused a cancel or an amend."""

    code = "order_refused"
    kind = ErrorKind.REJECTED


# -- treasury and lifecycle ------------------------------------------------------------------


class TransactionRefused(DomainError):
    """A deposit or listing the ledger refused (its code says why)."""

    kind = ErrorKind.REJECTED


class InstrumentSettled(DomainError):
    """The instrument's window is closed and settled: nothing more happens on it."""

    code = "instrument_settled"
    kind = ErrorKind.REJECTED


class WindowOver(DomainError):
    """An instrument whose delivery window has already ended cannot be listed."""

    code = "window_over"
    kind = ErrorKind.REJECTED


class WindowStarted(DomainError):
    """An instrument whose window has started is listed only with `allow_started`."""

    code = "window_started"
    kind = ErrorKind.REJECTED


class EntitlementExceeded(DomainError):
    """A delivery report above what the buyer still holds of this provider (refused whole)."""

    code = "entitlement_exceeded"
    kind = ErrorKind.REJECTED


class UnknownWithdrawal(DomainError):
    code = "unknown_withdrawal"
    kind = ErrorKind.NOT_FOUND


class WithdrawalSettled(DomainError):
    """The withdrawal was already marked the other way (paid after failed, or the reverse)."""

    code = "withdrawal_settled"
    kind = ErrorKind.CONFLICT


# -- vouchers and disputes ---------------------------------------------------------------


class VoucherReplayed(DomainError):
    """A voucher that does not go beyond the buyer's last accepted one (tokens and version
    must both grow): a replay, or an older voucher."""

    code = "voucher_replayed"
    kind = ErrorKind.CONFLICT


class DeliveryClosed(DomainError):
    """A provider's report after the delivery grace: the instrument only waits for the
    reports already pending, then settles."""

    code = "delivery_closed"
    kind = ErrorKind.REJECTED


class ReportsPending(DomainError):
    """The operator's close of an instrument while reports are in their dispute period."""

    code = "reports_pending"
    kind = ErrorKind.CONFLICT


class UnknownReport(DomainError):
    code = "unknown_report"
    kind = ErrorKind.NOT_FOUND


class ReportNotDisputable(DomainError):
    """The report is no longer pending (settled, or disputed already)."""

    code = "report_not_disputable"
    kind = ErrorKind.CONFLICT


class UnknownDispute(DomainError):
    code = "unknown_dispute"
    kind = ErrorKind.NOT_FOUND


class DisputeResolved(DomainError):
    """The dispute was already resolved the other way."""

    code = "dispute_resolved"
    kind = ErrorKind.CONFLICT


class ReservedReportId(DomainError):
    """Report ids starting `gw:` or `voucher:` are the exchange's own (gateway charges,
    vouchers) in the same namespace as providers' reports."""

    code = "reserved_report_id"
    kind = ErrorKind.INVALID


class VoucherNotYours(DomainError):
    """A voucher names another provider than the one submitting it."""

    code = "voucher_not_yours"
    kind = ErrorKind.FORBIDDEN
