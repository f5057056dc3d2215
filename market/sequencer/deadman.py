"""The dead-man switch: cancel an account's orders unless it keeps saying it is alive.

`POST /v1/orders/cancel-after {"timeout_ms"}` arms (or refreshes) the switch of the
calling account: its deadline becomes the batch's time plus `timeout_ms`; 0 disarms
it. The sequencer's clock checks the deadlines at the start of every batch and wakes
a quiet exchange for them (`Sequencer._tick`, every 250 ms): once a deadline has
passed, the account's open orders are cancelled by one `MassCancel` — an engine
command like any other, journaled with its time, so replaying the journal makes the
same cancels — and the switch is disarmed in the same batch. Arming and disarming are
rows of `market_cancel_after` written in the batch's one statement, so a restart
neither forgets an armed switch nor fires a spent one again.
"""

from __future__ import annotations

import asyncpg

from market.sequencer.batch import Batch
from market.sequencer.settle import apply_events
from schemas.market import MassCancel
from schemas.trading import CancelAfterView

__all__ = ["arm", "due", "load"]


def arm(batch: Batch, account_id: str, timeout_ms: int) -> CancelAfterView:
    """Arm or refresh the caller's switch for `timeout_ms`, or disarm it with 0."""
    switches = batch.market.cancel_after
    if timeout_ms == 0:
        switches.pop(account_id, None)
        _stage(batch, account_id, 0)
        return CancelAfterView(deadline_ms=None, server_time_ms=batch.time_ms)
    deadline_ms = batch.time_ms + timeout_ms
    switches[account_id] = deadline_ms
    _stage(batch, account_id, deadline_ms)
    return CancelAfterView(deadline_ms=deadline_ms, server_time_ms=batch.time_ms)


def due(batch: Batch) -> None:
    """Fire every switch whose deadline has passed: cancel the account's orders, disarm."""
    switches = batch.market.cancel_after
    if not switches or min(switches.values()) > batch.time_ms:
        return
    for account_id in sorted(a for a, d in switches.items() if d <= batch.time_ms):
        del switches[account_id]
        _stage(batch, account_id, 0)
        command = MassCancel(time=batch.time_ms, owner=account_id, instrument=None)
        apply_events(batch, batch.run_engine(command))


def _stage(batch: Batch, account_id: str, deadline_ms: int) -> None:
    batch.cancel_after[account_id] = (account_id, deadline_ms, batch.time_ms)


async def load(conn: asyncpg.Connection) -> dict[str, int]:
    """The armed switches: account -> deadline (ms)."""
    rows = await conn.fetch(
        "SELECT account_id, deadline_ms FROM market_cancel_after WHERE deadline_ms > 0"
    )
    return {r["account_id"]: r["deadline_ms"] for r in rows}
