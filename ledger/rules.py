"""The posting rules: pure, in-memory, deterministic.

`LedgerState` holds every account's balance (available and held) and every
hold, and applies one `Transaction` at a time, whole or not at all:

1. each posting becomes an entry on the account's available bucket;
2. each hold operation becomes entries between the available and held buckets
   (create: available -> held; void: held -> available; post: out of held, the
   postings of the same transaction saying where the value goes);
3. the entries must sum to zero per asset;
4. no user account may end below zero on either bucket (system accounts, see
   `ledger.accounts`, may), and no balance may leave the bigint range;
5. nothing is posted to or held on a retired account.

An account at zero (available and held) can be retired (`retire`): it leaves memory
and is never opened again (the market retires the escrow, entitlement and token
accounts of an instrument when it settles, so recovery does not load them).

Only when every check passes is anything changed. There is no clock and no
I/O here: the store (`ledger.store`) loads this state from PostgreSQL and
persists what it returns, and a replay of the same transactions from the same
state gives the same entries and balances.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.accounts import MAX_AMOUNT, may_go_negative, valid_account
from ledger.errors import (
    AccountNotEmpty,
    AccountRetired,
    DuplicateHold,
    HoldClosed,
    HoldExceeded,
    HoldExpired,
    InsufficientFunds,
    InvalidTransaction,
    Unbalanced,
    UnknownHold,
)
from schemas.ledger import (
    Account,
    Balance,
    Bucket,
    CommittedTransaction,
    Entry,
    Hold,
    HoldCreate,
    HoldPost,
    HoldVoid,
    ResolvedHoldOp,
    Transaction,
)

AVAILABLE = Bucket.AVAILABLE
HELD = Bucket.HELD

MAX_LEGS = 256
MAX_METADATA = 32
MAX_METADATA_TEXT = 512

#: The code of the void transactions that `LedgerState.expiries` makes.
EXPIRY_CODE = "hold_expiry"


def _amount(value: object, what: str) -> int:
    if type(value) is not int or value <= 0 or value > MAX_AMOUNT:
        raise InvalidTransaction(f"{what} must be a whole number from 1 to {MAX_AMOUNT}")
    return value


class LedgerState:
    """Balances and holds in memory, changed only through `apply`."""

    __slots__ = (
        "_checked_accounts", "balances", "closed_holds", "holds", "next_index", "retired"
    )  # fmt: skip

    def __init__(self, next_index: int = 0) -> None:
        self.balances: dict[Account, list[int]] = {}  # account -> [available, held]
        self.holds: dict[str, Hold] = {}  # open holds (remaining > 0)
        self.closed_holds: set[str] = set()  # ids of holds fully posted or voided
        #: Accounts retired since this state was loaded (those retired before are not
        #: loaded at all: the database refuses to open one again, see `ledger.store`).
        self.retired: set[Account] = set()
        self.next_index = next_index
        self._checked_accounts: set[Account] = set()

    # -- queries ---------------------------------------------------------------

    def balance(self, account: Account) -> Balance:
        available, held = self.balances.get(account, (0, 0))
        return Balance(account=account, available=available, held=held)

    def all_balances(self) -> list[Balance]:
        return [Balance(account=a, available=b[0], held=b[1]) for a, b in self.balances.items()]

    def asset_totals(self) -> dict[str, int]:
        """Sum of every account's total per asset: zero for every asset, always."""
        totals: dict[str, int] = {}
        for account, (available, held) in self.balances.items():
            totals[account.asset] = totals.get(account.asset, 0) + available + held
        return totals

    # -- the rule --------------------------------------------------------------

    def apply(self, tx: Transaction) -> CommittedTransaction:
        """Apply `tx` whole, or raise a `TransactionRejected` having changed nothing.

        Stages: shape, postings to entries, hold operations, zero sum per asset, floors
        and range; only then is memory changed (`_commit`)."""
        holds = tx.holds
        self._check_shape(tx)
        entries: list[Entry] = []
        deltas: dict[Account, list[int]] = {}
        self._post(tx, entries, deltas)

        resolved: list[ResolvedHoldOp] = []
        new_holds: dict[str, Hold] = {}
        remaining: dict[str, int] = {}
        if holds:
            self._resolve_holds(tx, entries, deltas, resolved, new_holds, remaining)
        _check_zero_sum(entries, bool(holds))
        updates = self._checked_updates(deltas)
        self._commit(updates, new_holds, remaining)

        index = self.next_index
        self.next_index = index + 1
        return CommittedTransaction(
            index, tx.id, tx.code, tx.time, tuple(entries), tuple(resolved), tx.metadata
        )

    def _check_shape(self, tx: Transaction) -> None:
        if not tx.postings and not tx.holds and not tx.metadata:
            # A transaction without legs is an announcement (e.g. a key rotation):
            # it moves nothing, so it must at least say something.
            raise InvalidTransaction(
                "a transaction needs a posting, a hold operation or (an announcement) metadata"
            )
        if len(tx.postings) + len(tx.holds) > MAX_LEGS:
            raise InvalidTransaction(f"a transaction has at most {MAX_LEGS} legs")
        self._check_metadata(tx.metadata)

    def _post(
        self, tx: Transaction, entries: list[Entry], deltas: dict[Account, list[int]]
    ) -> None:
        """The postings as entries on available buckets, and their deltas per account."""
        checked = self._checked_accounts
        for posting in tx.postings:
            account = posting.account
            if account not in checked:
                self._check_account(account)
            amount = posting.amount
            if type(amount) is not int or amount == 0 or not -MAX_AMOUNT <= amount <= MAX_AMOUNT:
                raise InvalidTransaction("a posting's amount must be a non-zero whole number")
            entries.append(Entry(account, AVAILABLE, amount))
            delta = deltas.get(account)
            if delta is None:
                deltas[account] = [amount, 0]
            else:
                delta[0] += amount

    def _checked_updates(self, deltas: dict[Account, list[int]]) -> list[tuple[Account, int, int]]:
        """The new (available, held) of every account touched, checked against the floor
        and the representable range before anything changes."""
        balances = self.balances
        updates: list[tuple[Account, int, int]] = []
        for account, (d_available, d_held) in deltas.items():
            current = balances.get(account)
            if current is None:
                available, held = d_available, d_held
            else:
                available, held = current[0] + d_available, current[1] + d_held
            if (available < 0 or held < 0) and not may_go_negative(account):
                raise InsufficientFunds(f"{account} would go below zero")
            if not (
                -MAX_AMOUNT <= available <= MAX_AMOUNT
                and -MAX_AMOUNT <= held <= MAX_AMOUNT
                and -MAX_AMOUNT <= available + held <= MAX_AMOUNT
            ):
                raise InvalidTransaction(f"{account} would leave the representable range")
            updates.append((account, available, held))
        return updates

    def _commit(
        self,
        updates: list[tuple[Account, int, int]],
        new_holds: dict[str, Hold],
        remaining: dict[str, int],
    ) -> None:
        """Change memory: checked balances, new holds, holds drawn down or closed."""
        balances = self.balances
        for account, available, held in updates:
            current = balances.get(account)
            if current is None:
                balances[account] = [available, held]
            else:
                current[0] = available
                current[1] = held
        if new_holds:
            self.holds.update(new_holds)
        for hold_id, left in remaining.items():
            if left == 0:
                del self.holds[hold_id]
                self.closed_holds.add(hold_id)
            else:
                self.holds[hold_id].remaining = left

    def _resolve_holds(
        self,
        tx: Transaction,
        entries: list[Entry],
        deltas: dict[Account, list[int]],
        resolved: list[ResolvedHoldOp],
        new_holds: dict[str, Hold],
        remaining: dict[str, int],
    ) -> None:
        """Turn the hold operations into entries, against a scratch copy of the holds."""

        def move(account: Account, d_available: int, d_held: int) -> None:
            delta = deltas.get(account)
            if delta is None:
                deltas[account] = [d_available, d_held]
            else:
                delta[0] += d_available
                delta[1] += d_held

        for op in tx.holds:
            if isinstance(op, HoldCreate):
                hold_id = op.hold_id
                self._check_hold_id(hold_id)
                if hold_id in self.holds or hold_id in self.closed_holds or hold_id in new_holds:
                    raise DuplicateHold(f"hold {hold_id} already exists")
                if op.account not in self._checked_accounts:
                    self._check_account(op.account)
                amount = _amount(op.amount, "a hold's amount")
                if op.expires_at is not None and (
                    type(op.expires_at) is not int or op.expires_at <= tx.time
                ):
                    raise InvalidTransaction("a hold must expire after the transaction's time")
                new_holds[hold_id] = Hold(
                    hold_id=hold_id,
                    account=op.account,
                    amount=amount,
                    remaining=amount,
                    expires_at=op.expires_at,
                    created_index=self.next_index,
                )
                remaining[hold_id] = amount
                entries.append(Entry(op.account, AVAILABLE, -amount))
                entries.append(Entry(op.account, HELD, amount))
                move(op.account, -amount, amount)
                resolved.append(
                    ResolvedHoldOp("create", hold_id, op.account, amount, op.expires_at)
                )
                continue
            if not isinstance(op, HoldPost | HoldVoid):
                raise InvalidTransaction("unknown hold operation")
            hold_id = op.hold_id
            hold = new_holds.get(hold_id) or self.holds.get(hold_id)
            if hold is None:
                if hold_id in self.closed_holds:
                    raise HoldClosed(f"hold {hold_id} is already fully posted or voided")
                raise UnknownHold(f"no hold {hold_id}")
            left = remaining.get(hold_id, hold.remaining)
            if left == 0:
                raise HoldClosed(f"hold {hold_id} is already fully posted or voided")
            is_post = isinstance(op, HoldPost)
            if is_post and hold.expires_at is not None and tx.time >= hold.expires_at:
                raise HoldExpired(f"hold {hold_id} expired at {hold.expires_at}")
            amount = left if op.amount is None else _amount(op.amount, "a hold operation's amount")
            if amount > left:
                raise HoldExceeded(f"hold {hold_id} has only {left} left, not {amount}")
            remaining[hold_id] = left - amount
            account = hold.account
            entries.append(Entry(account, HELD, -amount))
            if is_post:
                move(account, 0, -amount)
                resolved.append(ResolvedHoldOp("post", hold_id, account, amount, hold.expires_at))
            else:
                entries.append(Entry(account, AVAILABLE, amount))
                move(account, amount, -amount)
                resolved.append(ResolvedHoldOp("void", hold_id, account, amount, hold.expires_at))

    def _check_account(self, account: Account) -> None:
        if not valid_account(account):
            raise InvalidTransaction(f"malformed account {account!r}")
        if account in self.retired:
            raise AccountRetired(f"{account} is retired")
        self._checked_accounts.add(account)

    # -- retirement --------------------------------------------------------------

    def retire(self, accounts: Iterable[Account]) -> list[Account]:
        """Retire every account of `accounts` that is open, whole or not at all: each
        must be at zero, available and held (so no open hold is on it), else
        `AccountNotEmpty` and nothing changes. Retired accounts leave `balances`, and a
        later posting or hold on one is refused (`AccountRetired`). Returns the accounts
        retired now, in order (unknown and already retired ones are skipped)."""
        balances = self.balances
        found = [a for a in dict.fromkeys(accounts) if a in balances]
        for account in found:
            available, held = balances[account]
            if available or held:
                raise AccountNotEmpty(
                    f"{account} holds {available} available and {held} held: not retired"
                )
        for account in found:
            del balances[account]
            self._checked_accounts.discard(account)
            self.retired.add(account)
        return found

    @staticmethod
    def _check_hold_id(hold_id: object) -> None:
        if not isinstance(hold_id, str) or not 1 <= len(hold_id) <= 128:
            raise InvalidTransaction("a hold id is 1 to 128 characters")

    @staticmethod
    def _check_metadata(metadata: object) -> None:
        if not isinstance(metadata, dict):
            raise InvalidTransaction("metadata must be a map of text to text")
        if len(metadata) > MAX_METADATA:
            raise InvalidTransaction(f"at most {MAX_METADATA} metadata items")
        for key, value in metadata.items():
            if not (
                isinstance(key, str)
                and isinstance(value, str)
                and len(key) <= MAX_METADATA_TEXT
                and len(value) <= MAX_METADATA_TEXT
            ):
                raise InvalidTransaction("metadata must be a map of short text to short text")

    # -- expiry ------------------------------------------------------------------

    def expiries(self, now: int) -> list[Transaction]:
        """The void transactions for every open hold that has expired by `now`.

        Their ids are derived from the hold id, so running expiry twice (or on
        two replicas) asks for the same transactions and idempotency makes the
        second a no-op.
        """
        due = sorted(
            (h.expires_at, h.hold_id)
            for h in self.holds.values()
            if h.expires_at is not None and h.expires_at <= now
        )
        return [
            Transaction(
                id=f"expire:{hold_id}",
                code=EXPIRY_CODE,
                time=now,
                holds=(HoldVoid(hold_id=hold_id),),
            )
            for _, hold_id in due
        ]


