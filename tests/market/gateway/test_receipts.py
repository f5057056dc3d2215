"""Receipts in the audit, on a real PostgreSQL: `tokex audit export` includes the receipts of
the gateway's deliveries and `tokex audit verify` checks each delivery against the count,
total and root its signed body commits to; a receipt removed or altered (in the database,
before the export, or in the file) fails verification naming the delivery."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from ledger.audit.export import export
from ledger.audit.records import End, FrameWriter, Receipts, Record, read_frames
from ledger.audit.verify import AuditFailure, VerifyReport, verify_file
from ledger.log import MerkleLog
from ledger.note import Signer
from ledger.receipts import burned_account, decode_receipt, receipt_bytes
from market.clearing.rules import entitlement
from market.gateway.receipts import delivery_receipts
from market.sequencer import CreateInstrumentOp, DepositOp, ListingOp, Sequencer
from market.sequencer.ops import GatewayChargeOp
from schemas.gateway import GatewayDelivery
from schemas.trading import CreateInstrument, Deposit, Listing
from tests.market.test_delivery import LOT, SYM, Clock, trade
from tests.market.test_gateway_charge import receipt
from tests.ops.test_cli_audit import tokex

ORIGIN = "receipts.tokex/ledger"
SIGNER = Signer.generate(ORIGIN)


@pytest.fixture
async def charged(db_url: str) -> AsyncIterator[tuple[Sequencer, list[GatewayDelivery]]]:
    """Two flushes of the gateway: three deliveries, the first of five receipts."""
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[MerkleLog(SIGNER, ORIGIN)])
    try:
        await s.submit(CreateInstrumentOp(CreateInstrument(
            symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
            provider_fee_bps=250,
        )))  # fmt: skip
        for buyer in ("b1", "b2"):
            await s.submit(DepositOp(Deposit(deposit_id=buyer, account_id=buyer, amount=10**6)))
        await s.submit(ListingOp("p1", Listing(listing_id="l", instrument=SYM, quantity=10**5)))
        await trade(s, "b1", "p1", 10_000, 3_000, "1")
        await trade(s, "b2", "p1", 5_000, 3_000, "2")
        first = await s.submit(GatewayChargeOp(
            (receipt("b1", 30), receipt("b2", 7), receipt("b1", 12), receipt("b1", 0),
             receipt("b1", 5), receipt("b1", 8))
        ))  # fmt: skip
        second = await s.submit(GatewayChargeOp((receipt("b1", 9),)))
        yield s, [*first, *second]
    finally:
        await s.close()


async def exported(db_url: str, with_receipts: bool = True) -> bytes:
    conn = await asyncpg.connect(db_url)
    try:
        out = io.BytesIO()
        await export(conn, out, receipts=delivery_receipts if with_receipts else None)
    finally:
        await conn.close()
    return out.getvalue()


def verified(data: bytes) -> VerifyReport:
    return verify_file(io.BytesIO(data), SIGNER.verifier())


def failure(data: bytes) -> AuditFailure:
    with pytest.raises(AuditFailure) as caught:
        verified(data)
    return caught.value


async def entry_of(db_url: str, tx_id: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        index: int = await conn.fetchval(
            "SELECT idx FROM ledger_transactions WHERE tx_id = $1", tx_id
        )
    finally:
        await conn.close()
    return index


async def test_an_export_with_gateway_deliveries_verifies(
    charged: tuple[Sequencer, list[GatewayDelivery]], db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, deliveries = charged
    report = verified(await exported(db_url))
    assert (report.gateway_deliveries, report.receipts) == (3, 7)
    # A delivery's receipts split over several records verify the same.
    monkeypatch.setattr("ledger.audit.export.CHUNK", 2)
    data = await exported(db_url)
    records = [r for r, _ in read_frames(io.BytesIO(data), _Digest()) if isinstance(r, Receipts)]
    assert [(r.start, len(r.bodies)) for r in records][:3] == [(0, 2), (2, 2), (4, 1)]
    assert verified(data).receipts == 7
    # Without its receipts, the first gateway delivery is named.
    first = deliveries[0].transaction_id
    assert first is not None
    bare = failure(await exported(db_url, with_receipts=False))
    assert bare.where == f"delivery {first} (entry {await entry_of(db_url, first)})"
    assert "no receipts" in bare.reason


class _Digest:
    def update(self, data: bytes) -> None:
        pass

    def digest(self) -> bytes:
        return b""


def rewritten(data: bytes, change: object) -> bytes:
    """The file with its first Receipts record changed by `change(record)`, and its end
    digest recomputed: only the receipts check can catch it."""
    out = io.BytesIO()
    w: FrameWriter | None = None
    done = False
    for record, _ in read_frames(io.BytesIO(data), _Digest()):
        if w is None:
            w = FrameWriter(out)
        rec: Record = record
        if isinstance(rec, Receipts) and not done:
            rec = change(rec)  # type: ignore[operator]
            done = True
        if isinstance(rec, End):
            rec = End(rec.entries, rec.checkpoints, w.digest())
        w.write(rec)
    return out.getvalue()


async def test_a_receipt_removed_or_altered_in_the_file_fails_naming_its_delivery(
    charged: tuple[Sequencer, list[GatewayDelivery]], db_url: str
) -> None:
    _, deliveries = charged
    first = deliveries[0].transaction_id
    assert first is not None
    where = f"delivery {first} (entry {await entry_of(db_url, first)})"
    data = await exported(db_url)
    assert verified(rewritten(data, lambda r: r)).gateway_deliveries == 3  # the helper is exact

    def altered(r: Receipts, **change: object) -> Receipts:
        one = msgspec.structs.replace(decode_receipt(r.bodies[1]), **change)
        return Receipts(r.transaction_id, r.start, [r.bodies[0], receipt_bytes(one), *r.bodies[2:]])

    cases = {
        "removed": lambda r: Receipts(r.transaction_id, r.start, r.bodies[1:]),
        "more tokens": lambda r: altered(r, tokens=13, completion_tokens=7),
        "same tokens, other response": lambda r: altered(r, response_sha256=b"\x07" * 32),
        "swapped": lambda r: Receipts(
            r.transaction_id, r.start, [r.bodies[1], r.bodies[0], *r.bodies[2:]]
        ),
    }
    for why, change in cases.items():
        bad = failure(rewritten(data, change))
        assert bad.where == where, (why, bad)


async def test_a_receipt_removed_or_altered_in_the_database_fails_naming_its_delivery(
    charged: tuple[Sequencer, list[GatewayDelivery]], db_url: str, db_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    _, deliveries = charged
    second = deliveries[1].transaction_id  # b2's, of one receipt
    assert second is not None
    where = f"delivery {second} (entry {await entry_of(db_url, second)})"
    rid = await db_conn.fetchval(
        "SELECT receipt_id FROM gateway_delivery_receipts WHERE transaction_id = $1", second
    )
    # An operator with the database's superuser rights goes around the append-only triggers.
    await db_conn.execute("ALTER TABLE gateway_receipts DISABLE TRIGGER USER")
    await db_conn.execute(
        "UPDATE gateway_receipts SET tokens = tokens + 1, prompt_tokens = prompt_tokens + 1 "
        "WHERE receipt_id = $1",
        rid,
    )
    assert failure(await exported(db_url)).where == where
    await db_conn.execute(
        "UPDATE gateway_receipts SET tokens = tokens - 1, prompt_tokens = prompt_tokens - 1 "
        "WHERE receipt_id = $1",
        rid,
    )
    assert verified(await exported(db_url)).receipts == 7

    out, pub = tmp_path / "audit.tokex", tmp_path / "exchange.pub"
    pub.write_text(SIGNER.verifier().encode() + "\n")
    r = tokex("audit", "export", "--out", str(out), env={"DATABASE_URL": db_url})
    assert r.returncode == 0 and "7 receipts" in r.stdout, r.stdout + r.stderr
    r = tokex("audit", "verify", str(out), "--public-key", str(pub))
    assert r.returncode == 0 and "3 gateway deliveries backed by 7 receipts" in r.stdout, r.stdout

    await db_conn.execute("DELETE FROM gateway_receipts WHERE receipt_id = $1", rid)
    r = tokex("audit", "export", "--out", str(out), env={"DATABASE_URL": db_url})
    assert r.returncode == 0, r.stderr
    r = tokex("audit", "verify", str(out), "--public-key", str(pub))
    assert r.returncode == 1 and r.stdout.startswith(f"FAIL: {where}: "), r.stdout


def test_the_auditor_names_the_entitlement_as_the_exchange_does() -> None:
    """`tokex audit verify` checks that a gateway delivery burns its buyer's entitlement
    by the ledger's rule for the account's name (the ledger does not import the market):
    the two must agree, or every honest delivery would fail its audit."""
    account = entitlement("acc_b", "acc_p", "llama/2026-12-01T19Z/1h")
    meta = {"buyer": "acc_b", "provider": "acc_p", "instrument": "llama/2026-12-01T19Z/1h"}
    assert burned_account(meta) == (account.owner, account.asset, account.kind)
