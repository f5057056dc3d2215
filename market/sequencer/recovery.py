"""Recovery: the market's memory rebuilt from the database.

The same path serves start-up (after a clean stop or a crash) and the rebuild after
a failed commit. `recover` reads, in one repeatable-read transaction, the listed
instruments, the settlements, the books (`market.replay.rebuild_books`: the snapshot it
is given — the one the sequencer keeps in memory — or else the newest stored one, then
the journal after it; the engine is deterministic, so the books come out exactly as they
were), the open orders, the next order id, the providers' reports still pending and what
each (buyer, provider) delivered so far on an unsettled instrument (the delivery rule
rounds on it: `InstrumentState.delivered`); and
builds one `InstrumentState` per instrument from them. What it reads is bounded by the
live state and the journal since the snapshot, not by all of history.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import asyncpg

from ledger.seal import SnapshotSealer
from market.replay import Rebuilt, rebuild_books
from market.report_store import load_pending_reports
from market.sequencer import deadman
from market.sequencer.state import InstrumentState, MarketState, terms_of
from market.snapshots import MarketSnapshot
from market.store import (
    load_delivered,
    load_live_orders,
    load_settlements,
    load_terms,
    next_order_id,
)


@dataclass(frozen=True, slots=True)
class Recovered:
    market: MarketState
    last_time_ms: int
    books: Rebuilt  # where the books' rebuild started and what it replayed


async def recover(
    conn: asyncpg.Connection,
    *,
    start: MarketSnapshot | None = None,
    stored: bool = True,
    sealer: SnapshotSealer | None = None,
) -> Recovered:
    """The market as the database has it: books, instruments, open orders, counters.
    `start`: the snapshot to rebuild the books from (else the newest stored one whose seal
    `sealer` checks, unless `stored` is False: then the journal from its first row)."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        listed = {r["symbol"]: r for r in await load_terms(conn)}
        settled = {s.instrument: s for s in await load_settlements(conn)}
        books = await rebuild_books(conn, settled, start=start, stored=stored, sealer=sealer)
        live = await load_live_orders(conn)
        order_id = await next_order_id(conn)
        switches = await deadman.load(conn)
        pending = await load_pending_reports(conn)
        unsettled = [symbol for symbol in listed if symbol not in settled]
        delivered = await load_delivered(conn, unsettled)
    engine = books.engine
    market = MarketState(
        engine=engine,
        live={o.order_id: o for o in live},
        gtd={o.order_id: o.expire_at for o in live if o.expire_at is not None},
        open_count=dict(Counter(o.account_id for o in live)),
        next_order_id=order_id,
        next_journal_seq=books.journal_seq,
        cancel_after=switches,
    )
    for book in engine.books():
        row = listed[book.symbol]
        state = InstrumentState.build(
            book, terms_of(row), row["delivery_grace_seconds"], settled.get(book.symbol),
            dispute_period_s=row["dispute_period_seconds"],  # NULL: listed before 0010
        )  # fmt: skip
        market.add(state)
    for report in pending:  # providers' reports still in their dispute period
        market.instruments[report.instrument].pending[report.key] = report
    for (symbol, buyer, provider), so_far in delivered.items():  # the rounding's totals
        market.instruments[symbol].delivered[(buyer, provider)] = so_far
    return Recovered(market=market, last_time_ms=books.time_ms, books=books)
