"""The pipeline after a failed commit: no batch is ever staged on a memory that still
holds the failed batch, however the batches after it are scheduled.

Both cases were found in review; each ended with an order acknowledged and written
whose journal entry left a hole where the failed batch's entry had been numbered, so
that replaying the journal (a rebuild, a restart) failed with `JournalGap`. So did a
bug (an exception other than a refusal) raised while a batch was staged, after the
engine ran but before any ledger transaction; and one raised after the ledger's memory
moved, while an earlier batch committed, let that commit snapshot the ledger's memory
with the failed batch in it (its hold survived every restart)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from ledger.errors import LedgerUnavailable
from ledger.log import MerkleLog
from ledger.note import Signer
from ledger.store import load_state, nonzero, recomputed_balances
from market.sequencer import Sequencer, SequencerState
from market.sequencer import orders as orders_module
from market.sequencer.pipeline import Flight
from schemas.market import Side
from tests.market.test_pipeline import journal_held, until, waiting_backends
from tests.market.test_sequencer import Clock, cash, order, place, setup_market

SIGNER = Signer.generate("tokex.test")


async def _fail_first_commit(db_url: str, s: Sequencer) -> asyncio.Task[object]:
    """Order a's batch, whose commit fails (its backend is terminated mid-commit)."""
    async with journal_held(db_url) as holder:
        first = asyncio.create_task(place(s, "b1", order("a", Side.BUY, 10_000, 5_000)))
        await until(lambda: waiting_backends(holder))
        (writer_pid,) = await waiting_backends(holder)
        await holder.execute("SELECT pg_terminate_backend($1)", writer_pid)
    return first


async def _journal_and_c(db_url: str) -> tuple[list[int], int]:
    conn = await asyncpg.connect(db_url)
    try:
        seqs = [r[0] for r in await conn.fetch("SELECT seq FROM market_journal ORDER BY seq")]
        c = await conn.fetchval("SELECT count(*) FROM market_orders WHERE client_order_id='c'")
    finally:
        await conn.close()
    return seqs, c


async def test_an_order_placed_while_memory_is_rebuilt_waits_for_the_rebuild(
    db_url: str,
) -> None:
    """While the failed batch's effects are being taken back (here a slow ledger reload),
    an order waits: it is then staged on the rebuilt memory, acknowledged, in memory,
    and the journal has no hole."""
    s = await Sequencer.open(db_url, clock=Clock(), pipeline_depth=2)
    try:
        await setup_market(s)
        reload, reloading, release = s.ledger._recover, asyncio.Event(), asyncio.Event()

        async def slow_reload() -> None:
            reloading.set()
            await release.wait()
            await reload()

        s.ledger._recover = slow_reload  # type: ignore[method-assign]
        first = await _fail_first_commit(db_url, s)
        await asyncio.wait_for(reloading.wait(), 10)
        late = asyncio.create_task(place(s, "b2", order("c", Side.BUY, 10_000, 4_000)))
        await asyncio.sleep(0.3)
        assert not late.done()  # it waits for the rebuild
        release.set()
        view = await asyncio.wait_for(late, 10)
        await asyncio.gather(first, return_exceptions=True)
        seqs, c = await _journal_and_c(db_url)
        assert view.status == "open" and c == 1
        assert any(r.client_order_id == "c" for r in s.market.live.values())
        assert not any(r.client_order_id == "a" for r in s.market.live.values())
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no hole
    finally:
        await s.close()


async def test_a_batch_begun_before_the_failed_ones_finisher_ran_fails_too(
    db_url: str,
) -> None:
    """Batch N's commit fails; batch N+1 begins before N's finisher has run (here it is
    delayed): N+1 stood on N's memory, so it fails too and writes nothing; memory is
    rebuilt and the next order is placed normally."""
    s = await Sequencer.open(db_url, clock=Clock(), pipeline_depth=2)
    try:
        await setup_market(s)
        finish: Callable[[Flight], Awaitable[None]] = s._finish

        async def late_finish(flight: Flight) -> None:
            if flight.commit is not None:
                try:
                    await asyncio.shield(flight.commit)
                except Exception:
                    await asyncio.sleep(0.5)
            await finish(flight)

        s._finish = late_finish  # type: ignore[method-assign]
        first = await _fail_first_commit(db_url, s)
        commit = s._pipeline.flights[0].commit
        assert commit is not None
        await until(commit.done)
        late = asyncio.create_task(place(s, "b2", order("c", Side.BUY, 10_000, 4_000)))
        outcomes = await asyncio.gather(first, late, return_exceptions=True)
        assert all(isinstance(o, Exception) for o in outcomes)  # both answered 503
        seqs, c = await _journal_and_c(db_url)
        assert c == 0 and seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        again = await place(s, "b2", order("d", Side.BUY, 10_000, 4_000))
        assert again.status == "open"
    finally:
        await s.close()


def bug_on(monkeypatch: pytest.MonkeyPatch, client_order_id: str, *, after: bool) -> None:
    """Placing `client_order_id` raises a bug once the engine ran: before the ledger
    moved (`after` False) or after (its hold is in the ledger's memory)."""
    real = orders_module.apply_events

    def buggy(batch: Any, events: Any, placed: Any = None, hold: Any = None) -> None:
        is_it = placed is not None and placed.client_order_id == client_order_id
        if is_it and not after:
            raise RuntimeError("a bug after the engine ran")
        real(batch, events, placed=placed, hold=hold)
        if is_it:
            raise RuntimeError("a bug after the ledger moved")

    monkeypatch.setattr(orders_module, "apply_events", buggy)


