"""Which errors each route can answer: the table `ops.openapi` documents them from.

`ROUTE_ERRORS` maps `"METHOD /path"` (the OpenAPI path, e.g. `GET /v1/orders/{order_id}`)
to the errors that route itself raises, as `DomainError` classes (status from their kind
in `schemas.errors.STATUS_OF_KIND`, code from their `code`) or `(status, code)` pairs for
codes that are chosen at run time (a refused order's reason). What every route of a kind
can answer is not listed here but derived from the route (`ops.openapi`): 401 and 429
on signed routes, 403 `forbidden_role` behind a role guard, 400 `invalid_request` for
parameters and bodies, 413 for bodies, 503 `database_unavailable` everywhere.

A new route needs an entry (an empty tuple if it raises nothing of its own):
`tests/ops/test_openapi.py` fails for a route without one, and the conformance tests
(`tests/ops/test_openapi_conformance.py`, schemathesis) fail for a status a route answers
that its entry does not document.
"""

from __future__ import annotations

from typing import Final

from ledger.api import CheckpointNotFound, EntryNotFound
from ledger.audit.export import ExportEmpty
from ledger.errors import IdempotencyConflict, LedgerUnavailable
from ledger.log import LedgerRegressed
from ledger.merkle import MerkleRangeError
from market.accounts import (
    AccountNotFound,
    DuplicatePublicKey,
    InvalidAccountName,
    LastActiveKey,
    SigningKeyNotFound,
    TooManyKeys,
)
from market.accounts_api import PublicKeyRequired
from market.api import ExchangeNotRunning, UnknownAccount, WrongSide
from market.auth import ForbiddenRole
from market.clearing.reports import InvalidReportQuery, ReportForbidden, UnknownReportInstrument
from market.errors import DuplicateInstrument, InvalidInstrument, InvalidSymbol, UnknownInstrument
from market.gateway.endpoints import EndpointExists, EndpointNotFound, EndpointUnhealthy
from market.gateway.keys import InferenceKeyNotFound, TooManyInferenceKeys
from market.gateway.receipts import ReceiptNotDelivered, ReceiptNotFound
from market.keys import InvalidPublicKey
from market.pages import InvalidCursor
from market.sequencer.errors import (
    DisputeResolved,
    EntitlementExceeded,
    ExchangeBusy,
    InstrumentSettled,
    OrderRefused,
    ReportNotDisputable,
    ReportsPending,
    SequencerStopped,
    UnknownDispute,
    UnknownOrder,
    UnknownReport,
    UnknownWithdrawal,
    VoucherNotYours,
    VoucherReplayed,
    WindowOver,
    WindowStarted,
    WithdrawalSettled,
)
from market.sequencer.remote import BusUnavailable
from market.vouchers_api import (
    UnknownReportState,
    VoucherBadSignature,
    VoucherKeyNotBuyer,
    VoucherUnknownKey,
)
from ops.audit_api import AuditExportBusy
from ops.database import DatabaseUnreachable
from ops.ready import ExchangeNotReady
from schemas.errors import STATUS_OF_KIND, DomainError
from schemas.market import RejectReason

__all__ = ["OPENAI_ERRORS", "ROUTE_ERRORS", "ErrorSpec", "specs"]

#: (HTTP status, error code)
ErrorSpec = tuple[int, str]


def specs(*errors: type[DomainError] | ErrorSpec) -> tuple[ErrorSpec, ...]:
    """Error classes and (status, code) pairs as (status, code) pairs."""
    out: list[ErrorSpec] = []
    for error in errors:
        if isinstance(error, tuple):
            out.append(error)
        else:
            out.append((STATUS_OF_KIND[error.kind], error.code))
    return tuple(out)


def _refused(*codes: str) -> tuple[ErrorSpec, ...]:
    return tuple((STATUS_OF_KIND[OrderRefused.kind], code) for code in codes)


