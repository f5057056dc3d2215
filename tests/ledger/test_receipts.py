"""Receipts as evidence (ledger.receipts): the hash covers every field, the tree commits to
the receipts and their order, the auditor's rule for one delivery, and receipt proofs."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from ledger.canonical import decode_transaction, transaction_bytes
from ledger.merkle import InvalidProof, MemoryNodeStore, leaf_hash
from ledger.receipts import (
    RECEIPT_PREFIX,
    RECEIPT_PREFIX_V2,
    ReceiptMismatch,
    burned_account,
    check_receipts,
    commitment,
    commitment_of,
    decode_receipt,
    entitlement_burned,
    receipt_bytes,
    receipt_hash,
    receipts_root,
    verify_receipt_proof,
)
from schemas.gateway import Ending, GatewayReceipt, ReceiptProof
from schemas.ledger import Account, Bucket, CommittedTransaction, Entry
from schemas.ledger_api import LedgerEntry, TransactionView
from schemas.ledger_proofs import InclusionProof


def receipt(n: int, prompt: int = 3, completion: int = 5, weight: int = 1) -> GatewayReceipt:
    return GatewayReceipt(
        receipt_id=f"rcp_{n:024x}", key_id="ik_0000000000000000", buyer="b", provider="p",
        instrument="m/1/1", endpoint_id="e1", model="m", prompt_tokens=prompt,
        completion_tokens=completion, cached_tokens=0, reasoning_tokens=0,
        tokens=prompt + weight * completion, started_ms=1, ended_ms=2,
        request_sha256=hashlib.sha256(b"q%d" % n).digest(),
        response_sha256=hashlib.sha256(b"a%d" % n).digest(),
    )  # fmt: skip


def delivery(receipts: list[GatewayReceipt], weight: int = 1, index: int = 7) -> bytes:
    c = commitment(receipts, weight)
    burn = Account("b@p", "tok:m/1/1", "entitlement")
    mint = Account("exchange", "tok:m/1/1", "issuance")
    tx = CommittedTransaction(
        index, "delivery:p:gw:x", "delivery", 5,
        (Entry(burn, Bucket.AVAILABLE, -c.tokens), Entry(mint, Bucket.AVAILABLE, c.tokens)),
        (), {"buyer": "b", "provider": "p", "instrument": "m/1/1", **c.metadata()},
    )  # fmt: skip
    return transaction_bytes(tx)


def test_the_hash_covers_every_field_and_the_bytes_round_trip() -> None:
    r = receipt(1)
    assert decode_receipt(receipt_bytes(r)) == r
    assert receipt_hash(r) == hashlib.sha256(receipt_bytes(r)).digest()
    for name, value in msgspec.structs.asdict(r).items():
        other = (
            b"\x00" * 32
            if isinstance(value, bytes)
            else (value + 1 if isinstance(value, int) else value + "x")
        )
        changed = msgspec.structs.replace(r, **{name: other})
        assert receipt_hash(changed) != receipt_hash(r), name
    with pytest.raises(ValueError):
        decode_receipt(receipt_bytes(r)[1:])


#: A receipt and its hash as computed before receipts had an `ending` (commit edcfb52).
BEFORE_ENDING = GatewayReceipt(
    receipt_id="rcp_" + "ab" * 12, key_id="ik_0123456789abcdef", buyer="acc_b",
    provider="acc_p", instrument="llama-3.1-70b/2030-12-01T00Z/1h", endpoint_id="e1",
    model="llama-3.1-70b", prompt_tokens=3, completion_tokens=4, cached_tokens=1,
    reasoning_tokens=0, tokens=7, started_ms=1_700_000_000_000, ended_ms=1_700_000_000_250,
    request_sha256=hashlib.sha256(b"q").digest(), response_sha256=hashlib.sha256(b"a").digest(),
)  # fmt: skip
BEFORE_ENDING_HASH = "f31fbcd6c1e157f295036ffd131455b60d4ff4366d187fcbff3baad210a11688"


def _payload(r: GatewayReceipt, **fields: object) -> bytes:
    values = {**msgspec.structs.asdict(r), **fields}
    return msgspec.msgpack.Encoder(order="sorted").encode(
        {k: v for k, v in values.items() if v is not None}
    )


def test_receipts_cut_by_a_crash_take_layout_v2_and_the_others_keep_their_hashes() -> None:
    r = BEFORE_ENDING
    assert r.ending is Ending.SEEN
    assert receipt_hash(r).hex() == BEFORE_ENDING_HASH  # every old receipt still verifies
    assert receipt_bytes(r).startswith(RECEIPT_PREFIX) and b"ending" not in receipt_bytes(r)
    crash = msgspec.structs.replace(r, ending=Ending.CRASH)
    data = receipt_bytes(crash)
    assert data.startswith(RECEIPT_PREFIX_V2) and b"crash" in data
    assert decode_receipt(data) == crash and decode_receipt(receipt_bytes(r)) == r
    assert receipt_hash(crash) != receipt_hash(r)
    # One canonical form per receipt: the other spellings are refused.
    forged = {
        "v1 naming its ending": RECEIPT_PREFIX + _payload(r, ending="seen"),
        "v1 of a crash": RECEIPT_PREFIX + _payload(r, ending="crash"),
        "v2 of a call seen to its end": RECEIPT_PREFIX_V2 + _payload(r, ending="seen"),
        "v2 without an ending": RECEIPT_PREFIX_V2 + _payload(r, ending=None),
        "v3": b"tokex/receipt/v3\x00" + _payload(r, ending="crash"),
    }
    assert RECEIPT_PREFIX + _payload(r, ending=None) == receipt_bytes(r)
    for why, body in forged.items():
        with pytest.raises(ValueError):
            decode_receipt(body)
            pytest.fail(why)
    # The auditor's rule holds for a delivery with both layouts.
    rs = [receipt(1), msgspec.structs.replace(receipt(2), ending=Ending.CRASH)]
    meta = {"buyer": "b", "provider": "p", "instrument": "m/1/1", **commitment(rs, 1).metadata()}
    assert check_receipts(meta, 16, rs).count == 2
    altered = [rs[0], msgspec.structs.replace(rs[1], ending=Ending.SEEN)]
    with pytest.raises(ReceiptMismatch, match="root"):
        check_receipts(meta, 16, altered)


def test_the_root_commits_to_the_receipts_and_their_order() -> None:
    rs = [receipt(i) for i in range(5)]
    hashes = [receipt_hash(r) for r in rs]
    assert receipts_root(hashes) == MemoryNodeStore(leaf_hash(h) for h in hashes).root()
    assert receipts_root(hashes[::-1]) != receipts_root(hashes)
    assert receipts_root(hashes[:4]) != receipts_root(hashes)


def test_the_auditors_rule_for_one_delivery() -> None:
    rs = [receipt(i, weight=3) for i in range(4)]
    meta = {"buyer": "b", "provider": "p", "instrument": "m/1/1", **commitment(rs, 3).metadata()}
    total = sum(r.tokens for r in rs)
    assert total == 4 * (3 + 15)
    assert check_receipts(meta, total, rs).count == 4
    bad = {
        "one removed": (rs[:3], total),
        "one altered": (
            [*rs[:3], msgspec.structs.replace(rs[3], response_sha256=b"\x01" * 32)],
            total,
        ),
        "reordered": ([rs[1], rs[0], *rs[2:]], total),
        "burned other than receipts": (rs, total - 1),
        "tokens not by the weight": ([*rs[:3], receipt(3, weight=1)], total),
        "another buyer's": ([*rs[:3], msgspec.structs.replace(rs[3], buyer="x")], total),
    }
    for why, (receipts, burned) in bad.items():
        with pytest.raises(ReceiptMismatch):
            check_receipts(meta, burned, receipts)
            pytest.fail(why)
    with pytest.raises(ReceiptMismatch, match="commitment"):
        check_receipts({**meta, "receipts_root": "zz"}, total, rs)


def test_a_commitment_is_read_only_as_the_exchange_writes_it() -> None:
    """Canonical decimals (no sign, underscore, space, leading zero or other script's
    digits) and 64 lower-case hex characters: each field has one spelling."""
    c = commitment([receipt(1), receipt(2)], 1)
    assert commitment_of(c.metadata()) == c
    assert commitment_of({**c.metadata(), "receipt_tokens": "0"}) is not None
    hexroot = c.root.hex()
    bad = {
        "receipts": ["+2", "0_2", " 2", "2\n", "02", "\u0662", "-1", "0", ""],
        "receipt_tokens": ["+16", "1_6", "16 ", "016", "\u0661\u0666", "-16"],
        "completion_weight": ["+1", "01", "\u0661", "0"],
        "receipts_root": [
            hexroot.upper(), " ".join(hexroot[i : i + 2] for i in range(0, 64, 2)),
            hexroot[:62], hexroot + "00", hexroot + "\n",
        ],
    }  # fmt: skip
    for field, values in bad.items():
        for value in values:
            with pytest.raises(ReceiptMismatch, match="well-formed commitment"):
                commitment_of({**c.metadata(), field: value})
                pytest.fail(f"{field}={value!r}")


def test_receipts_with_a_negative_count_or_ending_before_they_start_are_refused() -> None:
    """A receipt charging -992 tokens would net out one inflated by 1,000; the metering
    never makes a negative count or an end before the start."""
    rs = [receipt(1, prompt=992, completion=8), receipt(2, prompt=-1000, completion=8)]
    meta = {"buyer": "b", "provider": "p", "instrument": "m/1/1", **commitment(rs, 1).metadata()}
    assert sum(r.tokens for r in rs) == 8
    with pytest.raises(ReceiptMismatch, match=f"receipt {rs[1].receipt_id} has a negative prompt"):
        check_receipts(meta, 8, rs)
    good = receipt(1)
    for changed in (
        {"completion_tokens": -5, "prompt_tokens": 13},
        {"cached_tokens": -1},
        {"reasoning_tokens": -1},
        {"started_ms": 3},
    ):
        r = msgspec.structs.replace(good, **changed)
        meta = {"buyer": "b", "provider": "p", "instrument": "m/1/1",
                **commitment([r], 1).metadata()}  # fmt: skip
        with pytest.raises(ReceiptMismatch, match=r"negative|ends before it starts"):
            check_receipts(meta, r.tokens, [r])
            pytest.fail(str(changed))


def test_a_delivery_burns_only_its_own_buyers_entitlement() -> None:
    """Receipts of buyer b from provider p on m/1/1 back a burn of that entitlement and
    of no other: another buyer's, provider's or instrument's is refused, named."""
    meta = {"buyer": "b", "provider": "p", "instrument": "m/1/1"}
    own = burned_account(meta)
    assert own == ("b@p", "tok:m/1/1", "entitlement")
    mint = ("exchange", "tok:m/1/1", "issuance")
    assert entitlement_burned(meta, [(own, -8), (mint, 8)]) == 8
    for owner, asset in ("x@p", "tok:m/1/1"), ("b@q", "tok:m/1/1"), ("b@p", "tok:m/1/2"):
        other = (owner, asset, "entitlement")
        with pytest.raises(ReceiptMismatch, match=f"burns the entitlement {owner}/{asset},"):
            entitlement_burned(meta, [(own, -4), (other, -4), (mint, 8)])
    with pytest.raises(ReceiptMismatch, match="name its parties"):
        burned_account({"buyer": "b", "provider": "p"})


