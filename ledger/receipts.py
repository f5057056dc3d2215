"""Receipts as evidence of a delivery: their hash, their tree, the commitment a delivery's
signed body makes to them, and the offline check of a receipt's proof. Pure: no I/O.

A receipt (`schemas.gateway.GatewayReceipt`) is one metered call through the gateway.

* Canonical bytes (`receipt_bytes`): a receipt of a call the gateway saw end (`ending`
  SEEN, every receipt made before the field existed) is ``b"tokex/receipt/v1\\x00"`` then
  the receipt as MessagePack from msgspec with sorted keys, `ending` left out (layout v1,
  unchanged); a receipt of a call cut by a crash (`ending` CRASH) is
  ``b"tokex/receipt/v2\\x00"`` then the same map with `ending` in it (layout v2). Each
  receipt has one canonical form: a v1 payload naming an `ending`, or a v2 one not naming
  CRASH, is refused (`decode_receipt`). Its hash is SHA-256 of those bytes
  (`receipt_hash`), so the hashes, trees and signed roots of every receipt made before v2
  are unchanged, and a verifier that knows only v1 refuses a v2 receipt by its prefix
  rather than misread it.
* A gateway delivery's receipts, in the order the delivery lists them, form an RFC 6962
  tree (`ledger.merkle`): leaf i is ``leaf_hash(receipt_hash(r_i))``.
* The delivery transaction's metadata commits to them (`commitment`): ``receipts`` (the
  count), ``receipt_tokens`` (the sum of their charged `tokens`), ``receipts_root`` (the
  tree's root, hex) and ``completion_weight`` (the instrument's term by which each
  receipt's tokens are prompt + weight * completion). That metadata is part of the
  transaction's canonical bytes, a leaf of the ledger's signed Merkle log, so a receipt
  cannot be dropped, added or altered after the fact without breaking a signed root.

`check_receipts` is the auditor's rule for one delivery (used by `tokex audit verify`),
with `entitlement_burned`: what it burned, only ever of its own buyer's entitlement;
`verify_receipt_proof` checks one receipt's inclusion in its delivery (the answer of
``GET /v1/receipts/{id}/proof``); the delivery entry's own place in the log is then proved
by the ledger's inclusion proof of its index.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from ledger.canonical import decode_transaction
from ledger.merkle import InvalidProof, leaf_hash, root_from_leaf_hashes, verify_inclusion
from schemas.errors import DomainError, ErrorKind
from schemas.gateway import Ending, GatewayReceipt, ReceiptProof
from schemas.ledger import CommittedTransaction

__all__ = [
    "RECEIPT_PREFIX",
    "RECEIPT_PREFIX_V2",
    "Commitment",
    "ReceiptMismatch",
    "burned_account",
    "check_receipts",
    "commitment",
    "commitment_of",
    "decode_receipt",
    "entitlement_burned",
    "receipt_bytes",
    "receipt_hash",
    "receipts_root",
    "verify_receipt_proof",
]

RECEIPT_PREFIX = b"tokex/receipt/v1\x00"
RECEIPT_PREFIX_V2 = b"tokex/receipt/v2\x00"
SOURCE = "gateway"

#: The commitment's integers and root, as `Commitment.metadata` writes them and nothing
#: else ("+1", " 1", "0_1", "01", other scripts' digits; upper case or spaced hex).
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_COUNTS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "tokens")

_encoder = msgspec.msgpack.Encoder(order="sorted")
_decoder = msgspec.msgpack.Decoder(GatewayReceipt)


class ReceiptMismatch(DomainError):
    """Receipts do not back the delivery that commits to them (or a proof is wrong)."""

    code = "receipts_mismatch"
    kind = ErrorKind.INVALID


def receipt_bytes(r: GatewayReceipt) -> bytes:
    # `GatewayReceipt` omits its defaults when encoded: `ending` SEEN is left out (v1).
    prefix = RECEIPT_PREFIX if r.ending is Ending.SEEN else RECEIPT_PREFIX_V2
    return prefix + _encoder.encode(r)


def decode_receipt(data: bytes) -> GatewayReceipt:
    """Inverse of `receipt_bytes`; raises `ValueError` on anything else (a payload that is
    not the canonical form of its receipt under its prefix included)."""
    if data.startswith(RECEIPT_PREFIX):
        payload, v2 = data[len(RECEIPT_PREFIX) :], False
    elif data.startswith(RECEIPT_PREFIX_V2):
        payload, v2 = data[len(RECEIPT_PREFIX_V2) :], True
    else:
        raise ValueError("not a tokex receipt (bad prefix)")
    try:
        r = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed receipt: {exc}") from exc
    if receipt_bytes(r) != data:
        layout = "v2" if v2 else "v1"
        raise ValueError(f"not the canonical {layout} bytes of the receipt it decodes to")
    return r


def receipt_hash(r: GatewayReceipt) -> bytes:
    return hashlib.sha256(receipt_bytes(r)).digest()


def receipts_root(hashes: Sequence[bytes]) -> bytes:
    """The root of the tree whose leaves are these receipt hashes, in order."""
    return root_from_leaf_hashes([leaf_hash(h) for h in hashes])


@dataclass(frozen=True, slots=True)
class Commitment:
    """What a gateway delivery's signed body says of its receipts."""

    count: int
    tokens: int
    root: bytes
    completion_weight: int

    def metadata(self) -> dict[str, str]:
        return {
            "source": SOURCE,
            "receipts": str(self.count),
            "receipt_tokens": str(self.tokens),
            "receipts_root": self.root.hex(),
            "completion_weight": str(self.completion_weight),
        }


