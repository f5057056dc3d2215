"""The pipeline after a failed commit: no batch is ever staged on a memory that still
holds the failed batch, however the batches after it are scheduled.

Both cases were found in review; each ended with an order acknowledged and written
whose journal entry left a hole where the failed batch's entry had been numbered, so
that replaying the journal (a rebuild, a restart) failed with `JournalGap`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from market.sequencer import Sequencer
from market.sequencer.pipeline import Flight
from schemas.market import Side
from tests.market.test_pipeline import journal_held, until, waiting_backends
from tests.market.test_sequencer import Clock, order, place, setup_market


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
