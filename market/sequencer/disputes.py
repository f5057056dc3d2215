"""Providers' own delivery reports: pending for the instrument's dispute period, then
settled; disputed by the buyer and resolved by the operator.

- `report` (`DeliveryOp`, `POST /v1/deliveries`): the split is fixed on the available
  balances and the pair's totals so far (`rules.delivery_split`; the report counts in
  those totals from now on, `InstrumentState.delivered`, unless refunded) and held in
  the ledger (`rules.report_hold`): the report's tokens of the entitlement and its share
  of the escrow go to their held buckets, so nothing else (gateway, vouchers, other
  reports) can use them. It may not use what the gateway has reserved for calls in
  flight (or charged and not committed yet, `Batch.reserved`): their charges would be
  refused, their provider unpaid. A row of `market_reports` says when its period ends
  (`due_ms` = report time + the instrument's `dispute_period_s`). Reports are accepted
  until the delivery grace ends.
- `mature_due` (at the start of every batch, `lifecycle.due`, by the batch's time, which is
  the sequencer's clock): every pending report whose period has ended is posted as a
  delivery (`rules.report_paid`) and gets its row in `market_deliveries`. The sequencer's
  clock task queues a tick when one comes due (`InstrumentState.next_event_ms`).
- `dispute` (`DisputeOp`, the buyer): a pending report becomes disputed; it no longer
  settles by itself and keeps its holds (across the instrument's settlement) until
- `resolve` (`ResolveDisputeOp`, the operator): pay (a delivery, `dispute-pay:<id>`) or
  refund (tokens burned, escrow to the buyer's cash, `dispute-refund:<id>`).

Recovery loads the pending reports back into memory (`recovery.recover`); what a batch
settled is in the ledger (the delivery's id derives from the report) and in the report's
row, written in the same statement, so a restart neither loses nor repeats a settlement.
"""

from __future__ import annotations

import hashlib

from market.clearing import rules as settlement
from market.report_store import DISPUTED, PAID, PENDING, REFUNDED, SETTLED, ReportRow
from market.sequencer.batch import Batch, checked, digest, in_flight, must, replayed
from market.sequencer.errors import (
    DeliveryClosed,
    DisputeResolved,
    EntitlementExceeded,
    InstrumentSettled,
    ReportNotDisputable,
    ReservedReportId,
    UnknownDispute,
    UnknownReport,
)
from market.sequencer.state import InstrumentState
from market.store import DeliveryRow
from schemas.disputes import DisputeRequest, DisputeView
from schemas.trading import DeliveryReport, DeliveryView

#: Report ids of the exchange's own deliveries, in the providers' namespace.
RESERVED_PREFIXES = ("gw:", "voucher:")


def dispute_id(provider: str, report_id: str) -> str:
    """A report's dispute id (a report is disputed at most once): stable and opaque."""
    h = hashlib.sha256(f"{provider}\x00{report_id}".encode()).hexdigest()
    return f"dsp_{h[:16]}"


def report(batch: Batch, provider: str, req: DeliveryReport) -> DeliveryView:
    """Accept a provider's report as pending; idempotent per (provider, report id)."""
    key = (provider, req.report_id)
    request_digest = digest(req)
    conflict = f"report id {req.report_id} was used for another delivery"
    earlier = batch.report(key)
    if replayed(earlier, request_digest, conflict):
        assert earlier is not None
        return earlier.view()
    settled = batch.deliveries.get(key) or batch.prior.deliveries.get(key)  # before 0010
    if replayed(settled, request_digest, conflict):
        assert settled is not None
        return settled.view()
    if req.report_id.startswith(RESERVED_PREFIXES):
        raise ReservedReportId(f"report ids starting {' or '.join(RESERVED_PREFIXES)} are reserved")
    state = batch.market.instrument(req.instrument)
    if state.settlement is not None:
        raise InstrumentSettled(f"instrument {req.instrument} is settled")
    if batch.time_ms >= state.settle_at_ms:
        raise DeliveryClosed(
            f"the delivery grace of {req.instrument} ended at {state.settle_at_ms}; it settles "
            "once the reports already pending are settled"
        )
    terms = state.terms
    balances = batch.ledger.state
    held = balances.balance(settlement.entitlement(req.buyer, provider, req.instrument)).available
    reserved = batch.reserved(req.buyer, provider, req.instrument)  # the gateway's calls'
    if req.tokens > held - reserved:
        raise EntitlementExceeded(
            f"{req.buyer} holds {held} tokens of {provider} on {req.instrument}"
            f"{in_flight(reserved)}, not {req.tokens}"
        )
    escrowed = balances.balance(settlement.escrow(req.buyer, provider, terms)).available
    split = settlement.delivery_split(
        req.tokens, held, escrowed, terms.provider_fee_bps, state.delivered_by(req.buyer, provider)
    )
    tx = settlement.report_hold(req.report_id, req.buyer, provider, terms, split, batch.time_ms)
    checked(batch.ledger.apply(tx))
    state.deliver(req.buyer, provider, split)  # counted from now: its split is fixed
    row = ReportRow(
        provider=provider, report_id=req.report_id, request_digest=request_digest,
        instrument=req.instrument, buyer=req.buyer, tokens=split.tokens,
        released=split.released, fee=split.fee, hold_id=tx.id, created_ms=batch.time_ms,
        due_ms=batch.time_ms + state.dispute_period_s * 1000, status=PENDING,
        updated_ms=batch.time_ms,
    )  # fmt: skip
    batch.reports[key] = row
    state.pending[key] = row  # taken back by the rebuild if the batch fails
    return row.view()


