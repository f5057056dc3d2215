"""Money and capacity in and out: deposits, listings, delivery reports, withdrawals.

Each is idempotent by its caller's id: deposits and listings by their ledger
transaction id (the ledger answers a retry with its first outcome), deliveries and
withdrawals by their rows in `market_deliveries` / `market_withdrawals`, written in
the same statement as the ledger entries. A refused withdrawal or listing stays
refused: its refusal is recorded under its ledger transaction id (`LedgerBatch.refuse`).
A refused delivery report is not recorded: its id stays free for the corrected report.
A provider's accepted report is pending for the instrument's dispute period
(`market.sequencer.disputes`), idempotent by its row in `market_reports`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from market.clearing import rules as settlement
from market.sequencer import disputes
from market.sequencer.batch import Batch, checked, digest, replayed
from market.sequencer.errors import (
    InstrumentSettled,
    OrderRefused,
    UnknownWithdrawal,
    WithdrawalSettled,
)
from market.sequencer.ops import (
    AnyOp,
    DeliveryOp,
    DepositOp,
    ListingOp,
    WithdrawalOutcomeOp,
    WithdrawOp,
)
from market.sequencer.state import InstrumentState
from market.store import WithdrawalRow
from schemas.errors import DomainError
from schemas.ledger import Transaction
from schemas.market import TradingState
from schemas.trading import (
    MAX_LISTED_TOKENS,
    DeliveryReport,
    DeliveryView,
    Deposit,
    LedgerReceipt,
    Listing,
    WithdrawalRequest,
    WithdrawalView,
)

#: The most token capacity one provider may have listed on one instrument. Listings are
#: free, and every listed token is a debit of the instrument's issuance account: without
#: a cap one provider could push it to the end of the 64-bit range and block every other
#: listing. 10^15 tokens is far beyond any window's real capacity (and no instrument's lot
#: may be larger: `schemas.trading.LotSize`).
MAX_LISTED_CAPACITY = MAX_LISTED_TOKENS


def external_ids(ops: Iterable[AnyOp]) -> list[str]:
    """Ledger ids of these deposits, listings, deliveries and withdrawals, looked up by
    the ledger first: a retry gets its first outcome, and an id the ledger once refused
    keeps its outcome instead of failing the batch on the unique index."""
    ids: list[str] = []
    for op in ops:
        match op:
            case DepositOp(request=req):
                ids.append(settlement.deposit_tx_id(req.deposit_id))
            case ListingOp(account_id=account, request=req):
                ids.append(
                    settlement.listing_tx_id(settlement.listing_key(account, req.listing_id))
                )
            case DeliveryOp(provider_account=provider, request=req):
                ids.append(settlement.report_hold_id(provider, req.report_id))
            case WithdrawOp(account_id=account, request=req):
                ids.append(settlement.withdrawal_hold_id(account, req.withdrawal_id))
            case WithdrawalOutcomeOp(account_id=account, withdrawal_id=wid, paid=paid):
                ids.append(settlement.withdrawal_outcome_id(account, wid, paid=paid))
    return ids


def _receipt(batch: Batch, tx: Transaction) -> LedgerReceipt:
    return LedgerReceipt(transaction_id=tx.id, ledger_index=checked(batch.ledger.apply(tx)))


def _unsettled(batch: Batch, symbol: str) -> InstrumentState:
    state = batch.market.instrument(symbol)
    if state.settlement is not None:
        raise InstrumentSettled(f"instrument {symbol} is settled")
    return state


def deposit(batch: Batch, req: Deposit) -> LedgerReceipt:
    tx = settlement.deposit(
        req.deposit_id, req.account_id, req.amount, batch.currency, batch.time_ms
    )
    return _receipt(batch, tx)


def listing(batch: Batch, account_id: str, req: Listing) -> LedgerReceipt:
    """List token capacity of an open instrument, up to `MAX_LISTED_CAPACITY`.

    The listing id pins its outcome: a retry gets the first receipt or the first
    refusal, which is recorded as the ledger records its own (`LedgerBatch.refuse`). An
    unknown instrument (404) records nothing."""
    state = batch.market.instrument(req.instrument)
    tx = settlement.listing(
        settlement.listing_key(account_id, req.listing_id), account_id, req.instrument,
        req.quantity, batch.time_ms,
    )  # fmt: skip
    if not batch.ledger.seen(tx.id):
        refusal = _listing_refusal(batch, state, account_id, req)
        if refusal is not None:
            checked(batch.ledger.refuse(tx, refusal.code, refusal.message))
    return _receipt(batch, tx)


def _listing_refusal(
    batch: Batch, state: InstrumentState, account_id: str, req: Listing
) -> DomainError | None:
    if state.settlement is not None:
        return InstrumentSettled(f"instrument {req.instrument} is settled")
    trading = state.book.trading_state
    if trading is not TradingState.OPEN:
        return OrderRefused(f"instrument {req.instrument} is {trading}", code="instrument_not_open")
    lot = state.terms.lot_size
    if req.quantity % lot:
        return OrderRefused(f"quantity must be a multiple of the lot, {lot}", code="qty_off_lot")
    listed = batch.ledger.state.balance(settlement.capacity(account_id, req.instrument))
    if listed.total + req.quantity > MAX_LISTED_CAPACITY:
        return OrderRefused(
            f"a provider may list at most {MAX_LISTED_CAPACITY:,} tokens of an instrument",
            code="capacity_limit",
        )
    return None


def deliver(batch: Batch, provider: str, req: DeliveryReport) -> DeliveryView:
    """A provider's own report: pending for the instrument's dispute period, its tokens
    and escrow held; it settles (burn, pro-rata release less the provider fee) when the
    period ends undisputed (`market.sequencer.disputes`)."""
    return disputes.report(batch, provider, req)


def withdraw(batch: Batch, account_id: str, req: WithdrawalRequest) -> WithdrawalView:
    """Hold available cash until the operator pays it out (or marks it failed)."""
    key = (account_id, req.withdrawal_id)
    request_digest = digest(req)
    earlier = batch.withdrawals.get(key) or batch.prior.withdrawals.get(key)
    conflict = f"withdrawal id {req.withdrawal_id} was used for another withdrawal"
    if replayed(earlier, request_digest, conflict):
        assert earlier is not None
        return earlier.view()
    currency = batch.currency
    tx = settlement.withdrawal_request(
        account_id, req.withdrawal_id, req.amount, currency, batch.time_ms
    )
    # A refusal is recorded with the ledger's (`LedgerBatch.refuse`): the id stays
    # refused, even once the account has the cash (a retry gets the same 422).
    available = batch.ledger.state.balance(settlement.cash(account_id, currency)).available
    if not batch.ledger.seen(tx.id) and req.amount > available:
        message = f"{available} available, cannot withdraw {req.amount}"
        checked(batch.ledger.refuse(tx, "insufficient_funds", message))
    checked(batch.ledger.apply(tx))
    row = WithdrawalRow(
        account_id=account_id, withdrawal_id=req.withdrawal_id, request_digest=request_digest,
        amount=req.amount, currency=currency, hold_id=tx.id, status="pending",
        created_ms=batch.time_ms, updated_ms=batch.time_ms,
    )  # fmt: skip
    batch.withdrawals[key] = row
    return row.view()


def withdrawal_outcome(
    batch: Batch, account_id: str, withdrawal_id: str, *, paid: bool
) -> WithdrawalView:
    """Post the held cash to the operator's bank (paid) or void the hold (failed)."""
    key = (account_id, withdrawal_id)
    row = batch.withdrawals.get(key) or batch.prior.withdrawals.get(key)
    if row is None:
        raise UnknownWithdrawal(f"no withdrawal {withdrawal_id} of {account_id}")
    target = "paid" if paid else "failed"
    if row.status == target:
        return row.view()
    if row.status != "pending":
        raise WithdrawalSettled(
            f"withdrawal {withdrawal_id} of {account_id} is already {row.status}"
        )
    if paid:
        tx = settlement.withdrawal_paid(
            account_id, withdrawal_id, row.amount, row.currency, batch.time_ms
        )
    else:
        tx = settlement.withdrawal_failed(account_id, withdrawal_id, batch.time_ms)
    checked(batch.ledger.apply(tx))
    done = dataclasses.replace(row, status=target, updated_ms=batch.time_ms)
    batch.withdrawals[key] = done
    return done.view()