def commitment(receipts: Sequence[GatewayReceipt], completion_weight: int) -> Commitment:
    return Commitment(
        count=len(receipts),
        tokens=sum(r.tokens for r in receipts),
        root=receipts_root([receipt_hash(r) for r in receipts]),
        completion_weight=completion_weight,
    )


def commitment_of(metadata: Mapping[str, str]) -> Commitment | None:
    """The commitment in a transaction's metadata; None if it is not a gateway delivery.
    Raises `ReceiptMismatch` if it claims to be one but the fields are malformed."""
    if metadata.get("source") != SOURCE:
        return None
    try:
        fields = [metadata[k] for k in ("receipts", "receipt_tokens", "completion_weight")]
        root_s = metadata["receipts_root"]
    except KeyError:
        raise ReceiptMismatch("a gateway delivery without a well-formed commitment") from None
    if not all(_DECIMAL.fullmatch(f) for f in fields) or not _HEX32.fullmatch(root_s):
        raise ReceiptMismatch("a gateway delivery without a well-formed commitment")
    count, tokens, weight = (int(f) for f in fields)
    if count < 1 or weight < 1:
        raise ReceiptMismatch("a gateway delivery without a well-formed commitment")
    return Commitment(
        count=count, tokens=tokens, root=bytes.fromhex(root_s), completion_weight=weight
    )


def _check_parties(r: GatewayReceipt, metadata: Mapping[str, str], weight: int) -> None:
    who = (metadata.get("buyer"), metadata.get("provider"), metadata.get("instrument"))
    if (r.buyer, r.provider, r.instrument) != who:
        raise ReceiptMismatch(
            f"receipt {r.receipt_id} is of {r.buyer}/{r.provider}/{r.instrument}, "
            f"not of this delivery's {who[0]}/{who[1]}/{who[2]}"
        )
    negative = [k for k in _COUNTS if getattr(r, k) < 0]
    if negative:
        raise ReceiptMismatch(f"receipt {r.receipt_id} has a negative {negative[0]}")
    if r.ended_ms < r.started_ms:
        raise ReceiptMismatch(f"receipt {r.receipt_id} ends before it starts")
    if r.tokens != r.prompt_tokens + weight * r.completion_tokens:
        raise ReceiptMismatch(
            f"receipt {r.receipt_id} charges {r.tokens} tokens, not prompt + "
            f"{weight} x completion = {r.prompt_tokens + weight * r.completion_tokens}"
        )


