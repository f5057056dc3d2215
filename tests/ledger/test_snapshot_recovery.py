"""A reload after a failed commit and a balance snapshot being written in the background:
the writer must know the seal of the snapshot that landed, or its next snapshot finds the
tables "changed outside the exchange" (found in review: `_recover` read the seal while the
background snapshot was still writing and kept that older one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import asyncpg
import pytest
from asyncpg.transaction import Transaction

from ledger.errors import LedgerUnavailable
from ledger.log import MerkleLog
from ledger.note import Signer
from ledger.rows import BatchRows
from ledger.writer import Ledger
from tests.ledger.test_seal import ALICE, BANK, BOB, ORIGIN, balances, transfer
from tests.ledger.writer_support import submit


class SnapshotLands:
    """A commit hook whose reload lets the background snapshot finish first: the moment
    (between the writer's read of the snapshot and its taking that state) a snapshot
    that was slow to write lands in."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None

    async def write(
        self, conn: asyncpg.Connection, rows: BatchRows, leaves: Sequence[bytes]
    ) -> None:
        pass

    async def reload(self, conn: asyncpg.Connection) -> None:
        if self.ledger is not None:
            await self.ledger.wait_for_snapshot()


async def _release_later(tx: Transaction, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await tx.commit()


async def test_a_reload_while_a_snapshot_is_written_raises_no_tamper_alarm(
    db_url: str, db_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Signer.generate(ORIGIN)
    lands = SnapshotLands()
    ledger = await Ledger.open(db_url, hooks=[MerkleLog(signer, ORIGIN), lands], snapshot_every=1)
    lands.ledger = ledger
    try:
        await submit(ledger, transfer("t0", BANK, ALICE, 10))
        await ledger.wait_for_snapshot()  # sealed: the next snapshot checks against it
        tx = db_conn.transaction()
        await tx.start()  # holds the background snapshot back (it locks EXCLUSIVE)
        await db_conn.execute("LOCK TABLE ledger_snapshot IN SHARE MODE")
        await submit(ledger, transfer("t1", BANK, ALICE, 1))  # its snapshot waits
        ledger._conn.terminate()  # the writer's connection lost meanwhile
        release = asyncio.create_task(_release_later(tx, 0.3))
        with contextlib.suppress(LedgerUnavailable):
            await submit(ledger, transfer("t2", BANK, ALICE, 1))
        caplog.set_level(logging.WARNING, logger="ledger")
        await ledger.recover_if_broken()
        await release
        await submit(ledger, transfer("t3", ALICE, BOB, 1))
        await ledger.wait_for_snapshot()
        await ledger.snapshot()
        assert "changed outside the exchange" not in caplog.text
        before = balances(ledger)
    finally:
        await ledger.close()
    caplog.clear()
    reopened = await Ledger.open(db_url, hooks=[MerkleLog(signer, ORIGIN)])
    try:
        assert "is not loaded" not in caplog.text
        assert balances(reopened) == before
    finally:
        await reopened.close()
