"""The balance snapshot is sealed by the exchange's key (`ledger.seal`): an edit of the
snapshot tables made with database credentials only is never loaded, nor signed over.

The tables are edited here as their owner; `tests/ops/test_app_role.py` does it as the
exchange's app role, through a served exchange."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from ledger.log import MerkleLog, open_ledger
from ledger.note import Signer
from ledger.seal import current_digest
from ledger.store import nonzero, recomputed_balances
from ledger.writer import Ledger
from schemas.ledger import Account, HoldCreate, Posting, Transaction
from tests.ledger.writer_support import holds, submit

BANK = Account("exchange", "USD", "bank")
ALICE = Account("alice", "USD", "cash")
BOB = Account("bob", "USD", "cash")
ORIGIN = "seal.test/ledger"
NOT_LOADED = "balance snapshot at index"


def transfer(tx_id: str, src: Account, dst: Account, amount: int) -> Transaction:
    return Transaction(
        id=tx_id, code="transfer", time=10, postings=(Posting(src, -amount), Posting(dst, amount))
    )


def hold(tx_id: str, hold_id: str, account: Account, amount: int) -> Transaction:
    return Transaction(
        id=tx_id,
        code="hold",
        time=10,
        holds=(HoldCreate(hold_id=hold_id, account=account, amount=amount),),
    )


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


async def fill(ledger: Ledger) -> None:
    """Alice 100 from the bank, 30 of it held (hold H), Bob 5 from her."""
    await submit(ledger, transfer("deposit", BANK, ALICE, 100))
    await submit(ledger, hold("h", "H", ALICE, 30))
    await submit(ledger, transfer("pay", ALICE, BOB, 5))


def balances(ledger: Ledger) -> dict[Account, tuple[int, int]]:
    return nonzero((b.account, (b.available, b.held)) for b in ledger.balances())


async def account_id(conn: asyncpg.Connection, account: Account) -> int:
    found: int = await conn.fetchval(
        "SELECT id FROM ledger_accounts WHERE owner = $1 AND asset = $2 AND kind = $3",
        account.owner,
        account.asset,
        account.kind,
    )
    return found


async def mint(conn: asyncpg.Connection, amount: int) -> None:
    """A zero-sum edit of the snapshot: `amount` from the bank's row to Alice's, and her
    hold released into her available cash (the hold closed, her held moved over)."""
    alice, bank = await account_id(conn, ALICE), await account_id(conn, BANK)
    async with conn.transaction():
        await conn.execute(
            "UPDATE ledger_balances SET available = available + held + $2, held = 0"
            " WHERE account_id = $1",
            alice,
            amount,
        )
        await conn.execute(
            "UPDATE ledger_balances SET available = available - $2 WHERE account_id = $1",
            bank,
            amount,
        )
        await conn.execute("UPDATE ledger_hold_state SET remaining = 0 WHERE hold_id = 'H'")


async def test_an_untampered_snapshot_is_loaded_and_the_journal_after_it_replayed(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await fill(ledger)
    await ledger.snapshot()
    await submit(ledger, transfer("after", ALICE, BOB, 1))  # in the journal only
    before = balances(ledger)
    ledger._conn.terminate()  # a crash: no snapshot on close

    with caplog.at_level(logging.WARNING, logger="ledger"):
        reopened, _ = await open_ledger(db_url, signer)
    try:
        assert NOT_LOADED not in caplog.text
        assert reopened._sealed is not None and reopened._sealed.next_index == 3  # loaded
        assert balances(reopened) == before
        assert await holds(reopened) == {"H": 30}
    finally:
        await reopened.close()


async def test_an_edited_snapshot_is_not_loaded_and_the_money_stays_where_it_was(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await fill(ledger)
    before = balances(ledger)
    await ledger.close()  # writes and seals a snapshot
    await mint(db_conn, 9_000_000)

    with caplog.at_level(logging.ERROR, logger="ledger.store"):
        reopened, _ = await open_ledger(db_url, signer)
    try:
        assert balances(reopened) == before == {BANK: (-100, 0), ALICE: (65, 30), BOB: (5, 0)}
        assert await holds(reopened) == {"H": 30}
        # Alice cannot spend what the edit gave her.
        spent = await submit(reopened, transfer("spend", ALICE, BOB, 1_000))
        assert not spent.committed and spent.code == "insufficient_funds"
        # The operator is told, and what differs is named.
        assert "does not match its rows" in caplog.text
        assert "alice|USD|cash: snapshot (9000095, 0), journal (65, 30)" in caplog.text
        assert "hold H: snapshot 0, journal 30 remaining" in caplog.text
        # A sealed full snapshot replaced the edited rows at once.
        stored = await db_conn.fetchval(
            "SELECT available FROM ledger_balances WHERE account_id = $1",
            await account_id(db_conn, ALICE),
        )
        assert stored == 65
        assert await db_conn.fetchval("SELECT remaining FROM ledger_hold_state") == 30
    finally:
        await reopened.close()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ledger.store"):
        again, _ = await open_ledger(db_url, signer)
    try:
        assert NOT_LOADED not in caplog.text  # the new seal holds
        assert balances(again) == before
    finally:
        await again.close()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE ledger_snapshot SET next_index = 1",  # replay the journal twice over
        "INSERT INTO ledger_balances VALUES (999, 50, 0, false)",  # an account made up
        "DELETE FROM ledger_balances WHERE available < 0",  # the bank's debt forgotten
        "UPDATE ledger_snapshot SET seal = NULL, seal_key = NULL",  # the seal taken away
    ],
)
async def test_any_edit_of_the_snapshot_or_its_index_is_not_loaded(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, edit: str
) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await fill(ledger)
    before = balances(ledger)
    await ledger.close()
    await db_conn.execute(edit)
    reopened, _ = await open_ledger(db_url, signer)
    try:
        assert balances(reopened) == before
        assert nonzero((await recomputed_balances(db_conn)).items()) == before
    finally:
        await reopened.close()


async def test_an_edit_while_the_exchange_runs_is_not_sealed_over(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    # A snapshot in the background after every commit.
    ledger = await Ledger.open(db_url, snapshot_every=1, hooks=[MerkleLog(signer, ORIGIN)])
    try:
        await fill(ledger)
        await ledger.snapshot()
        await mint(db_conn, 1_000)  # Alice's row: not one the next snapshot writes
        with caplog.at_level(logging.ERROR, logger="ledger"):
            await submit(ledger, transfer("more", BANK, BOB, 1))
            await ledger.wait_for_snapshot()
        assert "changed outside the exchange" in caplog.text
        await submit(ledger, transfer("yet-more", BANK, BOB, 1))
        await ledger.wait_for_snapshot()  # full: it replaces every row, then seals
        before = balances(ledger)
    finally:
        await ledger.close()
    alice = await account_id(db_conn, ALICE)
    row = await db_conn.fetchrow(
        "SELECT available, held FROM ledger_balances WHERE account_id = $1", alice
    )
    assert tuple(row) == (65, 30)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ledger"):
        reopened, _ = await open_ledger(db_url, signer)
    try:
        assert NOT_LOADED not in caplog.text
        assert balances(reopened) == before
        assert await holds(reopened) == {"H": 30}
    finally:
        await reopened.close()


async def test_a_snapshot_written_without_a_seal_is_rebuilt_once_then_sealed(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """As after the upgrade that brought seals: the old snapshot is not trusted."""
    unsealed = await Ledger.open(db_url)  # no Merkle log: writes no seal
    await fill(unsealed)
    before = balances(unsealed)
    await unsealed.close()
    assert await db_conn.fetchval("SELECT seal FROM ledger_snapshot") is None
    await mint(db_conn, 500)
    with caplog.at_level(logging.ERROR, logger="ledger.store"):
        # Written without the log too: its journal is signed only when accepted.
        ledger, _ = await open_ledger(db_url, signer, accept_unsigned=True)
    try:
        assert "it is not sealed" in caplog.text
        assert balances(ledger) == before
    finally:
        await ledger.close()
    assert await db_conn.fetchval("SELECT seal FROM ledger_snapshot") is not None


async def test_a_snapshot_sealed_by_a_key_this_exchange_does_not_hold_is_not_loaded(
    db_url: str, db_conn: asyncpg.Connection, signer: Signer
) -> None:
    ledger, _ = await open_ledger(db_url, signer)
    await fill(ledger)
    before = balances(ledger)
    await ledger.close()
    await mint(db_conn, 700)
    # Sealed again over the edit, by a key of the attacker's own.
    forger = Signer.generate(ORIGIN)
    digest = await current_digest(db_conn)
    await db_conn.execute(
        "UPDATE ledger_snapshot SET seal_key = $1, seal = $2",
        forger.verifier().encode(),
        forger.sign(digest.message()),
    )
    reopened, _ = await open_ledger(db_url, signer)
    try:
        assert balances(reopened) == before
    finally:
        await reopened.close()
