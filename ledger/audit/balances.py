"""Balances in offline verification (`ledger.audit.verify`): the entries applied to them
with the floor, the order of exported balance rows, and the comparison of the balances
recomputed from the signed entries with those the export states. No I/O, no database."""

from __future__ import annotations

from typing import Literal

from ledger.accounts import SYSTEM_KINDS
from ledger.audit.records import AuditFailure, BalanceRow, Header

__all__ = [
    "apply_entries",
    "below_zero",
    "check_closing",
    "check_entry_sums",
    "check_order",
    "repeated_id",
]

Balances = dict[tuple[str, str, str], list[int]]


def check_order(
    which: str, rows: list[BalanceRow], first: int, previous: BalanceRow | None
) -> BalanceRow | None:
    """Balance rows come in the documented order: ascending by (owner, asset, kind), each
    account once, across all the chunks of one kind (`first` numbers the rows before these,
    `previous` is the last of them). Raises naming the first row out of order; returns the
    last row."""
    for n, row in enumerate(rows, start=first):
        if previous is not None and row[:3] <= previous[:3]:
            raise AuditFailure(
                f"{which} balances row {n}",
                f"account {row[0]}|{row[1]}|{row[2]} is out of order (not after "
                f"{previous[0]}|{previous[1]}|{previous[2]}): rows are sorted by account",
            )
        previous = row
    return previous


def apply_entries(
    balances: dict[tuple[str, str, str], list[int]],
    entries: list[tuple[tuple[str, str, str], Literal[0, 1], int]],
    index: int,
) -> None:
    """Entry `index`'s entries (other than two) on the balances: non-zero, summing to zero
    per asset, and leaving no account they touch below the floor."""
    sums: dict[str, int] = {}
    for account, bucket, amount in entries:
        if not amount:
            raise AuditFailure(f"entry {index}", "zero amount")
        sums[account[1]] = sums.get(account[1], 0) + amount
        bal = balances.get(account)
        if bal is None:
            balances[account] = bal = [0, 0]
        bal[bucket] += amount
    if any(sums.values()):
        raise AuditFailure(f"entry {index}", "entries do not sum to zero per asset")
    for account, _, _ in entries:
        bal = balances[account]
        if (bal[0] < 0 or bal[1] < 0) and account[2] not in SYSTEM_KINDS:
            below_zero(index, account, bal)


def below_zero(index: int, account: tuple[str, str, str], bal: list[int]) -> None:
    """Raise: a user account (`ledger.accounts.may_go_negative`: not a system kind) below
    zero after entry `index`, which the ledger never commits."""
    raise AuditFailure(
        f"entry {index}",
        f"account {account[0]}|{account[1]}|{account[2]} goes below zero (available "
        f"{bal[0]}, held {bal[1]}): only system accounts may",
    )


def repeated_id(index: int, tx_id: str) -> None:
    """Raise: entry `index` has the id of an earlier entry (ids are unique in a ledger)."""
    raise AuditFailure(
        f"entry {index}", f"transaction id repeated: {tx_id!r} is an earlier entry's"
    )


def check_entry_sums(
    balances: Balances,
    opening: dict[tuple[str, str, str], tuple[int, int]],
    rows: list[BalanceRow],
    header: Header | None,
) -> None:
    """The stored entries (`ledger_entries`, which the settlement reports read) summed per
    account over the range, as the export states them in its "entries" rows, equal what
    the signed entries moved (the closing balances recomputed from them, less the opening
    ones). A row of the entries table altered while its transaction's signed bytes were
    not (by a database superuser, its triggers off) shows here, naming the account."""
    assert header is not None
    moved: dict[tuple[str, str, str], tuple[int, int]] = {}
    for key, (available, held) in balances.items():
        was = opening.get(key, (0, 0))
        if available != was[0] or held != was[1]:
            moved[key] = (available - was[0], held - was[1])
    stated = {(owner, asset, kind): (a, h) for owner, asset, kind, a, h in rows}
    if stated == moved:
        return
    key = min(k for k in stated.keys() | moved.keys() if stated.get(k) != moved.get(k))
    s, m = stated.get(key, (0, 0)), moved.get(key, (0, 0))
    raise AuditFailure(
        "ledger entries",
        f"account {key[0]}|{key[1]}|{key[2]}: the stored entries of "
        f"{header.from_index}..{header.to_index - 1} sum to available {s[0]}, held {s[1]}, "
        f"the signed entries to available {m[0]}, held {m[1]} (the entries table, which "
        "the reports read, does not match the signed ledger)",
    )


def check_closing(balances: Balances, closing: list[BalanceRow]) -> int:
    """The balances recomputed from the (opening balances and the) entries equal the
    exported closing balances; returns the number of accounts."""
    recomputed = {(*k, v[0], v[1]) for k, v in balances.items() if v[0] or v[1]}
    exported = set(closing)
    if len(exported) != len(closing):
        raise AuditFailure("closing balances", "repeated rows")
    if recomputed != exported:
        diff = sorted(recomputed ^ exported)[0]
        raise AuditFailure(
            "closing balances",
            f"do not match the balances recomputed from the entries (first difference: "
            f"account {diff[0]}|{diff[1]}|{diff[2]})",
        )
    return len(exported)
