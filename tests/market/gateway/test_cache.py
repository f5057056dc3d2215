"""The gateway's `TtlCache`: a clear (a key revoked in this process) drops loads under way."""

from __future__ import annotations

import asyncio

from market.gateway.cache import TtlCache


async def test_a_load_under_way_when_the_cache_is_cleared_is_not_cached() -> None:
    """`keys_api` clears the grants after revoking a key: a load that read the key's row
    before the revocation answers its caller, but neither is cached nor joined by a call
    that comes after the clear."""
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10)
    row = {"grant": "active"}
    gate = asyncio.Event()

    async def load() -> str:
        seen = row["grant"]  # the SELECT
        await gate.wait()  # the round trip
        return seen

    first = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0.01)
    row["grant"] = "revoked"
    cache.clear()
    second = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0.01)
    gate.set()
    assert (await first, await second) == ("active", "revoked")
    assert cache.get("k") == "revoked"
