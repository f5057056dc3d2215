"""Claiming a signature in the database, for every gateway at once: a private subscribe's,
and a signed write's that the route makes in the database itself.

A signed `orders` subscribe is checked against the process's own replay window
(`market.auth`); in `tokex serve --workers N` each gateway has its own window, so the same
subscribe sent to another gateway would pass there. `claim` records the signature in
`market_stream_signatures` (migration 0017), the one table every gateway writes to: the
first claim wins, any later one, on any gateway or host, is refused. Claims older than the
replay window are dropped now and then (`PRUNE_EVERY` claims), so the table holds about a
window's worth of subscribes. One process (`tokex serve` without `--workers`) has one
window for all its connections and does not claim here.

`claim_write` does the same for a signed write that does not go through the sequencer
(whose replay window sees every gateway's commands) but is written to the database by the
route: endpoints, inference keys, accounts and their signing keys. Such a write is not
safe to take twice: a captured `DELETE /v1/endpoints/ep-1` replayed after the provider
registered ep-1 again would remove the new one, and a captured registration replayed after
a delete would bring the old URL back. The route claims the request's signature in the
same transaction as its write (so a write refused, 4xx, leaves no claim), in every
process, one or many: a signature is claimed once, the second claim on any gateway is
401 `replayed_signature`. The same table holds both kinds (a signature signs one message).
"""

from __future__ import annotations

import itertools
from typing import Final

import asyncpg

from market.auth import WINDOW_MS, Principal, replayed_signature

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


async def claim_write(conn: asyncpg.Connection, principal: Principal, now_ms: int) -> None:
    """Take the signature `principal` was authenticated by for the direct database write
    the route makes on `conn` (in its transaction), or raise `AuthError`
    `replayed_signature` if any gateway took it already. A principal without a signature
    (built otherwise than from a signed request) claims nothing. The signature was at most
    the window from `now_ms` when checked, so it is stale `KEEP_MS` from now."""
    if not principal.signature:
        return
    taken = await conn.fetchval(
        """INSERT INTO market_stream_signatures (signature, expires_ms) VALUES ($1, $2)
           ON CONFLICT (signature) DO NOTHING RETURNING 1""",
        principal.signature,
        now_ms + KEEP_MS,
    )
    if next(_claims) % PRUNE_EVERY == 0:
        await conn.execute("DELETE FROM market_stream_signatures WHERE expires_ms < $1", now_ms)
    if taken is None:
        raise replayed_signature()
