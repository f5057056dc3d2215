"""Revoked request-signing keys, told to every process of the exchange at once.

`Authenticator` caches keys for `cache_ttl_s` seconds. The process that revokes a key
forgets it at once; in `serve --workers N` the other processes would accept it until
their cache expires. So `revoke_key` sends a PostgreSQL notification on `CHANNEL` in the
revoking transaction (sent only if the revocation commits, `notify_revoked`), and every
process runs a `RevocationListener`: one connection of its pool held with `LISTEN`, each
notification a `forget(key_id)`.

While the listener is not connected (a database outage) a revocation can be missed, so
each time it (re)connects it empties the whole key cache: keys are loaded again on their
next use. Meanwhile the cache's TTL is the bound, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "tokex_key_revoked"
#: wait between attempts to (re)connect the listener
RETRY_MS = 1_000
RETRY_MAX_MS = 30_000
#: how often the held connection is checked (a lost one is noticed within this)
CHECK_MS = 5_000

_LOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
)


class KeyCache(Protocol):
    def forget(self, key_id: str) -> None: ...
    def forget_all(self) -> None: ...


async def notify_revoked(conn: asyncpg.Connection, key_id: str) -> None:
    """Tell every listening process that `key_id` is revoked (on this transaction's commit)."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, key_id)


class RevocationListener:
    """Holds one pooled connection listening on `CHANNEL`; forgets each key it is told of."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: KeyCache,
        *,
        retry_ms: int = RETRY_MS,
        check_ms: int = CHECK_MS,
    ) -> None:
        self._pool = pool
        self._keys = keys
        self.retry_ms = retry_ms
        self.check_ms = check_ms
        self.connects = 0
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, key_id: str) -> None:
        self._keys.forget(key_id)

    async def _listen_once(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.add_listener(CHANNEL, self._on_notify)
            try:
                self._keys.forget_all()  # revocations while not listening were missed
                self.connects += 1
                self.listening.set()
                while True:
                    await asyncio.sleep(self.check_ms / 1000)
                    await conn.execute("SELECT 1")  # raises once the connection is lost
            finally:
                self.listening.clear()
                with contextlib.suppress(*_LOST):
                    await conn.remove_listener(CHANNEL, self._on_notify)

    async def run(self) -> None:
        """Listen, and after a loss listen again: the wait doubles with each failure in a
        row up to `RETRY_MAX_MS`. Any error ends only this attempt (a bug is logged with its
        traceback): authentication goes on meanwhile, bounded by the cache's TTL."""
        wait_ms = self.retry_ms
        while True:
            connects = self.connects
            try:
                await self._listen_once()
            except _LOST as exc:
                log.warning("key revocations: not listening (%s); retrying", type(exc).__name__)
            except Exception:
                log.exception("key revocations: listener failed; retrying")
            wait_ms = self.retry_ms if self.connects > connects else min(2 * wait_ms, RETRY_MAX_MS)
            await asyncio.sleep(wait_ms / 1000)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="key-revocations")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