async def test_a_bug_after_the_engine_ran_voids_the_batch_staged_on_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch after the failed one (queued behind it) is not staged on its memory (an
    order the engine rested, a journal number taken): it is refused 503, the journal has
    no hole, and the exchange goes on and opens again."""
    s = await Sequencer.open(db_url, clock=Clock(), pipeline_depth=2, max_batch=1)
    try:
        await setup_market(s)
        bug_on(monkeypatch, "boom", after=False)
        n = asyncio.create_task(place(s, "b1", order("boom", Side.BUY, 10_000, 4_000)))
        n1 = asyncio.create_task(place(s, "p1", order("next", Side.SELL, 10_000, 6_000)))
        failed, following = await asyncio.gather(n, n1, return_exceptions=True)
        assert isinstance(failed, Exception)
        assert isinstance(following, LedgerUnavailable) or following.status == "open"
        seqs, _ = await _journal_and_c(db_url)
        assert seqs == list(range(len(seqs)))  # no hole
        again = await place(s, "p1", order("again", Side.SELL, 10_000, 6_000))
        assert again.status == "open" and s.state is SequencerState.RUNNING
    finally:
        await s.close()
    reopened = await Sequencer.open(db_url, clock=Clock())  # the journal replays
    await reopened.close()


async def test_a_bug_while_an_earlier_batch_commits_leaves_no_hold_in_a_snapshot(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch N-1 commits slowly; batch N puts a hold in the ledger's memory, then fails.
    N-1's commit takes no snapshot of that memory: what a restart loads equals the
    entries, the ledger's size is the transactions' count, and the next order trades."""
    s = await Sequencer.open(db_url, clock=Clock(), pipeline_depth=2, max_batch=1,
                             hooks=[MerkleLog(SIGNER, "tokex.test")])  # fmt: skip
    try:
        await setup_market(s)
        s.ledger._snapshot_every = 1  # a snapshot at the next commit nothing follows
        bug_on(monkeypatch, "boom", after=True)
        async with journal_held(db_url) as holder:
            a = asyncio.create_task(place(s, "b1", order("a", Side.BUY, 10_000, 4_000)))
            await until(lambda: waiting_backends(holder))
            boom = asyncio.create_task(place(s, "b2", order("boom", Side.BUY, 10_000, 4_500)))
            await asyncio.sleep(0.5)  # the failed batch waits for a's commit
        await asyncio.gather(a, boom, return_exceptions=True)
        await s.ledger.wait_for_snapshot()
    finally:
        await s.close()
    conn = await asyncpg.connect(db_url)
    try:
        truth = nonzero((await recomputed_balances(conn)).items())
        loaded, _, _ = await load_state(conn)
        transactions = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
    finally:
        await conn.close()
    assert nonzero((b.account, (b.available, b.held)) for b in loaded.all_balances()) == truth
    monkeypatch.undo()
    again = await Sequencer.open(db_url, clock=Clock(), hooks=[MerkleLog(SIGNER, "tokex.test")])
    try:
        assert again.ledger.size == transactions and cash(again, "b2") == (1_000_000, 0)
        after = await place(again, "b2", order("next", Side.BUY, 1_000, 4_000))
        assert after.status == "open"
    finally:
        await again.close()


async def test_while_the_database_is_down_rebuilds_are_tried_with_a_backoff(
    db_url: str,
) -> None:
    """Memory that cannot be rebuilt (the database unreachable) is tried again after
    0.25 s, 0.5 s, 1 s... (at most `REBUILD_BACKOFF_MAX_S`), not on every op and every
    tick of the clock; once the database answers, the exchange heals by itself."""
    s = await Sequencer.open(db_url, clock=Clock())
    try:
        await setup_market(s)
        real, tries = s._rebuild, []

        async def unreachable() -> None:
            tries.append(asyncio.get_running_loop().time())
            raise OSError("connection refused")

        s._rebuild = unreachable  # type: ignore[method-assign]
        s._state = SequencerState.BROKEN
        deadline = asyncio.get_running_loop().time() + 2
        n = 0
        while asyncio.get_running_loop().time() < deadline:
            with pytest.raises(LedgerUnavailable):
                await place(s, "b1", order(f"o{n}", Side.BUY, 1_000, 4_000))
            n += 1
            await asyncio.sleep(0.02)
        assert n > 50 and 3 <= len(tries) <= 5, tries  # not one per op or per tick
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert all(later > earlier for earlier, later in itertools.pairwise(gaps))
        s._rebuild = real  # type: ignore[method-assign]
        healed = await asyncio.wait_for(_placed_once_healed(s), 6)
        assert healed.status == "open"
    finally:
        await s.close()


async def _placed_once_healed(s: Sequencer) -> Any:
    n = 0
    while True:
        try:
            return await place(s, "b1", order(f"healed{n}", Side.BUY, 1_000, 4_000))
        except LedgerUnavailable:
            n += 1
            await asyncio.sleep(0.1)