def burned_account(metadata: Mapping[str, str]) -> tuple[str, str, str]:
    """(owner, asset, kind) of the account a gateway delivery burns: the entitlement of
    its buyer from its provider on its instrument, named as the exchange names it
    (`market.clearing.rules.entitlement`; a test keeps the two the same)."""
    try:
        buyer, provider, instrument = (metadata[k] for k in ("buyer", "provider", "instrument"))
    except KeyError:
        raise ReceiptMismatch("a gateway delivery that does not name its parties") from None
    return f"{buyer}@{provider}", f"tok:{instrument}", "entitlement"


def entitlement_burned(
    metadata: Mapping[str, str], entries: Sequence[tuple[tuple[str, str, str], int]]
) -> int:
    """The tokens a gateway delivery burns, from its entries ((owner, asset, kind),
    amount): every entitlement entry must be on `burned_account`, so receipts of one
    buyer can never back a burn of another's entitlement (or another provider's, or
    another instrument's). Raises `ReceiptMismatch` naming the other account."""
    account = burned_account(metadata)
    burned = 0
    for key, amount in entries:
        if key[2] != "entitlement":
            continue
        if key != account:
            raise ReceiptMismatch(
                f"burns the entitlement {key[0]}/{key[1]}, not its receipts' "
                f"{account[0]}/{account[1]}"
            )
        if amount < 0:
            burned -= amount
    return burned


def check_receipts(
    metadata: Mapping[str, str], burned: int, receipts: Sequence[GatewayReceipt]
) -> Commitment:
    """The auditor's rule for one gateway delivery: its receipts are as many as it says,
    charge what it says and what it burned of the entitlement (`burned`), are each the
    buyer's, provider's and instrument's of the delivery, counted by its weight, with no
    negative token count and no end before its start, and hash to its root. Raises
    `ReceiptMismatch` saying what differs."""
    c = commitment_of(metadata)
    if c is None:
        raise ReceiptMismatch("not a gateway delivery")
    if len(receipts) != c.count:
        raise ReceiptMismatch(f"{len(receipts)} receipts where the delivery commits to {c.count}")
    for r in receipts:
        _check_parties(r, metadata, c.completion_weight)
    total = sum(r.tokens for r in receipts)
    if total != c.tokens or burned != c.tokens:
        raise ReceiptMismatch(
            f"receipts total {total} tokens; the delivery commits to {c.tokens} and burned {burned}"
        )
    if receipts_root([receipt_hash(r) for r in receipts]) != c.root:
        raise ReceiptMismatch("receipts do not hash to the delivery's receipts_root")
    return c


def verify_receipt_proof(p: ReceiptProof) -> CommittedTransaction:
    """Check, offline, that `p.receipt` is leaf `p.proof.leaf_index` of the receipts its
    delivery transaction (`p.delivery`, canonical bytes) commits to. Returns the delivery
    as committed (its index is the leaf to prove in the ledger's log next). Raises
    `ReceiptMismatch` or `InvalidProof`."""
    h = receipt_hash(p.receipt)
    if h != p.receipt_sha256:
        raise ReceiptMismatch("the receipt does not hash to receipt_sha256")
    body = p.delivery.canonical
    if leaf_hash(body) != p.delivery.leaf_hash:
        raise ReceiptMismatch("the delivery's canonical bytes do not hash to its leaf_hash")
    try:
        tx = decode_transaction(body)
    except ValueError as exc:
        raise ReceiptMismatch(f"the delivery's canonical bytes: {exc}") from None
    if tx.index != p.delivery.index:
        raise ReceiptMismatch(f"the delivery says it is entry {tx.index}, not {p.delivery.index}")
    c = commitment_of(tx.metadata)
    if c is None:
        raise ReceiptMismatch(f"entry {tx.index} is not a gateway delivery")
    _check_parties(p.receipt, tx.metadata, c.completion_weight)
    if p.proof.tree_size != c.count:
        raise InvalidProof(
            "root_mismatch", f"proof for {p.proof.tree_size} receipts; the delivery has {c.count}"
        )
    verify_inclusion(leaf_hash(h), p.proof.leaf_index, p.proof.tree_size, p.proof.hashes, c.root)
    return tx
