"""The posting rules, pure: balances, holds and every rejection, with no database."""

from __future__ import annotations

import pytest

from ledger.errors import (
    DuplicateHold,
    HoldClosed,
    HoldExceeded,
    HoldExpired,
    InsufficientFunds,
    InvalidTransaction,
    Unbalanced,
    UnknownHold,
)
from ledger.rules import EXPIRY_CODE, LedgerState, replay
from schemas.ledger import (
    Account,
    Bucket,
    CommittedTransaction,
    HoldCreate,
    HoldPost,
    HoldVoid,
    Posting,
    Transaction,
)

BANK = Account("exchange", "USD", "bank")
ISSUANCE = Account("exchange", "tok.llama", "issuance")
ALICE = Account("alice", "USD", "cash")
BOB = Account("bob", "USD", "cash")
FEES = Account("exchange", "USD", "fees")
ALICE_TOKENS = Account("alice", "tok.llama", "capacity")


def tx(tx_id: str, *postings: tuple[Account, int], holds: tuple[object, ...] = (), time: int = 10):
    return Transaction(
        id=tx_id,
        code="test",
        time=time,
        postings=tuple(Posting(a, n) for a, n in postings),
        holds=holds,  # type: ignore[arg-type]
    )


def funded(amount: int = 100) -> LedgerState:
    state = LedgerState()
    state.apply(tx("deposit", (BANK, -amount), (ALICE, amount)))
    return state


def balances(state: LedgerState) -> dict[Account, tuple[int, int]]:
    return {a: (b[0], b[1]) for a, b in state.balances.items()}


def test_deposit_moves_value_from_the_bank_which_may_go_negative() -> None:
    state = funded(100)
    assert state.balance(ALICE).available == 100
    assert state.balance(BANK).available == -100
    assert state.asset_totals() == {"USD": 0}


def test_transfer_commits_entries_in_order_at_consecutive_indexes() -> None:
    state = funded(100)
    committed = state.apply(tx("t1", (ALICE, -30), (BOB, 30)))
    assert committed.index == 1
    assert [(e.account, e.bucket, e.amount) for e in committed.entries] == [
        (ALICE, Bucket.AVAILABLE, -30),
        (BOB, Bucket.AVAILABLE, 30),
    ]
    assert state.balance(ALICE).available == 70
    assert state.balance(BOB).available == 30


def test_a_user_account_never_goes_below_zero_and_nothing_half_applies() -> None:
    state = funded(100)
    before = balances(state)
    with pytest.raises(InsufficientFunds):
        state.apply(tx("t1", (ALICE, -101), (BOB, 50), (FEES, 51)))
    assert balances(state) == before
    assert state.next_index == 1


def test_unbalanced_per_asset_is_rejected_even_if_the_grand_total_is_zero() -> None:
    state = funded(100)
    with pytest.raises(Unbalanced):
        state.apply(tx("t1", (ALICE, -10), (BOB, 5)))
    with pytest.raises(Unbalanced):
        state.apply(tx("t2", (ALICE, -10), (ISSUANCE, 10)))
    with pytest.raises(Unbalanced):
        state.apply(tx("t3", (ALICE, -10), (BOB, 5), (ISSUANCE, 5), (ALICE_TOKENS, -5)))


@pytest.mark.parametrize("amount", [0, 1.5, True, "10", 2**63])
def test_amounts_must_be_whole_non_zero_and_in_range(amount: object) -> None:
    state = funded(100)
    with pytest.raises(InvalidTransaction):
        state.apply(tx("t1", (ALICE, amount), (BOB, amount)))  # type: ignore[arg-type]


def test_empty_transaction_and_malformed_accounts_are_rejected() -> None:
    state = funded(100)
    with pytest.raises(InvalidTransaction):
        state.apply(tx("empty"))
    with pytest.raises(InvalidTransaction):
        state.apply(tx("bad", (ALICE, -1), (Account("b o b", "USD", "cash"), 1)))


def test_an_announcement_moves_nothing_but_is_committed() -> None:
    state = funded(100)
    before = balances(state)
    note = Transaction(id="a", code="key_rotation", time=10, metadata={"new_key": "k2"})
    committed = state.apply(note)
    assert committed.index == 1 and committed.entries == ()
    assert balances(state) == before


def test_hold_create_post_in_part_and_void_the_rest() -> None:
    state = funded(100)
    state.apply(tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=60),)))
    assert (state.balance(ALICE).available, state.balance(ALICE).held) == (40, 60)

    # Post 25 of the hold: 20 to Bob, 5 in fees, in one transaction.
    state.apply(tx("p1", (BOB, 20), (FEES, 5), holds=(HoldPost(hold_id="H", amount=25),)))
    assert (state.balance(ALICE).available, state.balance(ALICE).held) == (40, 35)
    assert state.holds["H"].remaining == 35

    state.apply(tx("v", holds=(HoldVoid(hold_id="H", amount=10),)))
    assert (state.balance(ALICE).available, state.balance(ALICE).held) == (50, 25)
    state.apply(tx("v2", holds=(HoldVoid(hold_id="H"),)))  # the rest
    assert (state.balance(ALICE).available, state.balance(ALICE).held) == (75, 0)
    assert state.balance(ALICE).total == 75
    assert "H" not in state.holds
    assert state.asset_totals() == {"USD": 0}


