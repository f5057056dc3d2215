"""A key revoked in one process is refused by the others at once, not after their cache's
TTL: the revocation's notification reaches every process's `RevocationListener`."""

from __future__ import annotations

import asyncio

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.accounts import add_key, create_account, revoke_key
from market.auth import Authenticator
from market.key_revocations import RevocationListener, notify_revoked
from market.keys import public_key_b64
from ops.database import open_pool
from schemas.accounts import Role

TTL_S = 600.0  # far longer than the test: only the notification can make a process forget


def raw(key: Ed25519PrivateKey) -> bytes:
    import base64

    return base64.b64decode(public_key_b64(key))


async def _until(condition_async: object, timeout_s: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await condition_async():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_key_revoked_elsewhere_is_refused_within_a_second(
    db_url: str, db_conn: asyncpg.Connection
) -> None:
    created, _ = await create_account(db_conn, Role.BUYER, "acme", None)
    second = await add_key(db_conn, created.account_id, raw(Ed25519PrivateKey.generate()))
    # two processes' worth: each its own pool, authenticator and listener
    pools = [await open_pool(db_url, min_size=1, max_size=3) for _ in range(2)]
    auths = [Authenticator.from_pool(p, cache_ttl_s=TTL_S) for p in pools]
    listeners = [RevocationListener(p, a) for p, a in zip(pools, auths, strict=True)]
    try:
        for listener in listeners:
            listener.start()
            await asyncio.wait_for(listener.listening.wait(), 5)
        for auth in auths:
            assert await auth.key_active(second.key_id)  # cached as active
        async with pools[0].acquire() as conn:
            await revoke_key(conn, created.account_id, second.key_id, keep_one=True)

        async def forgotten_by_the_other() -> bool:
            return not await auths[1].key_active(second.key_id)

        assert await _until(forgotten_by_the_other, 1.0)
        assert await auths[1].key_active(created.key_id)  # the account's other key still signs
    finally:
        for listener in listeners:
            await listener.close()
        for p in pools:
            await p.close()


async def test_a_revocation_rolled_back_is_not_told(
    db_url: str, db_conn: asyncpg.Connection
) -> None:
    created, _ = await create_account(db_conn, Role.BUYER, "acme", None)
    pool = await open_pool(db_url, min_size=1, max_size=2)
    auth = Authenticator.from_pool(pool, cache_ttl_s=TTL_S)
    listener = RevocationListener(pool, auth)
    try:
        listener.start()
        await asyncio.wait_for(listener.listening.wait(), 5)
        assert await auth.key_active(created.key_id)
        tx = db_conn.transaction()
        await tx.start()
        await db_conn.execute(
            "UPDATE account_keys SET revoked_at = now() WHERE key_id = $1", created.key_id
        )
        await notify_revoked(db_conn, created.key_id)
        await tx.rollback()
        await asyncio.sleep(0.3)
        assert auth._cache.get(created.key_id) is not None  # still cached: nothing was told
    finally:
        await listener.close()
        await pool.close()


async def test_a_listener_that_reconnects_empties_the_cache(db_url: str) -> None:
    """A revocation sent while the listener was cut off is missed: on reconnecting it drops
    every cached key, so each is loaded again (revoked ones refused)."""
    pool = await open_pool(db_url, min_size=1, max_size=3)
    forgotten: list[str] = []

    class Keys:
        def forget(self, key_id: str) -> None:
            forgotten.append(key_id)

        def forget_all(self) -> None:
            forgotten.append("*")

    listener = RevocationListener(pool, Keys(), retry_ms=50, check_ms=50)
    try:
        listener.start()
        await asyncio.wait_for(listener.listening.wait(), 5)
        assert forgotten == ["*"]
        async with pool.acquire() as conn:  # cut the listener's connection from the server
            await conn.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid()
                     AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')"""
            )

        async def reconnected() -> bool:
            return listener.connects >= 2 and listener.listening.is_set()

        assert await _until(reconnected, 5.0)
        assert forgotten.count("*") >= 2
    finally:
        await listener.close()
        await pool.close()