def replay_into(state: LedgerState, committed: CommittedTransaction) -> None:
    """Apply an already committed transaction to `state` without re-checking it.

    Recovery uses this to roll a snapshot forward through the journal; the
    rules were checked when the transaction was first committed.
    """
    balances = state.balances
    for entry in committed.entries:
        current = balances.get(entry.account)
        if current is None:
            current = balances[entry.account] = [0, 0]
        current[entry.bucket] += entry.amount
    for op in committed.holds:
        if op.op == "create":
            state.holds[op.hold_id] = Hold(
                hold_id=op.hold_id,
                account=op.account,
                amount=op.amount,
                remaining=op.amount,
                expires_at=op.expires_at,
                created_index=committed.index,
            )
        else:
            hold = state.holds[op.hold_id]
            hold.remaining -= op.amount
            if hold.remaining == 0:
                del state.holds[op.hold_id]
                state.closed_holds.add(op.hold_id)
    state.next_index = committed.index + 1


def replay(committed: Iterable[CommittedTransaction]) -> dict[Account, tuple[int, int]]:
    """Balances recomputed from committed entries alone (what an auditor does)."""
    balances: dict[Account, list[int]] = {}
    for tx in committed:
        for entry in tx.entries:
            current = balances.setdefault(entry.account, [0, 0])
            current[entry.bucket] += entry.amount
    return {account: (b[0], b[1]) for account, b in balances.items()}


def _check_zero_sum(entries: list[Entry], has_holds: bool) -> None:
    """Every asset's entries sum to zero (the common two-posting transfer, fast)."""
    if len(entries) == 2 and not has_holds:
        first, second = entries
        if first.account.asset != second.account.asset or first.amount + second.amount:
            raise Unbalanced("the postings do not sum to zero per asset")
        return
    sums: dict[str, int] = {}
    for entry in entries:
        asset = entry.account.asset
        sums[asset] = sums.get(asset, 0) + entry.amount
    unbalanced = sorted(asset for asset, total in sums.items() if total)
    if unbalanced:
        raise Unbalanced(f"the entries do not sum to zero for {', '.join(unbalanced)}")
