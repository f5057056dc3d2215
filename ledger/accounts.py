"""Account rules: which accounts may go below zero, and how names are checked.

User accounts (every kind but the system ones below) may never go below
zero on either bucket. System accounts are the exchange's sources and sinks of
value, the other side of money entering or leaving the ledger: `issuance`
(where token capacity is minted from and burned back to) and `bank` (the
operator's bank account, the other side of deposits and withdrawals). They
carry negative balances by design; their negation is what the ledger owes.
"""

from __future__ import annotations

import re

from schemas.ledger import Account

#: Kinds whose balance may be negative: the system's sources and sinks.
SYSTEM_KINDS: frozenset[str] = frozenset({"issuance", "bank"})

#: Amounts and balances stay within PostgreSQL's bigint.
MAX_AMOUNT = 2**63 - 1

_NAME = re.compile(r"[A-Za-z0-9._:@/-]{1,96}")


def may_go_negative(account: Account) -> bool:
    """Whether this account is a system account, exempt from the zero floor."""
    return account.kind in SYSTEM_KINDS


def valid_account(account: Account) -> bool:
    """Whether every part of the account's name is well formed."""
    return (
        isinstance(account, Account)
        and _NAME.fullmatch(account.owner) is not None
        and _NAME.fullmatch(account.asset) is not None
        and _NAME.fullmatch(account.kind) is not None
    )
