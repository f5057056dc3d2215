"""Closing a sequencer that lost its database (`ops.exchange`)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from market.sequencer import Sequencer
from ops import exchange


class _Stuck:
    """A sequencer whose close waits on a database that froze."""

    def __init__(self) -> None:
        self.abandoned = False

    async def close(self) -> None:
        await asyncio.Event().wait()

    def abandon(self) -> list[int]:
        self.abandoned = True
        return [4242, 4243]


async def test_a_sequencer_that_does_not_close_in_time_is_cut_off_its_sessions_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else its connections stay open, its session keeps the writer lock, and every
    reopen is refused ("another process is already the ledger's writer")."""
    monkeypatch.setattr(exchange, "CLOSE_TIMEOUT_S", 0.05)
    stuck = _Stuck()
    assert await exchange._close_sequencer(cast(Sequencer, stuck)) == [4242, 4243]
    assert stuck.abandoned
