"""Retired accounts against a real PostgreSQL: retired only at zero, never posted to
again (by the rules while the writer knows them, by the database after a restart), not
loaded by a restart, their ids never given again; the books still agree."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.errors import AccountNotEmpty, AccountRetired, LedgerUnavailable
from ledger.rules import LedgerState
from ledger.store import load_state
from ledger.writer import Ledger
from schemas.ledger import Account, HoldCreate, Transaction
from tests.ledger.test_writer import assert_books_agree, transfer
from tests.ledger.writer_support import submit

BANK = Account("exchange", "USD", "bank")
ALICE = Account("alice", "USD", "cash")
ESCROW = Account("alice@bob", "USD", "escrow:i1")
OTHER = Account("carol@bob", "USD", "escrow:i1")


async def _fill_and_empty(ledger: Ledger) -> None:
    """ALICE funded; ESCROW and OTHER used and brought back to zero."""
    for n, tx in enumerate(
        [
            transfer("fund", BANK, ALICE, 1_000),
            transfer("in", ALICE, ESCROW, 300),
            transfer("in2", ALICE, OTHER, 5),
            transfer("out", ESCROW, ALICE, 300),
            transfer("out2", OTHER, ALICE, 5),
        ]
    ):
        assert (await submit(ledger, tx)).committed, n


async def _retire(ledger: Ledger, *accounts: Account) -> list[Account]:
    async with ledger.batch() as batch:
        return batch.retire(accounts)


async def _account_ids(db_url: str) -> dict[Account, int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT id, owner, asset, kind FROM ledger_accounts")
    finally:
        await conn.close()
    return {Account(r["owner"], r["asset"], r["kind"]): r["id"] for r in rows}


def test_an_account_is_retired_only_at_zero_and_then_refuses_every_posting_and_hold() -> None:
    state = LedgerState()
    state.apply(transfer("fund", BANK, ALICE, 10))
    with pytest.raises(AccountNotEmpty):
        state.retire([BANK, ALICE])  # both hold something: neither is retired
    assert state.balance(ALICE).available == 10 and not state.retired
    state.apply(transfer("in", ALICE, ESCROW, 4))
    state.apply(transfer("out", ESCROW, ALICE, 4))
    assert state.retire([ESCROW, ESCROW, Account("never", "USD", "cash")]) == [ESCROW]
    assert ESCROW not in state.balances
    for tx in (
        transfer("again", ALICE, ESCROW, 1),
        Transaction(id="hold", code="h", time=1,
                    holds=(HoldCreate(hold_id="h1", account=ESCROW, amount=1),)),
    ):  # fmt: skip
        with pytest.raises(AccountRetired):
            state.apply(tx)
    assert state.balance(ALICE).available == 10


async def test_a_held_account_is_not_retired(db_url: str) -> None:
    ledger = await Ledger.open(db_url)
    try:
        await submit(ledger, transfer("fund", BANK, ALICE, 10))
        hold = Transaction(id="h", code="h", time=1,
                           holds=(HoldCreate(hold_id="h1", account=ALICE, amount=10),))  # fmt: skip
        assert (await submit(ledger, hold)).committed
        assert ledger.balance(ALICE).available == 0
        with pytest.raises(AccountNotEmpty):
            await _retire(ledger, ALICE)
        assert ledger.balance(ALICE).held == 10  # the failed batch was rolled back
        await assert_books_agree(db_url, ledger)
    finally:
        await ledger.close()


async def test_a_crash_after_retiring_replays_the_tail_and_drops_the_retired_accounts(
    db_url: str,
) -> None:
    ledger = await Ledger.open(db_url)
    await submit(ledger, transfer("fund", BANK, ALICE, 1_000))
    await submit(ledger, transfer("in", ALICE, ESCROW, 300))
    await ledger.snapshot()  # ESCROW holds 300 as of the snapshot
    await submit(ledger, transfer("out", ESCROW, ALICE, 300))
    assert await _retire(ledger, ESCROW) == [ESCROW]
    refused = await submit(ledger, transfer("again", ALICE, ESCROW, 1))
    assert (refused.committed, refused.code) == (False, "account_retired")
    before = sorted((b.account.owner, b.available, b.held) for b in ledger.balances())
    ledger._conn.terminate()  # a crash: no snapshot on the way out
    conn = await asyncpg.connect(db_url)
    try:
        state, ids, dirty = await load_state(conn)
        assert ESCROW not in ids.ids and ESCROW not in state.balances
        assert ESCROW in state.retired  # retired since the snapshot: the rules know it
        assert dirty.retired == [await conn.fetchval(
            "SELECT id FROM ledger_accounts WHERE owner = 'alice@bob'")]  # fmt: skip
    finally:
        await conn.close()
    reopened = await Ledger.open(db_url)
    try:
        assert sorted((b.account.owner, b.available, b.held) for b in reopened.balances()) == (
            before
        )
        refused = await submit(reopened, transfer("again2", ALICE, ESCROW, 1))
        assert (refused.committed, refused.code) == (False, "account_retired")
        await assert_books_agree(db_url, reopened)
    finally:
        await reopened.close()


async def test_a_restart_does_not_load_accounts_retired_before_its_snapshot(
    db_url: str,
) -> None:
    ledger = await Ledger.open(db_url)
    try:
        await _fill_and_empty(ledger)
        assert await _retire(ledger, ESCROW, OTHER) == [ESCROW, OTHER]
        before = sorted((b.account.owner, b.available, b.held) for b in ledger.balances())
    finally:
        await ledger.close()  # its snapshot deletes the retired accounts' balance rows
    conn = await asyncpg.connect(db_url)
    try:
        state, ids, _ = await load_state(conn)
        assert set(ids.ids) == set(state.balances) == {BANK, ALICE}
        assert not state.retired
        assert state.asset_totals() == {"USD": 0}
        assert await conn.fetchval("SELECT count(*) FROM ledger_balances") == 2
        assert await conn.fetchval("SELECT count(*) FROM ledger_accounts") == 4
    finally:
        await conn.close()
    reopened = await Ledger.open(db_url)
    try:
        assert sorted((b.account.owner, b.available, b.held) for b in reopened.balances()) == (
            before
        )
        await assert_books_agree(db_url, reopened)
    finally:
        await reopened.close()


async def test_after_a_restart_a_retired_account_is_refused_by_the_database_not_reopened(
    db_url: str,
) -> None:
    ledger = await Ledger.open(db_url)
    try:
        await _fill_and_empty(ledger)
        await _retire(ledger, ESCROW, OTHER)
    finally:
        await ledger.close()
    ids_before = await _account_ids(db_url)
    ledger = await Ledger.open(db_url)
    try:
        # The writer no longer knows ESCROW: the rules would take it for a new account,
        # and the database refuses its name under a new id. Nothing of the batch stays.
        with pytest.raises(LedgerUnavailable):
            await ledger.apply_batch(
                [transfer("fine", ALICE, BANK, 1), transfer("again", ALICE, ESCROW, 1)]
            )
        assert ledger.balance(ALICE).available == 1_000
        # A new account gets an id no account ever had, not a retired one's.
        dave = Account("dave", "USD", "cash")
        assert (await submit(ledger, transfer("dave", ALICE, dave, 7))).committed
        ids = await _account_ids(db_url)
        assert ids[dave] == max(ids_before.values()) + 1
        assert {a: i for a, i in ids.items() if a != dave} == ids_before
        await assert_books_agree(db_url, ledger)
    finally:
        await ledger.close()


async def test_retirement_is_part_of_the_batch_and_append_only(db_url: str) -> None:
    ledger = await Ledger.open(db_url)
    try:
        await _fill_and_empty(ledger)
        async with ledger.batch() as batch:
            batch.apply(transfer("last", ALICE, BANK, 1))
            assert batch.retire([ESCROW]) == [ESCROW]
    finally:
        await ledger.close()
    conn = await asyncpg.connect(db_url)
    try:
        retired_idx = await conn.fetchval("SELECT retired_idx FROM ledger_retired_accounts")
        assert retired_idx == 6  # after the transaction before it in the batch
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("DELETE FROM ledger_retired_accounts")
        entries = await conn.fetchval(
            "SELECT count(*) FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id"
            " WHERE a.owner = 'alice@bob'"
        )
        assert entries == 2  # its history stays where statements and the audit read it
    finally:
        await conn.close()
