"""The sequencer's one `match`: each op of a batch to its stage's handler.

`dispatch` hands an op (the tagged union `ops.AnyOp`) to the handler of its stage
(`orders`, `treasury`, `lifecycle`, `delivery`, `calls`, `deadman`, `vouchers`, `disputes`) with
the batch context, and says how to read its result once the whole batch is staged;
`staged_op` turns a refusal into `Failed`; `prior_of` reads what the database already
holds for the caller-chosen ids of a batch's ops (idempotency), before it is staged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import assert_never

import asyncpg

from market.report_store import find_reports, latest_vouchers
from market.sequencer import (
    calls,
    deadman,
    delivery,
    disputes,
    lifecycle,
    orders,
    treasury,
    views,
    vouchers,
)
from market.sequencer.batch import Batch, Prior
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
    Failed,
    GatewayChargeOp,
    GatewayProgressOp,
    ListingOp,
    PlaceOp,
    ResolveDisputeOp,
    TickOp,
    VoucherOp,
    WithdrawalOutcomeOp,
    WithdrawOp,
)
from market.store import find_deliveries, find_orders, find_withdrawals
from schemas.errors import DomainError

__all__ = ["Answer", "dispatch", "prior_of", "staged_op"]

Answer = Callable[[], object]


def dispatch(op: AnyOp, batch: Batch) -> Answer:
    """Hand `op` to its stage's handler; return how to read its result once the whole
    batch is staged (an order's view waits for the fills later ops of the batch make)."""
    match op:
        case PlaceOp(account_id=account, request=req):
            placed = orders.place(batch, account, req)
            return lambda: batch.order_view(placed)
        case CancelOp(account_id=account, order_id=order_id):
            cancelled = orders.cancel(batch, account, order_id)
            return lambda: batch.order_view(cancelled)
        case AmendOp(account_id=account, order_id=order_id, request=req):
            amended = orders.amend(batch, account, order_id, req)
            return lambda: batch.order_view(amended)
        case CancelAllOp(account_id=account, instrument=symbol):
            result: object = orders.cancel_all(batch, account, symbol)
        case DepositOp(request=req):
            result = treasury.deposit(batch, req)
        case ListingOp(account_id=account, request=req):
            result = treasury.listing(batch, account, req)
        case CreateInstrumentOp(request=req):
            result = views.instrument_view(lifecycle.create_instrument(batch, req))
        case DeliveryOp(provider_account=provider, request=req):
            result = treasury.deliver(batch, provider, req)
        case CloseInstrumentOp(symbol=symbol):
            state = batch.market.instrument(symbol)
            result = lifecycle.settle_instrument(batch, state, "operator")
        case WithdrawOp(account_id=account, request=req):
            result = treasury.withdraw(batch, account, req)
        case WithdrawalOutcomeOp(account_id=account, withdrawal_id=wid, paid=paid):
            result = treasury.withdrawal_outcome(batch, account, wid, paid=paid)
        case GatewayChargeOp(receipts=receipts, closes=closes):
            result = delivery.charge(batch, receipts)
            calls.close(batch.calls, closes)
            calls.charged(batch.calls, (r.receipt_id for r in receipts))
        case GatewayProgressOp(marks=marks):
            result = calls.mark(batch.calls, marks)
        case CancelAfterOp(account_id=account, timeout_ms=timeout_ms):
            result = deadman.arm(batch, account, timeout_ms)
        case VoucherOp(provider_account=provider, voucher=voucher, signature=signature):
            result = vouchers.redeem(batch, provider, voucher, signature)
        case DisputeOp(buyer_account=buyer, request=req):
            result = disputes.dispute(batch, buyer, req)
        case ResolveDisputeOp(dispute_id=wanted, pay=pay):
            result = disputes.resolve(batch, wanted, pay=pay)
        case TickOp():
            result = None
        case _:
            assert_never(op)
    return lambda: result


async def prior_of(conn: asyncpg.Connection, ops: Sequence[AnyOp]) -> Prior:
    """What the database holds for the caller-chosen ids of the batch's ops."""
    placed, delivered, withdrawn = [], [], []
    reported, disputed, triples = [], [], []
    for op in ops:
        match op:
            case PlaceOp(account_id=account, request=req):
                placed.append((account, req.client_order_id))
            case DeliveryOp(provider_account=provider, request=req):
                delivered.append((provider, req.report_id))
                reported.append((provider, req.report_id))
            case DisputeOp(request=req):
                reported.append((req.provider, req.report_id))
            case ResolveDisputeOp(dispute_id=wanted):
                disputed.append(wanted)
            case VoucherOp(provider_account=provider, voucher=v):
                triples.append((v.buyer, provider, v.instrument))
            case WithdrawOp(account_id=account, request=req):
                withdrawn.append((account, req.withdrawal_id))
            case WithdrawalOutcomeOp(account_id=account, withdrawal_id=wid):
                withdrawn.append((account, wid))
    return Prior(
        orders=await find_orders(conn, placed),
        deliveries=await find_deliveries(conn, delivered),
        withdrawals=await find_withdrawals(conn, withdrawn),
        reports=await find_reports(conn, reported, disputed),
        vouchers=await latest_vouchers(conn, triples),
    )


def staged_op(op: AnyOp, batch: Batch) -> Answer | Failed:
    """Stage one op: how to read its result, or the error that refused it."""
    try:
        return dispatch(op, batch)
    except DomainError as exc:
        return Failed(exc)
