"""Property tests of the pure rules over random transfers, holds, posts and voids."""

from __future__ import annotations

from hypothesis import given, settings

from ledger.accounts import may_go_negative
from ledger.errors import TransactionRejected
from ledger.rules import LedgerState, replay
from schemas.ledger import CommittedTransaction, Transaction
from tests.ledger.strategies import steps


def snapshot(state: LedgerState) -> tuple[object, ...]:
    return (
        {a: tuple(b) for a, b in state.balances.items()},
        {h: (v.remaining, v.amount) for h, v in state.holds.items()},
        frozenset(state.closed_holds),
        state.next_index,
    )


@settings(max_examples=300, deadline=None)
@given(steps())
def test_every_step_keeps_the_books_balanced(txs: list[Transaction]) -> None:
    state = LedgerState()
    committed: list[CommittedTransaction] = []
    for tx in txs:
        before = snapshot(state)
        try:
            committed.append(state.apply(tx))
        except TransactionRejected:
            assert snapshot(state) == before, "a rejected transaction changed the state"
        # Every asset sums to zero over all accounts.
        assert all(total == 0 for total in state.asset_totals().values())
        # No user account below zero, on either bucket.
        for account, (available, held) in state.balances.items():
            if not may_go_negative(account):
                assert available >= 0 and held >= 0, account
        # Held balances are exactly what the open holds still reserve.
        reserved: dict[object, int] = {}
        for hold in state.holds.values():
            reserved[hold.account] = reserved.get(hold.account, 0) + hold.remaining
        for account, (_, held) in state.balances.items():
            assert held == reserved.get(account, 0)
        # Balances recomputed from the entries equal the running balances.
        assert replay(committed) == {a: (b[0], b[1]) for a, b in state.balances.items()}
        assert [c.index for c in committed] == list(range(len(committed)))


@settings(max_examples=100, deadline=None)
@given(steps())
def test_replay_from_the_same_start_is_deterministic(txs: list[Transaction]) -> None:
    def run() -> list[object]:
        state = LedgerState()
        out: list[object] = []
        for tx in txs:
            try:
                out.append(state.apply(tx))
            except TransactionRejected as exc:
                out.append(exc.code)
        return out

    assert run() == run()
