"""Responses of the public, read-only ledger API (`ledger.api`). Bytes are base64 in JSON."""

from __future__ import annotations

import msgspec

from schemas.ledger import Account, CommittedTransaction


class AccountView(msgspec.Struct, frozen=True):
    owner: str
    asset: str
    kind: str


class EntryView(msgspec.Struct, frozen=True):
    account: AccountView
    bucket: str  # "available" | "held"
    amount: int


class HoldOpView(msgspec.Struct, frozen=True):
    op: str
    hold_id: str
    account: AccountView
    amount: int
    expires_at_ms: int | None


class TransactionView(msgspec.Struct, frozen=True):
    """A committed transaction as named JSON fields (the canonical form is arrays, and
    keeps its own names: `time` and a hold's `expires_at` are Unix ms there too)."""

    index: int
    id: str
    code: str
    time_ms: int
    entries: list[EntryView]
    holds: list[HoldOpView]
    metadata: dict[str, str]

    @classmethod
    def of(cls, tx: CommittedTransaction) -> TransactionView:
        def account(a: Account) -> AccountView:
            return AccountView(a.owner, a.asset, a.kind)

        return cls(
            index=tx.index,
            id=tx.id,
            code=tx.code,
            time_ms=tx.time,
            entries=[
                EntryView(account(e.account), "held" if e.bucket else "available", e.amount)
                for e in tx.entries
            ],
            holds=[
                HoldOpView(h.op, h.hold_id, account(h.account), h.amount, h.expires_at)
                for h in tx.holds
            ],
            metadata=dict(tx.metadata),
        )


class LedgerEntry(msgspec.Struct, frozen=True):
    """One leaf of the log: its canonical bytes (what is hashed) and what they say."""

    index: int
    canonical: bytes
    leaf_hash: bytes
    transaction: TransactionView


class CheckpointView(msgspec.Struct, frozen=True):
    tree_size: int
    root: bytes
    time_ms: int
    key: str
    note: str


class CheckpointList(msgspec.Struct, frozen=True):
    checkpoints: list[CheckpointView]


class PublicKey(msgspec.Struct, frozen=True):
    """A checkpoint signing key; checkpoints of size >= valid_from_size (up to the next
    key's) are signed by it. announced_in_tx: the key_rotation entry (None: the first key)."""

    key: str
    name: str
    key_id: str
    valid_from_size: int
    announced_in_tx: int | None


class PublicKeys(msgspec.Struct, frozen=True):
    origin: str | None
    keys: list[PublicKey]