def test_a_hold_resolves_at_most_once_in_total() -> None:
    state = funded(100)
    state.apply(tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=50),)))
    with pytest.raises(HoldExceeded):
        state.apply(tx("p", (BOB, 51), holds=(HoldPost(hold_id="H", amount=51),)))
    state.apply(tx("p", (BOB, 50), holds=(HoldPost(hold_id="H"),)))
    with pytest.raises(HoldClosed):
        state.apply(tx("v", holds=(HoldVoid(hold_id="H"),)))
    with pytest.raises(HoldClosed):
        state.apply(tx("p2", (BOB, 1), holds=(HoldPost(hold_id="H", amount=1),)))
    # Two operations in one transaction that together exceed the hold.
    state.apply(tx("h2", holds=(HoldCreate(hold_id="H2", account=ALICE, amount=30),)))
    with pytest.raises(HoldExceeded):
        state.apply(
            tx(
                "pv",
                (BOB, 20),
                holds=(HoldPost(hold_id="H2", amount=20), HoldVoid(hold_id="H2", amount=11)),
            )
        )
    assert state.holds["H2"].remaining == 30


def test_a_hold_cannot_reserve_more_than_is_available() -> None:
    state = funded(100)
    with pytest.raises(InsufficientFunds):
        state.apply(tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=101),)))
    assert "H" not in state.holds


def test_unknown_and_duplicate_holds() -> None:
    state = funded(100)
    with pytest.raises(UnknownHold):
        state.apply(tx("v", holds=(HoldVoid(hold_id="nope"),)))
    state.apply(tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=10),)))
    with pytest.raises(DuplicateHold):
        state.apply(tx("h2", holds=(HoldCreate(hold_id="H", account=ALICE, amount=10),)))
    state.apply(tx("v", holds=(HoldVoid(hold_id="H"),)))
    with pytest.raises(DuplicateHold):  # a closed hold's id is never reused
        state.apply(tx("h3", holds=(HoldCreate(hold_id="H", account=ALICE, amount=10),)))


def test_an_expired_hold_cannot_be_posted_and_expiry_voids_it() -> None:
    state = funded(100)
    state.apply(
        tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=40, expires_at=50),), time=10)
    )
    state.apply(
        tx("h2", holds=(HoldCreate(hold_id="K", account=ALICE, amount=10, expires_at=90),), time=10)
    )
    with pytest.raises(HoldExpired):
        state.apply(tx("p", (BOB, 40), holds=(HoldPost(hold_id="H"),), time=50))
    assert state.expiries(49) == []
    due = state.expiries(60)
    assert [(t.id, t.code) for t in due] == [("expire:H", EXPIRY_CODE)]
    state.apply(due[0])
    assert (state.balance(ALICE).available, state.balance(ALICE).held) == (90, 10)


def test_a_hold_must_expire_after_its_creation() -> None:
    state = funded(100)
    with pytest.raises(InvalidTransaction):
        state.apply(
            tx("h", holds=(HoldCreate(hold_id="H", account=ALICE, amount=1, expires_at=10),))
        )


def test_delivery_versus_payment_in_one_transaction() -> None:
    """A fill: buyer's held cash to escrow and fees, provider's held capacity to entitlement."""
    state = LedgerState()
    state.apply(tx("dep", (BANK, -1000), (ALICE, 1000)))
    provider = Account("prov", "tok.llama", "capacity")
    state.apply(tx("list", (ISSUANCE, -5000), (provider, 5000)))
    state.apply(
        tx(
            "orders",
            holds=(
                HoldCreate(hold_id="buy", account=ALICE, amount=600),
                HoldCreate(hold_id="sell", account=provider, amount=4000),
            ),
        )
    )
    escrow = Account("alice.prov", "USD", "escrow")
    entitlement = Account("alice.prov", "tok.llama", "entitlement")
    state.apply(
        tx(
            "fill",
            (escrow, 500),
            (FEES, 10),
            (entitlement, 4000),
            holds=(HoldPost(hold_id="buy", amount=510), HoldPost(hold_id="sell", amount=4000)),
        )
    )
    assert state.balance(ALICE).held == 90
    assert state.balance(provider).total == 1000
    assert state.asset_totals() == {"USD": 0, "tok.llama": 0}


def test_replaying_committed_entries_gives_the_same_balances() -> None:
    state = funded(100)
    committed: list[CommittedTransaction] = []
    committed.append(state.apply(tx("t", (ALICE, -30), (BOB, 30))))
    committed.append(state.apply(tx("h", holds=(HoldCreate(hold_id="H", account=BOB, amount=20),))))
    committed.append(state.apply(tx("p", (ALICE, 5), holds=(HoldPost(hold_id="H", amount=5),))))
    first = LedgerState()
    deposit = first.apply(tx("deposit", (BANK, -100), (ALICE, 100)))
    assert replay([deposit, *committed]) == balances(state)