def proof_of(rs: list[GatewayReceipt], n: int, body: bytes) -> ReceiptProof:
    store = MemoryNodeStore(leaf_hash(receipt_hash(r)) for r in rs)
    tx = decode_transaction(body)
    return ReceiptProof(
        receipt=rs[n], receipt_sha256=receipt_hash(rs[n]),
        proof=InclusionProof(leaf_index=n, tree_size=len(rs), hashes=store.inclusion_proof(n)),
        delivery=LedgerEntry(index=tx.index, canonical=body, leaf_hash=leaf_hash(body),
                             transaction=TransactionView.of(tx)),
    )  # fmt: skip


def test_receipt_proofs_verify_and_tampered_ones_fail() -> None:
    rs = [receipt(i) for i in range(6)]
    body = delivery(rs)
    for n in range(6):
        assert verify_receipt_proof(proof_of(rs, n, body)).index == 7
    good = proof_of(rs, 4, body)
    other = proof_of(rs, 2, body)
    forged = msgspec.structs.replace(rs[4], tokens=1, prompt_tokens=0, completion_tokens=1)
    tampered = {
        "receipt altered": msgspec.structs.replace(good, receipt=forged),
        "receipt and its hash altered": msgspec.structs.replace(
            good, receipt=forged, receipt_sha256=receipt_hash(forged)
        ),
        "wrong leaf": msgspec.structs.replace(good, proof=other.proof),
        "hash flipped": msgspec.structs.replace(
            good, proof=InclusionProof(4, 6, [b"\x00" * 32, *good.proof.hashes[1:]])
        ),
        "another delivery": msgspec.structs.replace(
            good, delivery=proof_of(rs[:5], 4, delivery(rs[:5])).delivery
        ),
        "delivery bytes altered": msgspec.structs.replace(
            good,
            delivery=msgspec.structs.replace(
                good.delivery, canonical=good.delivery.canonical[:-1] + b"\x00"
            ),
        ),
    }
    for why, p in tampered.items():
        with pytest.raises((ReceiptMismatch, InvalidProof)):
            verify_receipt_proof(p)
            pytest.fail(why)
