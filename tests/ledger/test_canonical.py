"""Golden vectors for the canonical encoding: the bytes that get hashed and signed.

If one of these fails, the encoding changed: every existing Merkle root, checkpoint and
audit file would stop verifying. Change them only with a new prefix version.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.canonical import decode_transaction, request_digest, transaction_bytes
from ledger.merkle import leaf_hash
from schemas.ledger import (
    Account,
    Bucket,
    CommittedTransaction,
    Entry,
    Posting,
    ResolvedHoldOp,
    Transaction,
)

A = Account("acc_0000000000000001", "USD", "cash")
BANK = Account("exchange", "USD", "bank")
SYM = "llama-3.1-70b/2030-01-01T00Z/1h"

GOLDEN = [
    (
        CommittedTransaction(
            0, "deposit:d1", "deposit", 1_800_000_000_000,
            (Entry(BANK, Bucket.AVAILABLE, -100_000), Entry(A, Bucket.AVAILABLE, 100_000)),
            (), {"account": "acc_0000000000000001"},
        ),
        "746f6b65782f74782f7631009700aa6465706f7369743a6431a76465706f736974cf000001a3185c50"
        "00929393a865786368616e6765a3555344a462616e6b00d2fffe79609393b46163635f303030303030"
        "30303030303030303031a3555344a46361736800ce000186a09081a76163636f756e74b46163635f30"
        "303030303030303030303030303031",
        "7c7ede3a39853fbcbd2daf1d91db9ba2970d92958a74a3a827b64a3f0af76e84",
        "f5167627800d1ca0d45199a080859ee10ba72151ec61cdd9a815cdd170d3c391",
    ),
    (
        CommittedTransaction(
            7, "order:42", "order_hold", 1_800_000_000_123,
            (Entry(A, Bucket.AVAILABLE, -5010), Entry(A, Bucket.HELD, 5010)),
            (ResolvedHoldOp("create", "order:42", A, 5010, None),),
            {"order": "42", "instrument": SYM},  # given out of order: encoded sorted
        ),
        "746f6b65782f74782f7631009707a86f726465723a3432aa6f726465725f686f6c64cf000001a3185c"
        "507b929393b46163635f30303030303030303030303030303031a3555344a46361736800d1ec6e9393"
        "b46163635f30303030303030303030303030303031a3555344a46361736801cd13929195a663726561"
        "7465a86f726465723a343293b46163635f30303030303030303030303030303031a3555344a4636173"
        "68cd1392c082aa696e737472756d656e74bf6c6c616d612d332e312d3730622f323033302d30312d30"
        "315430305a2f3168a56f72646572a23432",
        "1119a6a51ce3a59dce5589980d78d707ac91ad32685eb5617afef778b6cf53a6",
        "5e1b9d7e50ac7be3fb796827552c2e3b01968641694c157d30fd44fe23329df2",
    ),
    (
        CommittedTransaction(2**40, "key_rotation:1", "key_rotation", 0, (), (), {}),
        "746f6b65782f74782f76310097cf0000010000000000ae6b65795f726f746174696f6e3a31ac6b6579"
        "5f726f746174696f6e00909080",
        "6fe1709abfccb59804551bb845d3377a48cf4a7d9e9afec3ab582986d72c1c52",
        "156337b54d9fa6086b51df6c1ab8e6780e1770a7d4292586b82252b5e0bc54a2",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("committed", "hex_bytes", "sha256", "leaf"), GOLDEN)
def test_golden_bytes_sha256_and_leaf_hash(
    committed: CommittedTransaction, hex_bytes: str, sha256: str, leaf: str
) -> None:
    data = transaction_bytes(committed)
    assert data.hex() == hex_bytes
    assert hashlib.sha256(data).hexdigest() == sha256
    assert leaf_hash(data).hex() == leaf  # SHA-256(0x00 || bytes), RFC 9162
    assert decode_transaction(data) == committed


def test_decoding_refuses_anything_else() -> None:
    data = transaction_bytes(GOLDEN[0][0])
    for bad in (data[1:], b"tokex/tx/v2\x00" + data[12:], data[:-1], data + b"\x00"):
        with pytest.raises(ValueError):
            decode_transaction(bad)


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6))
def test_metadata_order_does_not_change_the_bytes(metadata: dict[str, str]) -> None:
    reordered = dict(reversed(list(metadata.items())))
    a = CommittedTransaction(1, "x", "c", 2, (), (), metadata)
    b = CommittedTransaction(1, "x", "c", 2, (), (), reordered)
    assert transaction_bytes(a) == transaction_bytes(b)


def test_request_digest_ignores_the_time_but_nothing_else() -> None:
    base = Transaction(id="t", code="c", time=1, postings=(Posting(A, -1), Posting(BANK, 1)))
    later = Transaction(id="t", code="c", time=2, postings=base.postings)
    other = Transaction(id="t", code="c", time=1, postings=(Posting(A, -2), Posting(BANK, 2)))
    assert request_digest(base) == request_digest(later)
    assert request_digest(base) != request_digest(other)