#: The sequencer (every route that reads its memory or submits to it).
_SEQ = specs(ExchangeNotRunning, ExchangeBusy, SequencerStopped, LedgerUnavailable)
#: A new order the engine or the pre-trade check refuses (422, the reason as the code).
_ORDER_REFUSALS = _refused(
    "insufficient_funds", "insufficient_capacity", RejectReason.UNKNOWN_INSTRUMENT,
    RejectReason.INSTRUMENT_HALTED, RejectReason.INSTRUMENT_CLOSED,
    RejectReason.DUPLICATE_CLIENT_ORDER_ID, RejectReason.PRICE_REQUIRED,
    RejectReason.PRICE_OFF_TICK, RejectReason.PRICE_OUT_OF_BAND, RejectReason.QTY_INVALID,
    RejectReason.QTY_OFF_LOT, RejectReason.INVALID_TIME_IN_FORCE,
    RejectReason.INVALID_EXPIRE_AT, RejectReason.EXPIRE_AT_IN_PAST,
    RejectReason.POST_ONLY_NOT_ALLOWED, RejectReason.POST_ONLY_WOULD_TAKE,
    RejectReason.FOK_UNFILLABLE, "no_liquidity", "max_notional_not_allowed", "instrument_settled",
    "too_many_open_orders",
)  # fmt: skip
_AMEND_REFUSALS = _refused(
    "insufficient_funds", "insufficient_capacity", RejectReason.AMEND_NO_CHANGE,
    RejectReason.AMEND_WOULD_CROSS, RejectReason.PRICE_OFF_TICK,
    RejectReason.PRICE_OUT_OF_BAND, RejectReason.QTY_INVALID, RejectReason.QTY_OFF_LOT,
    RejectReason.INSTRUMENT_HALTED, RejectReason.INSTRUMENT_CLOSED,
)  # fmt: skip
_LEDGER_REFUSALS = _refused("insufficient_funds", "invalid_transaction", "transaction_rejected")
_REPORT = specs(InvalidReportQuery)
#: The order routes check the role themselves (`market.api._trader`), not by a guard.
_TRADER = specs(ForbiddenRole)
_LEDGER_PROOF = specs(CheckpointNotFound, MerkleRangeError)
_WITHDRAWAL_OUTCOME = (*specs(UnknownWithdrawal, WithdrawalSettled), *_SEQ)

