"""Buyer vouchers (`VoucherOp`): escrow released at once, up to what the buyer signed.

A voucher says "buyer B acknowledges T tokens delivered by provider P on instrument I"
in all (`schemas.disputes.Voucher`); the API has checked its signature with the buyer's
own key (`market.vouchers_api`). Here: it must go beyond the buyer's last accepted voucher
of that (buyer, provider, instrument), in tokens and in version (else 409
`voucher_replayed`: a replay, or an older voucher), on an unsettled instrument, and what it
adds (T less the last voucher's tokens) must not exceed the entitlement the buyer still
has free, less what the gateway has reserved of it for calls in flight or charged and not
committed yet (`Batch.reserved`; 422 `entitlement_exceeded`). That delta is one delivery
with the posting rules of any delivery (`rules.delivery`), settled at once: there is
nothing to dispute, the buyer signed it. Its report id is `voucher:<hash of buyer and
instrument>:<version>` (providers' own report ids may not start with `voucher:`), and the
voucher with its signature is kept (`market_vouchers`), so the acknowledgement can be
checked again.
"""

from __future__ import annotations

import hashlib

import msgspec

from market.clearing import rules as settlement
from market.report_store import Triple, VoucherRow
from market.sequencer.batch import Batch, checked, in_flight
from market.sequencer.errors import (
    EntitlementExceeded,
    InstrumentSettled,
    VoucherNotYours,
    VoucherReplayed,
)
from market.store import DeliveryRow
from schemas.disputes import Voucher, VoucherView


def voucher_report_id(buyer: str, instrument: str, version: int) -> str:
    h = hashlib.sha256(f"{buyer}\x00{instrument}".encode()).hexdigest()
    return f"voucher:{h[:16]}:{version}"


def redeem(batch: Batch, provider: str, voucher: Voucher, signature: bytes) -> VoucherView:
    """Release escrow for what the voucher adds to the buyer's last one."""
    if voucher.provider != provider:
        raise VoucherNotYours(f"this voucher is for provider {voucher.provider}")
    buyer, symbol = voucher.buyer, voucher.instrument
    triple: Triple = (buyer, provider, symbol)
    state = batch.market.instrument(symbol)
    if state.settlement is not None:
        raise InstrumentSettled(f"instrument {symbol} is settled")
    last = batch.vouchers.get(triple) or batch.prior.vouchers.get(triple)
    if last is not None and (voucher.tokens <= last.tokens or voucher.version <= last.version):
        raise VoucherReplayed(
            f"the last voucher accepted from {buyer} is version {last.version} for "
            f"{last.tokens} tokens; a voucher must have more tokens and a later version"
        )
    delta = voucher.tokens - (last.tokens if last is not None else 0)
    terms = state.terms
    balances = batch.ledger.state
    held = balances.balance(settlement.entitlement(buyer, provider, symbol)).available
    reserved = batch.reserved(buyer, provider, symbol)  # the gateway's calls in flight
    if delta > held - reserved:
        raise EntitlementExceeded(
            f"the voucher acknowledges {delta} tokens more than the last one; {buyer} holds "
            f"{held} tokens of {provider} on {symbol}{in_flight(reserved)}"
        )
    escrowed = balances.balance(settlement.escrow(buyer, provider, terms)).available
    rid = voucher_report_id(buyer, symbol, voucher.version)
    tx, split = settlement.delivery(
        rid, buyer, provider, terms, delta, held, escrowed, batch.time_ms,
        state.delivered_by(buyer, provider),
    )  # fmt: skip
    tx = msgspec.structs.replace(
        tx, metadata={**tx.metadata, "voucher": str(voucher.version),
                      "voucher_tokens": str(voucher.tokens), "voucher_key": voucher.key_id},
    )  # fmt: skip
    checked(batch.ledger.apply(tx))
    state.deliver(buyer, provider, split)
    batch.deliveries[(provider, rid)] = DeliveryRow(
        provider=provider, report_id=rid, request_digest=hashlib.sha256(signature).digest(),
        instrument=symbol, buyer=buyer, tokens=split.tokens, released=split.released,
        fee=split.fee, transaction_id=tx.id, time_ms=batch.time_ms,
    )  # fmt: skip
    row = VoucherRow(
        buyer=buyer, provider=provider, instrument=symbol, version=voucher.version,
        tokens=voucher.tokens, key_id=voucher.key_id, signature=signature, delta=delta,
        transaction_id=tx.id, time_ms=batch.time_ms, released=split.released, fee=split.fee,
    )  # fmt: skip
    batch.vouchers[triple] = row
    batch.voucher_rows.append(row)
    return row.view()
