"""Buyer vouchers and disputes of delivery reports: request and response forms.

A voucher is what a buyer signs with its own account key: "buyer B acknowledges T tokens
delivered by provider P on instrument I" (`Voucher`), cumulative and monotonic like a
payment-channel voucher. Its canonical signed bytes are defined in `market.vouchers`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.trading import AccountId, Amount, ClientId, Symbol

KeyId = Annotated[str, msgspec.Meta(pattern=r"^key_[0-9a-f]{16}(?!\n)$")]
Version = Annotated[int, msgspec.Meta(gt=0, le=2**62)]
#: Base64 of the 64 signature bytes.
SignatureB64 = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
DisputeId = Annotated[str, msgspec.Meta(pattern=r"^dsp_[0-9a-f]{16}(?!\n)$")]


class Voucher(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What the buyer signs: `tokens` delivered by `provider` on `instrument` in all, so
    far; `version` counts the buyer's vouchers of this (provider, instrument) up; `key_id`
    names the buyer's key that signs it."""

    buyer: AccountId
    provider: AccountId
    instrument: Symbol
    tokens: Amount
    version: Version
    key_id: KeyId


class SignedVoucher(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /v1/vouchers`: the voucher and the buyer's signature of it."""

    voucher: Voucher
    signature: SignatureB64


class VoucherView(msgspec.Struct, kw_only=True):
    """An accepted voucher: what it released (its tokens beyond the buyer's last voucher)."""

    buyer: str
    provider: str
    instrument: str
    tokens: int
    version: int
    delta: int  # tokens this voucher delivered (beyond the last accepted one)
    released: int
    fee: int
    paid: int
    transaction_id: str
    time_ms: int


class DisputeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The buyer disputes a pending report of `provider` (`report_id`)."""

    provider: AccountId
    report_id: ClientId
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class DisputeResolution(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The operator's decision: `pay` the provider, or `refund` the buyer. Exactly one of
    the two: a pattern `^(pay|refund)$` also took `"pay\\n"` (`$` matches before a final
    newline), which, not being "pay", refunded."""

    outcome: Literal["pay", "refund"]


class DisputeView(msgspec.Struct, kw_only=True):
    dispute_id: str
    provider: str
    report_id: str
    buyer: str
    instrument: str
    tokens: int
    released: int
    reason: str
    status: str  # open | paid | refunded
    created_at_ms: int
    updated_at_ms: int
    transaction_id: str | None = None  # the resolution's ledger transaction
