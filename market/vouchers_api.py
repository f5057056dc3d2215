"""Voucher, report and dispute routes: `/v1/vouchers`, `/v1/delivery-reports`, `/v1/disputes`.

- `POST /v1/vouchers` (provider): a buyer's signed voucher (`schemas.disputes.SignedVoucher`).
  Checked here, in this order: it names the caller as provider (403 `voucher_not_yours`);
  its `key_id` is a key of the exchange, not revoked (422 `voucher_unknown_key`), that
  belongs to the voucher's buyer (403 `voucher_key_not_buyer`); the signature is the strict
  Ed25519 signature of the voucher's canonical bytes (`market.vouchers.voucher_message`) by
  that key (422 `voucher_bad_signature`: forged, or any field altered). Then the sequencer
  (`market.sequencer.vouchers`): more tokens and a later version than the buyer's last
  accepted voucher (409 `voucher_replayed`), the instrument not settled (422
  `instrument_settled`), the new tokens within the free entitlement (422
  `entitlement_exceeded`). 201 with what it released.
- `GET /v1/vouchers`: the vouchers the caller signed (buyer) or submitted (provider).
- `GET /v1/delivery-reports?status=pending` (buyer, provider, operator): providers' own
  reports the caller made or received (the operator and the auditor: all), in a state: `pending`
  (default: disputable until `settles_at_ms`), `disputed`, `settled`, `paid`, `refunded`, or
  `all`.
- `POST /v1/disputes` (buyer or provider: providers may buy too): dispute a pending report
  against what the caller bought (404 `unknown_report` for another buyer's, 409
  `report_not_disputable` once settled); idempotent.
- `GET /v1/disputes`: the caller's disputes (buyer or provider; the operator and the
  auditor: all).
- `POST /v1/disputes/{dispute_id}/resolve` (operator) `{"outcome": "pay" | "refund"}`:
  idempotent; 409 `dispute_resolved` if it was resolved the other way.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Request, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from market.api import Cursor, Limit, provide_sequencer
from market.auth import Authenticator, Principal, pool_key_loader, requires_role
from market.pages import Page, decode_cursor, page_of
from market.report_store import ReportRow, VoucherRow, list_reports, list_vouchers
from market.sequencer.errors import UnknownDispute, VoucherNotYours
from market.sequencer.ops import DisputeOp, ResolveDisputeOp, VoucherOp
from market.sequencer.port import Exchange
from market.vouchers import decode_voucher_signature, voucher_message
from schemas.accounts import Role
from schemas.disputes import (
    DisputeRequest,
    DisputeResolution,
    DisputeView,
    SignedVoucher,
    VoucherView,
)
from schemas.errors import DomainError, ErrorKind
from schemas.trading import DeliveryView

__all__ = ["vouchers_router"]

Seq = NamedDependency[Exchange]
Pool = NamedDependency[asyncpg.Pool]
Caller = NamedDependency[Principal]

REPORT_STATES = ("pending", "disputed", "settled", "paid", "refunded")

#: Roles that read every account's reports and disputes (the auditor reads everything).
READS_ALL = frozenset({Role.OPERATOR, Role.AUDITOR})


class VoucherUnknownKey(DomainError):
    code = "voucher_unknown_key"
    kind = ErrorKind.REJECTED


class VoucherKeyNotBuyer(DomainError):
    code = "voucher_key_not_buyer"
    kind = ErrorKind.FORBIDDEN


class VoucherBadSignature(DomainError):
    code = "voucher_bad_signature"
    kind = ErrorKind.REJECTED


class UnknownReportState(DomainError):
    code = "invalid_request"
    kind = ErrorKind.INVALID


async def _checked_signature(
    request: Request[Any, Any, Any], pool: asyncpg.Pool, signed: SignedVoucher
) -> bytes:
    """The voucher's 64 signature bytes, once they verify with the buyer's own key."""
    voucher = signed.voucher
    record = await pool_key_loader(pool)(voucher.key_id)
    if record is None or record.revoked:
        raise VoucherUnknownKey(f"no key {voucher.key_id} (or it is revoked)")
    if record.account_id != voucher.buyer:
        raise VoucherKeyNotBuyer(f"key {voucher.key_id} is not a key of {voucher.buyer}")
    signature = decode_voucher_signature(signed.signature)
    authenticator: Authenticator = request.app.state.authenticator
    message = voucher_message(voucher)
    if signature is None or not await authenticator.checker.verify(
        record.public_key, signature, message
    ):
        raise VoucherBadSignature(f"the signature is not {voucher.buyer}'s of this voucher")
    return signature


@post("/vouchers", guards=[requires_role(Role.PROVIDER)], status_code=201)
async def submit_voucher(
    data: JSONBody[SignedVoucher],
    request: Request[Any, Any, Any],
    pool: Pool,
    principal: Caller,
) -> VoucherView:
    """Submit a buyer's voucher (provider): escrow released at once up to its tokens."""
    if data.voucher.provider != principal.account_id:
        raise VoucherNotYours(f"this voucher is for provider {data.voucher.provider}")
    signature = await _checked_signature(request, pool, data)
    sequencer = provide_sequencer(request.app.state)
    return await sequencer.submit(VoucherOp(principal.account_id, data.voucher, signature))


