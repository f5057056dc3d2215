"""Closing a sequencer that lost its database (`ops.exchange`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import cast

import pytest

from ledger.store import WriterSession
from market.sequencer import Sequencer
from ops import exchange

STARTED = datetime(2026, 12, 4, tzinfo=UTC)
SESSIONS = [WriterSession(4242, STARTED), WriterSession(4243, STARTED)]


class _Stuck:
    """A sequencer whose close waits on a database that froze."""

    def __init__(self) -> None:
        self.abandoned = False

    async def close(self) -> None:
        await asyncio.Event().wait()

    def abandon(self) -> list[WriterSession]:
        self.abandoned = True
        return SESSIONS


async def test_a_sequencer_that_does_not_close_in_time_is_cut_off_its_sessions_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else its connections stay open, its session keeps the writer lock, and every
    reopen is refused ("another process is already the ledger's writer")."""
    monkeypatch.setattr(exchange, "CLOSE_TIMEOUT_S", 0.05)
    stuck = _Stuck()
    assert await exchange._close_sequencer(cast(Sequencer, stuck)) == SESSIONS
    assert stuck.abandoned
