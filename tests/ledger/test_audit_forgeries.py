"""Forged exports the offline audit (`verify_file`) refuses: files signed by the exchange's
own key (the auditor holding only its public key) whose entries no ledger commits.
Pure: no database."""

from __future__ import annotations

import io
from collections import defaultdict

import pytest

from ledger.audit.records import (
    FORMAT,
    AuditFailure,
    Balances,
    CheckpointRecord,
    End,
    Entries,
    FrameWriter,
    Header,
    KeyRecord,
    Keys,
    Receipts,
)
from ledger.audit.verify import VerifyReport, verify_file
from ledger.canonical import transaction_bytes
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.merkle import MerkleFrontier, leaf_hash
from ledger.note import Signer
from ledger.receipts import Commitment, commitment, receipt_bytes
from schemas.gateway import GatewayReceipt
from schemas.ledger import Account, Bucket, CommittedTransaction, Entry

ORIGIN = "tokex.test/ledger"
INSTR = "m/1/1"
ENT = Account("b@p", f"tok:{INSTR}", "entitlement")
MINT = Account("exchange", f"tok:{INSTR}", "issuance")
CASH_B = Account("b", "usd", "cash")
CASH_X = Account("x", "usd", "cash")
BANK = Account("exchange", "usd", "bank")


def receipt(n: int, prompt: int = 3, completion: int = 5) -> GatewayReceipt:
    return GatewayReceipt(
        receipt_id=f"rcp_{n:024x}", key_id="ik_0000000000000000", buyer="b", provider="p",
        instrument=INSTR, endpoint_id="e1", model="m", prompt_tokens=prompt,
        completion_tokens=completion, cached_tokens=0, reasoning_tokens=0,
        tokens=prompt + completion, started_ms=1, ended_ms=2,
        request_sha256=bytes(32), response_sha256=bytes(32),
    )  # fmt: skip


def move(
    index: int, tx_id: str, src: Account, dst: Account, amount: int, code: str = "transfer"
) -> CommittedTransaction:
    return CommittedTransaction(
        index, tx_id, code, 5,
        (Entry(src, Bucket.AVAILABLE, -amount), Entry(dst, Bucket.AVAILABLE, amount)), (), {},
    )  # fmt: skip


def fund(index: int = 0) -> CommittedTransaction:
    """Buyer b's entitlement of 10,000 tokens, minted; b's 1,000 dollars, deposited."""
    return CommittedTransaction(
        index, f"fund:{index}", "fund", 5,
        (Entry(MINT, Bucket.AVAILABLE, -10_000), Entry(ENT, Bucket.AVAILABLE, 10_000),
         Entry(BANK, Bucket.AVAILABLE, -1_000), Entry(CASH_B, Bucket.AVAILABLE, 1_000)),
        (), {},
    )  # fmt: skip


def delivery(index: int, tx_id: str, burn: int, meta: dict[str, str]) -> CommittedTransaction:
    return CommittedTransaction(
        index, tx_id, "delivery", 5,
        (Entry(ENT, Bucket.AVAILABLE, -burn), Entry(MINT, Bucket.AVAILABLE, burn)),
        (), {"buyer": "b", "provider": "p", "instrument": INSTR, **meta},
    )  # fmt: skip


def verify(
    txs: list[CommittedTransaction], receipts: list[tuple[str, list[GatewayReceipt]]]
) -> VerifyReport:
    """Verify an export of `txs` from 0, one checkpoint at the end, signed by the exchange's
    key, with the closing balances (and entries' sums) the entries give and these receipts
    records."""
    signer = Signer.generate(ORIGIN)
    bodies = [transaction_bytes(t) for t in txs]
    tree = MerkleFrontier()
    tree.extend([leaf_hash(b) for b in bodies])
    point = Checkpoint(origin=ORIGIN, size=len(txs), root_hash=tree.root(), time_ms=10)
    bal: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for t in txs:
        for e in t.entries:
            bal[(e.account.owner, e.account.asset, e.account.kind)][e.bucket] += e.amount
    rows = sorted((*k, v[0], v[1]) for k, v in bal.items() if v[0] or v[1])
    out = io.BytesIO()
    w = FrameWriter(out)
    w.write(Header(FORMAT, ORIGIN, 0, len(txs), MerkleFrontier().to_bytes()))
    w.write(Keys([KeyRecord(signer.verifier().encode(), 0, None)]))
    w.write(Entries(0, bodies))
    w.write(CheckpointRecord(sign_checkpoint(point, signer)))
    w.write(Balances("closing", rows))
    w.write(Balances("entries", rows))  # from 0 the entries' sums are the closing balances
    for tx_id, rs in receipts:
        w.write(Receipts(tx_id, 0, [receipt_bytes(r) for r in rs]))
    w.write(End(len(txs), 1, w.digest()))
    return verify_file(io.BytesIO(out.getvalue()), signer.verifier())


def test_a_delivery_with_its_receipts_verifies() -> None:
    rs = [receipt(1), receipt(2)]
    c = commitment(rs, 1)
    report = verify([fund(), delivery(1, "delivery:p:gw:x", c.tokens, c.metadata())],
                    [("delivery:p:gw:x", rs)])  # fmt: skip
    assert (report.entries, report.gateway_deliveries, report.receipts) == (2, 1, 2)


