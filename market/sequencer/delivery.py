"""The gateway's charges: metered calls become delivery transactions (`GatewayChargeOp`).

The gateway (market/gateway) batches the receipts of its metered calls and, at least once
a second, submits them as one op. Here they are grouped by (buyer, provider, instrument),
in order of first appearance, and each group becomes one delivery with the posting rules
of a provider's report (`market.clearing.rules.delivery`: the tokens burned from the
buyer's entitlement, the escrow released pro rata to the provider less its fee, both
rounded on the pair's totals so far, `InstrumentState.delivered`), a row of
`market_deliveries` (report id `gw:<first receipt id>`, so `GET /v1/deliveries` and the
entitlement views count it) and the group's receipts in `gateway_receipts`, all in the
batch's one statement. The receipts are there already, as a rule: the receipt journal
(`market.gateway.journal`) made each durable at its call's end, and the insert here does
nothing (`ON CONFLICT DO NOTHING`); the links below say which delivery charged which.

The delivery's signed body commits to its receipts (`ledger.receipts.commitment`: their
count, token total, the Merkle root of their hashes in the group's order, and the
instrument's completion weight, in the transaction's metadata), and
`gateway_delivery_receipts` records which receipt is which leaf of that tree, so an
auditor can check offline that every unit of escrow the gateway released is backed by
receipts (`tokex audit verify`) and a buyer can prove one receipt in its delivery
(`GET /v1/receipts/{id}/proof`).

Idempotent: a group's transaction id derives from its first receipt, and the gateway
resubmits the same op after a batch that failed to commit; a group whose transaction the
ledger already holds is skipped whole (its rows were written with it), and a receipt
already stored (one charged nothing) is not written again.

A group is never refused for the whole op: one that cannot be charged (its instrument
settled meanwhile, or less entitlement than charged, which the gateway's reservations
rule out: reports and vouchers may not use what they hold, `Batch.reserved`; or a receipt
whose tokens are not prompt + weight x completion, which no audit would pass) keeps its
receipts, with no transaction, says why (`GatewayDelivery.refused`) and is logged as a
warning: its provider served those tokens unpaid.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence

import asyncpg
import msgspec

from ledger.receipts import commitment
from ledger.rows import BatchRows
from market.clearing import rules as settlement
from market.sequencer.batch import Batch, checked
from market.sequencer.ops import AnyOp, GatewayChargeOp
from market.store import DeliveryRow
from schemas.gateway import GatewayDelivery, GatewayReceipt

log = logging.getLogger(__name__)

RECEIPT_COLUMNS = (
    "receipt_id", "key_id", "buyer", "provider", "instrument", "endpoint_id", "model",
    "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "tokens",
    "started_ms", "ended_ms", "request_sha256", "response_sha256", "ending", "transaction_id",
)  # fmt: skip

LINK_COLUMNS = ("transaction_id", "position", "receipt_id")

Group = tuple[str, str, str]  # (buyer, provider, instrument)


def groups(receipts: Iterable[GatewayReceipt]) -> dict[Group, list[GatewayReceipt]]:
    out: dict[Group, list[GatewayReceipt]] = {}
    for r in receipts:
        out.setdefault((r.buyer, r.provider, r.instrument), []).append(r)
    return out


def report_id(receipts: Sequence[GatewayReceipt]) -> str:
    return "gw:" + receipts[0].receipt_id


def external_ids(ops: Iterable[AnyOp]) -> list[str]:
    """The delivery transaction ids of the resubmitted charges' groups (looked up first: a
    resubmitted charge that committed after all is recognised, not charged twice; a first
    submission has none to find: `GatewayChargeOp.resubmitted`)."""
    ids: list[str] = []
    for op in ops:
        if isinstance(op, GatewayChargeOp) and op.resubmitted:
            for (_, provider, _), receipts in groups(op.receipts).items():
                ids.append(settlement.delivery_id(provider, report_id(receipts)))
    return ids


def receipt_record(r: GatewayReceipt, transaction_id: str | None) -> tuple[object, ...]:
    """A receipt as a `gateway_receipts` row (`RECEIPT_COLUMNS`)."""
    values = [getattr(r, c) for c in RECEIPT_COLUMNS[:-1]]
    return (*values, transaction_id)


def _refusal(
    batch: Batch, group: Group, receipts: Sequence[GatewayReceipt], tokens: int
) -> str | None:
    buyer, provider, symbol = group
    state = batch.market.instruments.get(symbol)
    if state is None:
        return "unknown_instrument"
    if state.settlement is not None:
        return "instrument_settled"
    w = state.terms.completion_weight
    if any(r.tokens != r.prompt_tokens + w * r.completion_tokens for r in receipts):
        return "receipt_inconsistent"  # charged otherwise than the weight: no audit would pass
    held = batch.ledger.state.balance(settlement.entitlement(buyer, provider, symbol)).available
    return "entitlement_exceeded" if tokens > held else None


def _refused(group: Group, receipts: int, tokens: int, why: str) -> None:
    """A charge refused means a provider served tokens it is not paid for (the receipts
    are kept, with no transaction): the operator must hear of it."""
    buyer, provider, symbol = group
    log.warning(
        "gateway charge refused (%s): %d tokens of %d receipt(s) of buyer %s, provider %s on "
        "%s are not paid to the provider", why, tokens, receipts, buyer, provider, symbol,
    )  # fmt: skip


def _charge_group(
    batch: Batch, group: Group, receipts: list[GatewayReceipt], records: list[tuple[object, ...]],
    links: list[tuple[object, ...]],
) -> GatewayDelivery | None:  # fmt: skip
    buyer, provider, symbol = group
    rid = report_id(receipts)
    tx_id = settlement.delivery_id(provider, rid)
    if batch.ledger.seen(tx_id):
        return None  # resubmitted after it committed: nothing again
    tokens = sum(r.tokens for r in receipts)
    why = _refusal(batch, group, receipts, tokens) if tokens else None
    out = GatewayDelivery(buyer=buyer, provider=provider, instrument=symbol, report_id=rid,
                          tokens=tokens, transaction_id=None, refused=why)  # fmt: skip
    if why is not None:
        _refused(group, len(receipts), tokens, why)
    if tokens == 0 or why is not None:
        records.extend(receipt_record(r, None) for r in receipts)
        return out
    instrument = batch.market.instrument(symbol)
    terms = instrument.terms
    state = batch.ledger.state
    held = state.balance(settlement.entitlement(buyer, provider, symbol)).available
    escrowed = state.balance(settlement.escrow(buyer, provider, terms)).available
    tx, split = settlement.delivery(
        rid, buyer, provider, terms, tokens, held, escrowed, batch.time_ms,
        instrument.delivered_by(buyer, provider),
    )  # fmt: skip
    evidence = commitment(receipts, terms.completion_weight).metadata()
    tx = msgspec.structs.replace(tx, metadata={**tx.metadata, **evidence})
    checked(batch.ledger.apply(tx))
    instrument.deliver(buyer, provider, split)
    digest = hashlib.sha256("\n".join(r.receipt_id for r in receipts).encode()).digest()
    batch.deliveries[(provider, rid)] = DeliveryRow(
        provider=provider, report_id=rid, request_digest=digest, instrument=symbol,
        buyer=buyer, tokens=split.tokens, released=split.released, fee=split.fee,
        transaction_id=tx.id, time_ms=batch.time_ms,
    )  # fmt: skip
    records.extend(receipt_record(r, tx.id) for r in receipts)
    links.extend((tx.id, n, r.receipt_id) for n, r in enumerate(receipts))
    return GatewayDelivery(buyer=buyer, provider=provider, instrument=symbol, report_id=rid,
                           tokens=tokens, transaction_id=tx.id)  # fmt: skip


def charge(batch: Batch, receipts: Sequence[GatewayReceipt]) -> list[GatewayDelivery]:
    """Charge the receipts, one delivery per group; stage their rows with the batch."""
    records: list[tuple[object, ...]] = []
    links: list[tuple[object, ...]] = []
    done: list[GatewayDelivery] = []
    for group, members in groups(receipts).items():
        outcome = _charge_group(batch, group, members, records, links)
        if outcome is not None:
            done.append(outcome)
    if records:

        async def stage(conn: asyncpg.Connection, rows: BatchRows) -> None:
            # A receipt charged nothing has no transaction to recognise it by on a
            # resubmission whose first try committed after all: the key does.
            rows.insert(
                "gateway_receipts", RECEIPT_COLUMNS, records,
                on_conflict="ON CONFLICT (receipt_id) DO NOTHING",
            )  # fmt: skip
            rows.insert("gateway_delivery_receipts", LINK_COLUMNS, links)

        batch.ledger.also_write(stage)
    return done
