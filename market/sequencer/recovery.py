"""Recovery: the market's memory rebuilt from the database.

The same path serves start-up (after a clean stop or a crash) and the rebuild after
a failed commit. `recover` reads, in one repeatable-read transaction, the listed
instruments, the journal of engine commands (replayed through a fresh engine by
`replay`, its own step: the engine is deterministic, so the books come out exactly
as they were), the open orders, the next order id and the settlements; and builds
one `InstrumentState` per instrument from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from market.engine import MatchingEngine
from market.sequencer.state import InstrumentState, MarketState, terms_of
from market.store import (
    ListInstrument,
    journal,
    load_live_orders,
    load_settlements,
    load_terms,
    next_order_id,
)


@dataclass(frozen=True, slots=True)
class Replayed:
    """Where the journal ends: the next sequence number and the latest time in it (ms)."""

    next_seq: int
    last_time_ms: int


async def replay(conn: asyncpg.Connection, engine: MatchingEngine) -> Replayed:
    """Feed every journaled command (and listing) to `engine`, in order. Run it inside a
    transaction: the journal is read with a cursor."""
    next_seq = 0
    last_time_ms = 0
    async for seq, entry in journal(conn):
        if isinstance(entry, ListInstrument):
            engine.add_instrument(entry.instrument)
        else:
            engine.process(entry)
        next_seq = seq + 1
        last_time_ms = max(last_time_ms, entry.time)
    return Replayed(next_seq=next_seq, last_time_ms=last_time_ms)


@dataclass(frozen=True, slots=True)
class Recovered:
    market: MarketState
    last_time_ms: int


async def recover(conn: asyncpg.Connection) -> Recovered:
    """The market as the database has it: books, instruments, open orders, counters."""
    engine = MatchingEngine()
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        listed = {r["symbol"]: r for r in await load_terms(conn)}
        end = await replay(conn, engine)
        live = await load_live_orders(conn)
        order_id = await next_order_id(conn)
        settled = {s.instrument: s for s in await load_settlements(conn)}
    market = MarketState(
        engine=engine,
        live={o.order_id: o for o in live},
        gtd={o.order_id: o.expire_at for o in live if o.expire_at is not None},
        next_order_id=order_id,
        next_journal_seq=end.next_seq,
    )
    for book in engine.books():
        row = listed[book.symbol]
        state = InstrumentState.build(
            book, terms_of(row), row["delivery_grace_seconds"], settled.get(book.symbol)
        )
        market.add(state)
    return Recovered(market=market, last_time_ms=end.last_time_ms)
