"""Helpers for tests of the ledger writer, on its real paths (`apply_batch`, `batch`)."""

from __future__ import annotations

from ledger.writer import Ledger
from schemas.ledger import Transaction, TransactionResult


async def submit(ledger: Ledger, tx: Transaction) -> TransactionResult:
    """Commit one transaction as a batch of its own and return its outcome."""
    (result,) = await ledger.apply_batch([tx])
    return result


async def holds(ledger: Ledger) -> dict[str, int]:
    """Open holds and what each still reserves, read from the writer's memory inside an
    empty batch (the way the sequencer's pre-trade checks read them)."""
    async with ledger.batch() as batch:
        return {hold_id: hold.remaining for hold_id, hold in batch.state.holds.items()}