@get("/vouchers")
async def my_vouchers(
    pool: Pool, principal: Caller, limit: Limit = 200, cursor: Cursor = None
) -> Page[VoucherView]:
    """Vouchers the caller signed (buyer) or submitted (provider), newest first; paginated."""
    keyset = decode_cursor(cursor, "vouchers", 2, (int, str))
    async with pool.acquire() as conn:
        rows = await list_vouchers(conn, principal.account_id, limit=limit + 1, keyset=keyset)
    return page_of(rows, limit, keyset, lambda v: (v.time_ms, v.transaction_id), VoucherRow.view)


@get("/delivery-reports")
async def my_delivery_reports(
    pool: Pool,
    principal: Caller,
    status: FromQuery[str] = "pending",
    limit: Limit = 200,
    cursor: Cursor = None,
) -> Page[DeliveryView]:
    """Providers' own reports the caller made or received (operator, auditor: all), newest
    first; paginated."""
    if status != "all" and status not in REPORT_STATES:
        raise UnknownReportState(f"status is one of {', '.join(REPORT_STATES)} or all")
    everyone = principal.role in READS_ALL
    keyset = decode_cursor(cursor, "delivery-reports", 3, (int, str, str))
    async with pool.acquire() as conn:
        rows = await list_reports(
            conn, None if everyone else principal.account_id,
            statuses=REPORT_STATES if status == "all" else (status,), limit=limit + 1,
            keyset=keyset,
        )  # fmt: skip
    return page_of(rows, limit, keyset, _report_key, ReportRow.view)


@post("/disputes", guards=[requires_role(Role.BUYER, Role.PROVIDER)], status_code=201)
async def open_dispute(
    data: JSONBody[DisputeRequest], sequencer: Seq, principal: Caller
) -> DisputeView:
    """Dispute a pending report (its buyer: a buyer, or a provider that bought): it keeps
    its escrow until the operator resolves it."""
    return await sequencer.submit(DisputeOp(principal.account_id, data))


@get("/disputes")
async def my_disputes(
    pool: Pool, principal: Caller, limit: Limit = 200, cursor: Cursor = None
) -> Page[DisputeView]:
    """The caller's disputes (operator, auditor: all), newest first by report; paginated."""
    everyone = principal.role in READS_ALL
    keyset = decode_cursor(cursor, "disputes", 3, (int, str, str))
    async with pool.acquire() as conn:
        rows = await list_reports(
            conn, None if everyone else principal.account_id,
            statuses=("disputed", "paid", "refunded"), disputed_only=True, limit=limit + 1,
            keyset=keyset,
        )  # fmt: skip
    return page_of(rows, limit, keyset, _report_key, ReportRow.dispute_view)


def _report_key(r: ReportRow) -> tuple[int, str, str]:
    return (r.created_ms, r.provider, r.report_id)


@post("/disputes/{dispute_id:str}/resolve", guards=[requires_role(Role.OPERATOR)], status_code=200)
async def resolve_dispute(
    dispute_id: FromPath[str], data: JSONBody[DisputeResolution], sequencer: Seq
) -> DisputeView:
    """Pay the provider or refund the buyer (operator); both are ledger transactions
    carrying the dispute id."""
    if not (dispute_id.startswith("dsp_") and len(dispute_id) == 20):
        raise UnknownDispute(f"no dispute {dispute_id[:40]!r}")
    return await sequencer.submit(ResolveDisputeOp(dispute_id, pay=data.outcome == "pay"))


vouchers_router = Router(
    path="/v1",
    route_handlers=[
        submit_voucher,
        my_vouchers,
        my_delivery_reports,
        open_dispute,
        my_disputes,
        resolve_dispute,
    ],
    dependencies={"sequencer": Provide(provide_sequencer, sync_to_thread=False)},
    tags=["delivery"],
)
