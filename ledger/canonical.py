"""Canonical bytes: one byte string for one meaning.

Two encodings, each a domain-separation prefix followed by MessagePack from
msgspec with a fixed layout (structs as arrays in declared field order, maps
with sorted keys, integers in their shortest form, no floats anywhere):

- `transaction_bytes(committed)`: the leaf of the ledger's Merkle log, prefix
  ``b"tokex/tx/v1\\x00"``. Everything an auditor needs to recompute balances is
  in it: index, id, code, time, every entry (account, bucket, amount), every
  resolved hold operation and the metadata.
- `request_digest(tx)`: SHA-256 over ``b"tokex/request/v2\\x00"`` and what the
  request asks for: id, code, postings, hold operations and metadata — not its
  time, which the caller stamps when it applies the request (a retry comes with
  a new one). The ledger stores it with the id to tell a replay (same digest:
  return the first result) from a conflicting reuse of an id (different digest).
"""

from __future__ import annotations

import hashlib

import msgspec

from schemas.ledger import CommittedTransaction, Transaction

TRANSACTION_PREFIX = b"tokex/tx/v1\x00"
REQUEST_PREFIX = b"tokex/request/v2\x00"

_encoder = msgspec.msgpack.Encoder(order="sorted")
_decoder = msgspec.msgpack.Decoder(CommittedTransaction)


def transaction_bytes(committed: CommittedTransaction) -> bytes:
    """The canonical leaf bytes of a committed transaction."""
    return TRANSACTION_PREFIX + _encoder.encode(committed)


def decode_transaction(data: bytes) -> CommittedTransaction:
    """Inverse of `transaction_bytes`; raises `ValueError` on anything else."""
    if not data.startswith(TRANSACTION_PREFIX):
        raise ValueError("not a tokex transaction (bad prefix)")
    try:
        return _decoder.decode(data[len(TRANSACTION_PREFIX) :])
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed transaction: {exc}") from exc


def request_digest(tx: Transaction) -> bytes:
    """SHA-256 of the canonical request: equal exactly when the requests ask the same."""
    what = (tx.id, tx.code, tx.postings, tx.holds, tx.metadata)
    return hashlib.sha256(REQUEST_PREFIX + _encoder.encode(what)).digest()
