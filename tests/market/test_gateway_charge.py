"""The gateway's charge op through the sequencer on a real PostgreSQL: one delivery per
(buyer, provider, instrument) with the delivery posting rules, receipts written with it,
idempotent on resubmission, refusals that keep the receipts, append-only receipts."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import msgspec
import pytest

from ledger.canonical import decode_transaction
from ledger.errors import LedgerUnavailable
from ledger.receipts import ReceiptMismatch, check_receipts, receipt_hash, receipts_root
from market.clearing import rules as settlement
from market.sequencer import CloseInstrumentOp, CreateInstrumentOp, ListingOp, PlaceOp, Sequencer
from market.sequencer.ops import GatewayChargeOp
from market.store import ListInstrument, decode_entry
from schemas.gateway import GatewayReceipt
from schemas.market import Side
from schemas.trading import CreateInstrument, Listing, PlaceOrder
from tests.market.test_delivery import SYM, TERMS, Clock, open_market, trade


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    s = await open_market(db_url, Clock())
    await trade(s, "b1", "p1", 10_000, 3_000, "1")
    await trade(s, "b2", "p1", 5_000, 3_000, "2")
    yield s
    await s.close()


def receipt(buyer: str, tokens: int, provider: str = "p1") -> GatewayReceipt:
    return GatewayReceipt(
        receipt_id="rcp_" + secrets.token_hex(12), key_id="ik_0000000000000000", buyer=buyer,
        provider=provider, instrument=SYM, endpoint_id="e1", model="llama-3.1-70b",
        prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2, cached_tokens=0,
        reasoning_tokens=0, tokens=tokens, started_ms=1, ended_ms=2,
        request_sha256=hashlib.sha256(b"q").digest(), response_sha256=hashlib.sha256(b"a").digest(),
    )  # fmt: skip


def held(s: Sequencer, buyer: str) -> tuple[int, int]:
    e = s.ledger.balance(settlement.entitlement(buyer, "p1", SYM)).total
    return e, s.ledger.balance(settlement.escrow(buyer, "p1", TERMS)).total


async def test_charges_become_deliveries_with_their_receipts(
    seq: Sequencer, db_conn: asyncpg.Connection
) -> None:
    (e1, x1), (e2, x2) = held(seq, "b1"), held(seq, "b2")
    cash = seq.ledger.balance(settlement.cash("p1", "USD")).total
    op = GatewayChargeOp((receipt("b1", 30), receipt("b2", 7), receipt("b1", 12)))
    done = await seq.submit(op)
    assert [(d.buyer, d.tokens, d.refused) for d in done] == [("b1", 42, None), ("b2", 7, None)]
    s1 = settlement.delivery_split(42, e1, x1, TERMS.provider_fee_bps)
    s2 = settlement.delivery_split(7, e2, x2, TERMS.provider_fee_bps)
    assert held(seq, "b1") == (e1 - 42, x1 - s1.released)
    assert held(seq, "b2") == (e2 - 7, x2 - s2.released)
    assert seq.ledger.balance(settlement.cash("p1", "USD")).total == cash + s1.paid + s2.paid

    rows = await db_conn.fetch("SELECT receipt_id, transaction_id FROM gateway_receipts")
    by_id = {r["receipt_id"]: r["transaction_id"] for r in rows}
    assert by_id == {
        op.receipts[0].receipt_id: done[0].transaction_id,
        op.receipts[1].receipt_id: done[1].transaction_id,
        op.receipts[2].receipt_id: done[0].transaction_id,
    }
    reports = await db_conn.fetch("SELECT report_id, tokens FROM market_deliveries ORDER BY 2")
    first, second = (r.receipt_id for r in op.receipts[:2])
    assert [(r["report_id"], r["tokens"]) for r in reports] == [
        ("gw:" + second, 7),
        ("gw:" + first, 42),
    ]

    again = replace(op, resubmitted=True)  # as the meter retries after a failed commit
    assert await seq.submit(again) == []  # committed after all: nothing again
    assert held(seq, "b1") == (e1 - 42, x1 - s1.released)
    assert await db_conn.fetchval("SELECT count(*) FROM gateway_receipts") == 3
    # Sent again as new (the meter never does: it flags every retry), the ledger's unique
    # transaction id refuses its delivery at the commit: the batch fails, charging nothing.
    with pytest.raises(LedgerUnavailable):  # a 503: nothing of the batch applied
        await seq.submit(op)
    assert await seq.submit(again) == []  # the exchange reloaded from the database
    assert held(seq, "b1") == (e1 - 42, x1 - s1.released)
    assert seq.ledger.balance(settlement.cash("p1", "USD")).total == cash + s1.paid + s2.paid
    assert await db_conn.fetchval("SELECT count(*) FROM gateway_receipts") == 3

    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db_conn.execute("UPDATE gateway_receipts SET tokens = 0")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db_conn.execute("DELETE FROM gateway_receipts")


async def test_nothing_to_charge_and_refusals_keep_the_receipts(
    seq: Sequencer, db_conn: asyncpg.Connection
) -> None:
    before = held(seq, "b1")
    zero = GatewayChargeOp((receipt("b1", 0),))
    (free,) = await seq.submit(zero)
    assert (free.tokens, free.transaction_id, free.refused) == (0, None, None)
    await seq.submit(replace(zero, resubmitted=True))  # not written twice (nor refused)
    (over,) = await seq.submit(GatewayChargeOp((receipt("b1", 10**9),)))
    assert over.refused == "entitlement_exceeded" and over.transaction_id is None
    (stranger,) = await seq.submit(GatewayChargeOp((receipt("b1", 5, provider="p2"),)))
    assert stranger.refused == "entitlement_exceeded"  # b1 holds nothing of p2
    assert held(seq, "b1") == before
    await seq.submit(CloseInstrumentOp(SYM))
    (late,) = await seq.submit(GatewayChargeOp((receipt("b1", 5),)))
    assert late.refused == "instrument_settled"
    rows = await db_conn.fetch("SELECT transaction_id FROM gateway_receipts")
    assert len(rows) == 4 and all(r["transaction_id"] is None for r in rows)


async def test_a_delivery_commits_to_its_receipts_in_its_signed_body(
    seq: Sequencer, db_conn: asyncpg.Connection
) -> None:
    op = GatewayChargeOp((receipt("b1", 30), receipt("b2", 7), receipt("b1", 12), receipt("b1", 0)))
    b1, b2 = await seq.submit(op)
    mine = [op.receipts[0], op.receipts[2], op.receipts[3]]
    body = await db_conn.fetchval(
        "SELECT body FROM ledger_transactions WHERE tx_id = $1", b1.transaction_id
    )
    tx = decode_transaction(bytes(body))
    assert tx.metadata["source"] == "gateway"
    assert tx.metadata["receipts"] == "3" and tx.metadata["receipt_tokens"] == "42"
    assert tx.metadata["completion_weight"] == "1"
    root = receipts_root([receipt_hash(r) for r in mine])
    assert tx.metadata["receipts_root"] == root.hex()
    assert check_receipts(tx.metadata, 42, mine).count == 3
    with pytest.raises(ReceiptMismatch):  # in another order: another root
        check_receipts(tx.metadata, 42, [mine[1], mine[0], mine[2]])

    links = await db_conn.fetch(
        "SELECT transaction_id, position, receipt_id FROM gateway_delivery_receipts "
        "ORDER BY transaction_id, position"
    )
    assert sorted((r["transaction_id"], r["position"], r["receipt_id"]) for r in links) == sorted(
        [(b1.transaction_id, n, r.receipt_id) for n, r in enumerate(mine)]
        + [(b2.transaction_id, 0, op.receipts[1].receipt_id)]
    )
    assert await seq.submit(replace(op, resubmitted=True)) == []  # no second set of links
    assert await db_conn.fetchval("SELECT count(*) FROM gateway_delivery_receipts") == 4
    for statement in (
        "UPDATE gateway_delivery_receipts SET position = 9",
        "DELETE FROM gateway_delivery_receipts",
        "TRUNCATE gateway_delivery_receipts",
        "TRUNCATE gateway_receipts",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await db_conn.execute(statement)


WEIGHTED = "llama-3.1-70b/2026-12-01T01Z/1h"


async def test_completion_weight_is_a_term_stored_journaled_and_recovered(
    seq: Sequencer, db_url: str, db_conn: asyncpg.Connection
) -> None:
    with pytest.raises(msgspec.ValidationError, match="completion_weight"):
        msgspec.convert({"symbol": WEIGHTED, "lot_size": 1, "tick_size": 1, "price_min": 1,
                         "price_max": 9, "completion_weight": 0}, CreateInstrument)  # fmt: skip
    made = await seq.submit(CreateInstrumentOp(CreateInstrument(
        symbol=WEIGHTED, lot_size=1, tick_size=1, price_min=1, price_max=100, completion_weight=3,
    )))  # fmt: skip
    assert made.completion_weight == 3
    assert {i.symbol: i.completion_weight for i in seq.instruments()} == {SYM: 1, WEIGHTED: 3}
    journal = [decode_entry(bytes(r["body"])) for r in await db_conn.fetch(
        "SELECT body FROM market_journal ORDER BY seq")]  # fmt: skip
    listed = {e.instrument.symbol: e.completion_weight for e in journal
              if isinstance(e, ListInstrument)}  # fmt: skip
    assert listed == {SYM: 1, WEIGHTED: 3}

    await seq.submit(ListingOp("p1", Listing(listing_id="w", instrument=WEIGHTED, quantity=500)))
    await seq.submit(PlaceOp("p1", PlaceOrder(client_order_id="wa", instrument=WEIGHTED,
                                              side=Side.SELL, quantity=500, price=2)))  # fmt: skip
    await seq.submit(PlaceOp("b1", PlaceOrder(client_order_id="wb", instrument=WEIGHTED,
                                              side=Side.BUY, quantity=500, price=2)))  # fmt: skip
    r = msgspec.structs.replace(
        receipt("b1", 0), instrument=WEIGHTED, prompt_tokens=4, completion_tokens=6, tokens=22
    )
    unweighted = msgspec.structs.replace(receipt("b1", 10), instrument=WEIGHTED)  # 5 + 5
    (refused,) = await seq.submit(GatewayChargeOp((unweighted,)))
    assert (refused.refused, refused.transaction_id) == ("receipt_inconsistent", None)
    (d,) = await seq.submit(GatewayChargeOp((r,)))
    assert d.tokens == 22
    body = await db_conn.fetchval(
        "SELECT body FROM ledger_transactions WHERE tx_id = $1", d.transaction_id
    )
    meta = decode_transaction(bytes(body)).metadata
    assert meta["completion_weight"] == "3" and check_receipts(meta, 22, [r]).tokens == 22
    assert seq.ledger.balance(settlement.entitlement("b1", "p1", WEIGHTED)).total == 500 - 22

    await seq.close()  # the fixture closes it again: harmless
    again = await Sequencer.open(db_url, clock=Clock())
    try:
        assert {i.symbol: i.completion_weight for i in again.instruments()} == {SYM: 1, WEIGHTED: 3}
        assert again.market.instrument(WEIGHTED).terms.completion_weight == 3
    finally:
        await again.close()