def test_two_deliveries_with_one_id_are_refused() -> None:
    """Two deliveries with one transaction id, each burning 8 tokens of b's entitlement,
    the one receipt in the file once: b would be billed twice on one set of receipts."""
    rs = [receipt(1)]
    c = commitment(rs, 1)
    d1 = delivery(1, "delivery:p:gw:x", c.tokens, c.metadata())
    d2 = delivery(2, "delivery:p:gw:x", c.tokens, c.metadata())
    with pytest.raises(AuditFailure, match=r"^entry 2: transaction id repeated"):
        verify([fund(), d1, d2], [("delivery:p:gw:x", rs)])


def test_a_delivery_with_no_receipts_cannot_hide_behind_a_later_one_with_its_id() -> None:
    """The first delivery burns 1,000 tokens and commits to 125 receipts that do not
    exist; a later delivery with the same id has one real receipt."""
    rs = [receipt(1)]
    c = commitment(rs, 1)
    fake = Commitment(count=125, tokens=1000, root=bytes(32), completion_weight=1)
    d1 = delivery(1, "delivery:p:gw:x", 1000, fake.metadata())
    d2 = delivery(2, "delivery:p:gw:x", c.tokens, c.metadata())
    with pytest.raises(AuditFailure, match=r"^entry 2: transaction id repeated"):
        verify([fund(), d1, d2], [("delivery:p:gw:x", rs)])


def test_any_repeated_transaction_id_is_refused() -> None:
    """Ids are unique in a ledger, whatever the transaction."""
    txs = [fund(), move(1, "t", CASH_B, CASH_X, 5), move(2, "t", CASH_B, CASH_X, 5)]
    with pytest.raises(AuditFailure, match=r"^entry 2: transaction id repeated: 't'"):
        verify(txs, [])


def test_a_user_account_below_zero_mid_range_is_refused() -> None:
    """b's cash lent 1,000,000 for one entry and taken back at the next: the closing
    balances are right, but the ledger never lets a user account go below zero."""
    txs = [move(0, "t0", CASH_B, CASH_X, 1_000_000), move(1, "t1", CASH_X, CASH_B, 1_000_000)]
    with pytest.raises(AuditFailure, match=r"^entry 0: account b\|usd\|cash goes below zero"):
        verify(txs, [])


def test_below_zero_is_checked_after_the_whole_transaction_on_both_buckets() -> None:
    """Within one transaction the order of entries does not matter (held moved to
    available on one account verifies); a held bucket below zero is refused, as is an
    account below zero in a transaction of more than two entries."""
    hold = CommittedTransaction(
        1, "hold", "hold", 5,
        (Entry(CASH_B, Bucket.AVAILABLE, -10), Entry(CASH_B, Bucket.HELD, 10)), (), {},
    )  # fmt: skip
    release = CommittedTransaction(
        2, "release", "release", 5,
        (Entry(CASH_B, Bucket.AVAILABLE, 10), Entry(CASH_B, Bucket.HELD, -10)), (), {},
    )  # fmt: skip
    assert verify([fund(), hold, release], []).entries == 3
    over = CommittedTransaction(
        2, "over", "release", 5,
        (Entry(CASH_B, Bucket.AVAILABLE, 11), Entry(CASH_B, Bucket.HELD, -11)), (), {},
    )  # fmt: skip
    with pytest.raises(AuditFailure, match=r"^entry 2: .*b\|usd\|cash goes below zero.*held -1"):
        verify([fund(), hold, over], [])
    three = CommittedTransaction(
        1, "three", "transfer", 5,
        (Entry(CASH_B, Bucket.AVAILABLE, -1_001), Entry(CASH_X, Bucket.AVAILABLE, 1_000),
         Entry(CASH_X, Bucket.AVAILABLE, 1)),
        (), {},
    )  # fmt: skip
    with pytest.raises(AuditFailure, match=r"^entry 1: account b\|usd\|cash goes below zero"):
        verify([fund(), three], [])


def test_system_accounts_may_go_below_zero() -> None:
    report = verify([fund(), move(1, "out", BANK, CASH_X, 5)], [])
    assert report.entries == 2


def test_a_commitment_written_otherwise_than_the_exchange_writes_it_is_refused() -> None:
    """Each field at a time ("+0_1", " 0_8\\n", an Arabic-Indic one, an upper-case
    spaced root), the rest as `Commitment.metadata` writes them."""
    rs = [receipt(1)]
    c = commitment(rs, 1)
    hexroot = c.root.hex().upper()
    for field, value in [
        ("receipts", "+0_1"),
        ("receipt_tokens", " 0_8\n"),
        ("completion_weight", "\u0661"),
        ("receipts_root", " ".join(hexroot[i : i + 2] for i in range(0, 64, 2))),
        ("receipts_root", hexroot),
    ]:
        d = delivery(1, "delivery:p:gw:x", c.tokens, {**c.metadata(), field: value})
        with pytest.raises(AuditFailure, match=r"^entry 1: .*without a well-formed commitment"):
            verify([fund(), d], [("delivery:p:gw:x", rs)])


def test_a_receipt_with_negative_tokens_cannot_net_out_an_inflated_one() -> None:
    """992 + 8 charged, then -1000 + 8: 8 tokens in all, matching the burn."""
    rs = [receipt(1, prompt=992, completion=8), receipt(2, prompt=-1000, completion=8)]
    c = commitment(rs, 1)
    d = delivery(1, "delivery:p:gw:x", c.tokens, c.metadata())
    with pytest.raises(AuditFailure, match=r"delivery delivery:p:gw:x \(entry 1\): .*negative"):
        verify([fund(), d], [("delivery:p:gw:x", rs)])
