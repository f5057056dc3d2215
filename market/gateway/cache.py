"""A small cache with a time to live and a bound on its entries (least recently used go).

The gateway keeps the configuration a call needs (its key's grant, a model's healthy
endpoints, an endpoint's checked address) for a second or two instead of reading the
database on every call; what changes in this process (a key revoked, an endpoint
registered, deleted or probed) clears the cache at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(
        self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()  # loads under way finish for their callers, uncached

    async def get_or_load(
        self, key: K, load: Callable[[], Awaitable[V]], keep: Callable[[V], bool] = bool
    ) -> V:
        """The cached value, or `load()`'s, kept if `keep(value)`: one load at a time per
        key (calls that come while it runs wait for it, rather than all reading the
        database the moment an entry expires); a load's error goes to all of them."""
        value = self.get(key)
        if value is not None:
            return value
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no warning if nobody else waited
            raise
        else:
            future.set_result(value)
            if keep(value) and self._loading.get(key) is future:
                self.put(key, value)
            return value
        finally:
            if self._loading.get(key) is future:
                del self._loading[key]