ROUTE_ERRORS: Final[dict[str, tuple[ErrorSpec, ...]]] = {
    "GET /health": specs(
        DatabaseUnreachable, (503, "exchange_unavailable"), BusUnavailable, LedgerRegressed
    ),
    # the public ledger
    "GET /v1/ledger/checkpoint": specs(CheckpointNotFound),
    "GET /v1/ledger/checkpoints": specs(CheckpointNotFound),
    "GET /v1/ledger/entries/{index}": specs(EntryNotFound),
    "GET /v1/ledger/proof/inclusion": _LEDGER_PROOF,
    "GET /v1/ledger/proof/consistency": _LEDGER_PROOF,
    "GET /v1/ledger/public-keys": (),
    # accounts
    "POST /v1/accounts": specs(
        PublicKeyRequired,
        InvalidPublicKey,
        (400, "weak_public_key"),
        InvalidAccountName,
        DuplicatePublicKey,
    ),
    "GET /v1/accounts/me": specs(AccountNotFound),
    "GET /v1/accounts/{account_id}": specs(AccountNotFound),
    "POST /v1/accounts/me/keys": specs(
        InvalidPublicKey, (400, "weak_public_key"), DuplicatePublicKey, TooManyKeys
    ),
    "DELETE /v1/accounts/me/keys/{key_id}": specs(SigningKeyNotFound, LastActiveKey),
    "DELETE /v1/accounts/{account_id}/keys/{key_id}": specs(SigningKeyNotFound),
    # instruments and market data
    "GET /v1/instruments": _SEQ,
    "POST /v1/instruments": (
        *specs(InvalidInstrument, InvalidSymbol, DuplicateInstrument, WindowOver, WindowStarted),
        *_SEQ,
    ),
    "GET /v1/instruments/{symbol}": (*specs(UnknownInstrument), *_SEQ),
    "GET /v1/book": (*specs(UnknownInstrument), *_SEQ),
    "GET /v1/trades": specs(UnknownInstrument, InvalidCursor),
    "GET /v1/time": (),
    "GET /v1/currencies": (),
    "GET /ready": specs(ExchangeNotReady, DatabaseUnreachable, ExchangeNotRunning, LedgerRegressed),
    "GET /metrics": (),
    "GET /v1/accounts": (),
    "GET /v1/settlements": _SEQ,
    "POST /v1/settlements": (*specs(UnknownInstrument, ReportsPending), *_SEQ),
    # money and capacity
    "POST /v1/deposits": (
        *specs(UnknownAccount, IdempotencyConflict, InstrumentSettled),
        *_LEDGER_REFUSALS,
        *_SEQ,
    ),
    "POST /v1/listings": (
        *specs(UnknownInstrument, IdempotencyConflict, InstrumentSettled),
        *_refused("instrument_not_open", "qty_off_lot", "capacity_limit"),
        *_LEDGER_REFUSALS,
        *_SEQ,
    ),
    "GET /v1/balances": _SEQ,
    "GET /v1/entitlements": _SEQ,
    # orders
    "POST /v1/orders": (
        *_TRADER,
        *specs(WrongSide, IdempotencyConflict),
        *_ORDER_REFUSALS,
        *_SEQ,
    ),
    "POST /v1/orders/batch": (*_TRADER, *_SEQ),
    "GET /v1/orders": specs(InvalidCursor),
    "GET /v1/orders/{order_id}": specs(UnknownOrder),
    "GET /v1/orders/by-client-id/{client_order_id}": specs(UnknownOrder),
    "DELETE /v1/orders/by-client-id/{client_order_id}": (
        *_TRADER,
        *specs(UnknownOrder),
        *_refused("order_refused"),
        *_SEQ,
    ),
    "POST /v1/orders/cancel-after": (*_TRADER, *_SEQ),
    "DELETE /v1/orders/{order_id}": (
        *_TRADER,
        *specs(UnknownOrder),
        *_refused("order_refused"),
        *_SEQ,
    ),
    "PATCH /v1/orders/{order_id}": (*_TRADER, *specs(UnknownOrder), *_AMEND_REFUSALS, *_SEQ),
    "POST /v1/orders/cancel-all": (*_TRADER, *specs(UnknownInstrument), *_SEQ),
    "GET /v1/fills": specs(InvalidCursor),
    # delivery and withdrawals
    "POST /v1/deliveries": (
        *specs(UnknownInstrument, IdempotencyConflict, EntitlementExceeded, InstrumentSettled),
        *_SEQ,
    ),
    "GET /v1/deliveries": specs(InvalidCursor),
    "GET /v1/delivery-reports": specs(InvalidCursor, UnknownReportState),
    "POST /v1/vouchers": (
        *specs(
            VoucherNotYours,
            VoucherUnknownKey,
            VoucherKeyNotBuyer,
            VoucherBadSignature,
            VoucherReplayed,
            EntitlementExceeded,
            InstrumentSettled,
            UnknownInstrument,
        ),
        *_SEQ,
    ),
    "GET /v1/vouchers": specs(InvalidCursor),
    "POST /v1/disputes": (*specs(UnknownReport, ReportNotDisputable), *_SEQ),
    "GET /v1/disputes": specs(InvalidCursor),
    "POST /v1/disputes/{dispute_id}/resolve": (
        *specs(UnknownDispute, DisputeResolved),
        *_SEQ,
    ),
    # receipts and the audit file
    "GET /v1/receipts": specs(InvalidCursor),
    "GET /v1/receipts/{receipt_id}": specs(ReceiptNotFound),
    "GET /v1/receipts/{receipt_id}/proof": specs(ReceiptNotFound, ReceiptNotDelivered),
    "GET /v1/audit/export": specs(ExportEmpty, AuditExportBusy),
    "POST /v1/withdrawals": (
        *specs(IdempotencyConflict),
        *_LEDGER_REFUSALS,
        *_SEQ,
    ),
    "GET /v1/withdrawals": specs(InvalidCursor),
    "POST /v1/withdrawals/{account_id}/{withdrawal_id}/paid": _WITHDRAWAL_OUTCOME,
    "POST /v1/withdrawals/{account_id}/{withdrawal_id}/failed": _WITHDRAWAL_OUTCOME,
    # reports
    "GET /v1/reports/statement": (*_REPORT, *specs(ReportForbidden)),
    "GET /v1/reports/payouts": (*_REPORT, *specs(ReportForbidden)),
    "GET /v1/reports/instruments/{symbol}": (*_REPORT, *specs(UnknownReportInstrument)),
    "GET /v1/reports/instrument": (*_REPORT, *specs(UnknownReportInstrument)),
    "GET /v1/reports/fees": (*_REPORT, *specs(ReportForbidden)),
    "GET /v1/reports/trial-balance": (*_REPORT, *specs(ReportForbidden)),
    # the inference gateway (signed side)
    "POST /v1/endpoints": specs(
        (400, "endpoint_scheme"),
        (400, "invalid_endpoint_url"),
        (400, "endpoint_unresolvable"),
        (400, "endpoint_address_refused"),
        EndpointUnhealthy,
        EndpointExists,
    ),
    "GET /v1/endpoints": (),
    "DELETE /v1/endpoints/{endpoint_id}": specs(EndpointNotFound),
    "POST /v1/inference-keys": specs(UnknownInstrument, TooManyInferenceKeys),
    "GET /v1/inference-keys": (),
    "DELETE /v1/inference-keys/{key_id}": specs(InferenceKeyNotFound),
}

