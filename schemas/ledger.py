"""Ledger wire and canonical forms.

A `Transaction` is what a caller asks the ledger to do: plain transfers between
the available balances of accounts (`Posting`) and operations on two-phase
holds (`HoldCreate`, `HoldPost`, `HoldVoid`). The ledger expands it into
`Entry` rows — one signed amount on one bucket (available or held) of one
account — which sum to zero per asset. A committed transaction is stored and
signed as a `CommittedTransaction`: the expanded entries, the resolved hold
operations and the caller's id, code, time and metadata, at its leaf index.

All amounts are Python ints (minor currency units, or tokens). Times are Unix
milliseconds, given by the caller: the ledger never reads a clock.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated

import msgspec

# An identifier chosen by the caller (transaction id, hold id): printable, bounded.
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+(?!\n)$")]
# A name part of an account (owner, asset, kind): no separators, bounded.
NamePart = Annotated[
    str, msgspec.Meta(min_length=1, max_length=96, pattern=r"^[A-Za-z0-9._:@/-]+(?!\n)$")
]
Code = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*(?!\n)$")
]
TimeMs = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class Bucket(IntEnum):
    """Which part of an account's balance an entry moves."""

    AVAILABLE = 0
    HELD = 1


class Account(msgspec.Struct, frozen=True, array_like=True):
    """A ledger account: who owns it, in which asset, and what it is for.

    `kind` decides the floor rule (see `ledger.accounts`): user kinds may never
    go below zero, system kinds such as `issuance` or `bank` may.
    """

    owner: NamePart
    asset: NamePart
    kind: NamePart

    def __str__(self) -> str:
        return f"{self.owner}|{self.asset}|{self.kind}"


class Posting(msgspec.Struct, frozen=True, array_like=True):
    """A signed amount on the available bucket of one account."""

    account: Account
    amount: int


class HoldCreate(msgspec.Struct, frozen=True, tag="create", kw_only=True):
    """Reserve `amount` of an account: available -> held."""

    hold_id: Ident
    account: Account
    amount: int
    expires_at: TimeMs | None = None


class HoldPost(msgspec.Struct, frozen=True, tag="post", kw_only=True):
    """Settle part (`amount`) or all (`amount=None`) of what a hold still reserves.

    The held value leaves the account; the transaction's postings say where it goes.
    """

    hold_id: Ident
    amount: int | None = None


class HoldVoid(msgspec.Struct, frozen=True, tag="void", kw_only=True):
    """Release part (`amount`) or all (`amount=None`) of a hold: held -> available."""

    hold_id: Ident
    amount: int | None = None


HoldOp = HoldCreate | HoldPost | HoldVoid


class Transaction(msgspec.Struct, frozen=True, kw_only=True):
    """A request to the ledger. Accepted whole or rejected whole."""

    id: Ident
    code: Code
    time: TimeMs
    postings: tuple[Posting, ...] = ()
    holds: tuple[HoldOp, ...] = ()
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One signed amount on one bucket of one account: what balances are made of."""

    account: Account
    bucket: Bucket
    amount: int


class ResolvedHoldOp(msgspec.Struct, frozen=True, array_like=True):
    """A hold operation as applied, with its amount made explicit."""

    op: str  # "create" | "post" | "void"
    hold_id: str
    account: Account
    amount: int
    expires_at: int | None


class CommittedTransaction(msgspec.Struct, frozen=True, array_like=True):
    """A transaction as the ledger committed it: the leaf that gets hashed and signed."""

    index: int
    id: str
    code: str
    time: int
    entries: tuple[Entry, ...]
    holds: tuple[ResolvedHoldOp, ...]
    metadata: dict[str, str]


class TransactionResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of submitting one transaction (the first outcome, on a replay)."""

    id: str
    committed: bool
    index: int | None = None
    code: str | None = None
    message: str | None = None


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    """An account's balance: what it can spend, what is reserved, and both together."""

    account: Account
    available: int
    held: int

    @property
    def total(self) -> int:
        return self.available + self.held


class Hold(msgspec.Struct, kw_only=True):
    """A two-phase reservation: `remaining` is what can still be posted or voided."""

    hold_id: str
    account: Account
    amount: int
    remaining: int
    expires_at: int | None
    created_index: int
