"""Claiming a private subscribe's signature in the database, for every gateway at once.

A signed `orders` subscribe is checked against the process's own replay window
(`market.auth`); in `tokex serve --workers N` each gateway has its own window, so the same
subscribe sent to another gateway would pass there. `claim` records the signature in
`market_stream_signatures` (migration 0017), the one table every gateway writes to: the
first claim wins, any later one, on any gateway or host, is refused. Claims older than the
replay window are dropped now and then (`PRUNE_EVERY` claims), so the table holds about a
window's worth of subscribes. One process (`tokex serve` without `--workers`) has one
window for all its connections and does not claim here.
"""

from __future__ import annotations

import itertools
from typing import Final

import asyncpg

from market.auth import WINDOW_MS, replayed_signature

#: A claim is kept this long past its signature's time (the window on either side).
KEEP_MS: Final = 2 * WINDOW_MS
#: Every this many claims (per process), the expired ones are deleted.
PRUNE_EVERY: Final = 256

_claims = itertools.count(1)


async def claim(pool: asyncpg.Pool, signature: bytes, timestamp_ms: int, now_ms: int) -> None:
    """Take `signature` for this subscribe, or raise `AuthError` `replayed_signature`."""
    async with pool.acquire() as conn:
        taken = await conn.fetchval(
            """INSERT INTO market_stream_signatures (signature, expires_ms) VALUES ($1, $2)
               ON CONFLICT (signature) DO NOTHING RETURNING 1""",
            signature,
            max(timestamp_ms, now_ms) + KEEP_MS,
        )
        if next(_claims) % PRUNE_EVERY == 0:
            await conn.execute("DELETE FROM market_stream_signatures WHERE expires_ms < $1", now_ms)
    if taken is None:
        raise replayed_signature()