def _split(row: ReportRow) -> settlement.DeliverySplit:
    return settlement.DeliverySplit(tokens=row.tokens, released=row.released, fee=row.fee)


def _delivered(batch: Batch, row: ReportRow, transaction_id: str) -> None:
    """The report's row of `market_deliveries`: what was delivered."""
    batch.deliveries[row.key] = DeliveryRow(
        provider=row.provider, report_id=row.report_id, request_digest=row.request_digest,
        instrument=row.instrument, buyer=row.buyer, tokens=row.tokens, released=row.released,
        fee=row.fee, transaction_id=transaction_id, time_ms=batch.time_ms,
    )  # fmt: skip


def mature_due(batch: Batch, state: InstrumentState) -> None:
    """Settle the instrument's pending reports whose dispute period has ended, in order
    of their end (then provider and report id)."""
    if state.next_report_due_ms > batch.time_ms:
        return
    due = sorted((r for r in state.pending.values() if r.due_ms <= batch.time_ms),
                 key=lambda r: (r.due_ms, r.key))  # fmt: skip
    for row in due:
        tx = settlement.report_paid(
            row.report_id, row.buyer, row.provider, state.terms, _split(row), batch.time_ms
        )
        must(batch.ledger.apply(tx))
        batch.reports[row.key] = row.step(SETTLED, batch.time_ms, settled_tx=tx.id)
        _delivered(batch, row, tx.id)
        del state.pending[row.key]


def dispute(batch: Batch, buyer: str, req: DisputeRequest) -> DisputeView:
    """The buyer disputes a pending report of its own: it keeps its holds until the
    operator resolves it. Disputing it again answers the dispute."""
    key = (req.provider, req.report_id)
    row = batch.report(key)
    if row is None or row.buyer != buyer:  # another buyer's report: as if there were none
        raise UnknownReport(f"no report {req.report_id} of {req.provider} to you")
    if row.dispute_id is not None:
        return row.dispute_view()
    if row.status != PENDING:
        raise ReportNotDisputable(f"report {req.report_id} is {row.status}: too late to dispute")
    disputed = row.step(
        DISPUTED, batch.time_ms, dispute_id=dispute_id(*key), dispute_reason=req.reason,
        disputed_ms=batch.time_ms,
    )  # fmt: skip
    batch.reports[key] = disputed
    batch.market.instrument(row.instrument).pending.pop(key, None)
    return disputed.dispute_view()


def _disputed(batch: Batch, wanted: str) -> ReportRow | None:
    for source in (batch.reports, batch.prior.reports):
        for row in source.values():
            if row.dispute_id == wanted:
                return batch.reports.get(row.key, row)
    return None


def resolve(batch: Batch, wanted: str, *, pay: bool) -> DisputeView:
    """Pay the provider or refund the buyer; idempotent, 409 if resolved the other way."""
    row = _disputed(batch, wanted)
    if row is None:
        raise UnknownDispute(f"no dispute {wanted}")
    target = PAID if pay else REFUNDED
    if row.status == target:
        return row.dispute_view()
    if row.status != DISPUTED:
        raise DisputeResolved(f"dispute {wanted} was already resolved: {row.status}")
    state = batch.market.instrument(row.instrument)
    args = (row.report_id, row.buyer, row.provider, state.terms, _split(row), batch.time_ms)
    if pay:
        tx = settlement.report_paid(*args, dispute_id=wanted)
    else:
        tx = settlement.report_refunded(*args, dispute_id=wanted)
    must(batch.ledger.apply(tx))
    if pay:
        _delivered(batch, row, tx.id)
    else:
        state.undeliver(row.buyer, row.provider, _split(row))
    done = row.step(target, batch.time_ms, settled_tx=tx.id)
    batch.reports[row.key] = done
    return done.dispute_view()