#: What every `/openai/v1` route may answer while the exchange cannot serve it.
_OPENAI_UNAVAILABLE: Final = (
    (503, "exchange_unavailable"),
    (503, "database_unavailable"),
    (503, "ledger_regressed"),
    (503, "sequencer_unreachable"),  # a gateway process of `serve --workers N`
    (503, "bus_unavailable"),  # its connection to NATS down
)

#: `/openai/v1`, in OpenAI's error shape (`market.gateway.errors`): status -> codes.
OPENAI_ERRORS: Final[dict[str, tuple[ErrorSpec, ...]]] = {
    "GET /openai/v1/models": (
        (400, "invalid_request"),
        (400, "unknown_query_parameter"),  # ops.wire.strict_query: these routes take none
        (401, "invalid_api_key"),
        *_OPENAI_UNAVAILABLE,
    ),
    **dict.fromkeys(
        ("POST /openai/v1/chat/completions", "POST /openai/v1/completions"),
        (
            (400, "invalid_request"),
            (400, "unknown_query_parameter"),
            (400, "unsupported_parameter"),
            (400, "upstream_refused"),
            (401, "invalid_api_key"),
            (402, "insufficient_entitlement"),
            (404, "model_not_found"),
            (413, "payload_too_large"),
            (502, "upstream_error"),
            (502, "upstream_timeout"),
            (503, "no_healthy_endpoint"),
            (503, "endpoints_busy"),
            *_OPENAI_UNAVAILABLE,
        ),
    ),
}

#: The codes a signed route answers with 401 (`market.auth.AuthError`), 403 and 429.
AUTH_401_CODES: Final = (
    "missing_signature", "stale_timestamp", "unknown_key", "bad_signature",
    "replayed_signature",
)  # fmt: skip
FORBIDDEN_ROLE: Final = specs(ForbiddenRole)[0]
