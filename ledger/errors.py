"""Ledger errors. Each has a stable code; `ops.errors` maps kinds to statuses."""

from __future__ import annotations

from schemas.errors import DomainError, ErrorKind


class TransactionRejected(DomainError):
    """A transaction broke a ledger rule and was not applied (nothing of it was)."""

    code = "transaction_rejected"
    kind = ErrorKind.REJECTED


class InvalidTransaction(TransactionRejected):
    """The transaction is malformed: bad amounts, unknown hold, empty, ..."""

    code = "invalid_transaction"
    kind = ErrorKind.INVALID


class Unbalanced(TransactionRejected):
    """The entries of the transaction do not sum to zero for some asset."""

    code = "unbalanced"
    kind = ErrorKind.INVALID


class InsufficientFunds(TransactionRejected):
    """Applying the transaction would take a user account below zero."""

    code = "insufficient_funds"


class HoldClosed(TransactionRejected):
    """The hold has nothing left to post or void."""

    code = "hold_closed"


class HoldExpired(TransactionRejected):
    """The hold expired before this transaction's time."""

    code = "hold_expired"


class HoldExceeded(TransactionRejected):
    """The amount is more than the hold still reserves."""

    code = "hold_exceeded"


class UnknownHold(TransactionRejected):
    """No hold has this id."""

    code = "unknown_hold"
    kind = ErrorKind.NOT_FOUND


class DuplicateHold(TransactionRejected):
    """A hold with this id already exists."""

    code = "duplicate_hold"
    kind = ErrorKind.CONFLICT


class IdempotencyConflict(DomainError):
    """The transaction id was used before with a different body."""

    code = "idempotency_conflict"
    kind = ErrorKind.CONFLICT


class LedgerUnavailable(DomainError):
    """The ledger could not make the batch durable; nothing of it was applied."""

    code = "ledger_unavailable"
    kind = ErrorKind.UNAVAILABLE


class LedgerBusy(DomainError):
    """Another process already holds the ledger's single-writer lock."""

    code = "ledger_writer_busy"
    kind = ErrorKind.UNAVAILABLE


class LedgerCorrupt(DomainError):
    """The stored journal does not follow from itself (a gap or a foreign row)."""

    code = "ledger_corrupt"
    kind = ErrorKind.UNAVAILABLE
