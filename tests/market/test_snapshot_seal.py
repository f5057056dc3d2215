"""The books' snapshots are sealed with the ledger's checkpoint key: a row of
`market_snapshots` written outside the exchange (its database role may write that table)
is not loaded; the books are rebuilt from an older sealed one or the journal."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from ledger.log import MerkleLog
from ledger.note import Signer
from market.snapshots import load_snapshots, take, write_snapshot
from schemas.market import NewOrder, Side
from tests.market.test_recovery import LOT, B, Clock, every, open_seq, trade_a_while
from tests.market.test_snapshots import _engine, _order

ORIGIN = "test.tokex/market"


@pytest.fixture
def sealer() -> MerkleLog:
    return MerkleLog(Signer.generate(ORIGIN))


async def _insert(conn: asyncpg.Connection, seq: int, engine: bytes, seal: bytes | None) -> None:
    await conn.execute(
        "INSERT INTO market_snapshots (journal_seq, time_ms, format, engine, created_ms,"
        " seal_key, seal) VALUES ($1, 0, 1, $2, 0, $3, $4)",
        seq,
        engine,
        None if seal is None else "someone+00000000+AAAA",
        seal,
    )


async def test_only_snapshots_sealed_by_the_exchange_are_loaded(
    db_conn: asyncpg.Connection, sealer: MerkleLog
) -> None:
    honest = take(_engine(), journal_seq=5, time_ms=50)
    await write_snapshot(db_conn, honest, now_ms=0, sealer=sealer)
    assert await load_snapshots(db_conn, sealer) == [honest]
    forged = _engine()
    forged.process(_order(B, 99, Side.BUY, 500, owner="nobody"))  # rests, no hold behind it
    # The honest row's bytes edited in place: its seal no longer holds.
    await db_conn.execute(
        "UPDATE market_snapshots SET engine = $1 WHERE journal_seq = 5", forged.snapshot()
    )
    assert await load_snapshots(db_conn, sealer) == []
    # Rewritten by the exchange at the same position: sealed again and loaded.
    await write_snapshot(db_conn, honest, now_ms=1, sealer=sealer)
    assert await load_snapshots(db_conn, sealer) == [honest]
    await _insert(db_conn, 9, forged.snapshot(), None)  # newer, not sealed
    await _insert(db_conn, 10, forged.snapshot(), bytes(64))  # a seal by no key it holds
    other = MerkleLog(Signer.generate(ORIGIN))  # a real seal, by a key the exchange lacks
    await write_snapshot(db_conn, take(forged, journal_seq=12, time_ms=0), now_ms=0, sealer=other)
    assert await load_snapshots(db_conn, sealer) == []  # the honest row was pruned
    assert len(await load_snapshots(db_conn)) == 2  # unchecked (no key): what is stored


async def test_a_forged_book_snapshot_is_not_loaded_and_an_honest_restart_is(
    db_url: str, db_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    signer = Signer.generate(ORIGIN)
    clock = Clock()
    s = await open_seq(db_url, clock, every(25), hooks=[MerkleLog(signer)])
    await trade_a_while(s, clock)
    honest = s.engine.state_hash()
    await s.close()  # a last sealed snapshot
    newest = await db_conn.fetchval("SELECT max(journal_seq) FROM market_snapshots")

    s = await open_seq(db_url, clock, every(25), hooks=[MerkleLog(signer)])
    try:  # an honest restart starts from the newest snapshot
        assert s.last_rebuild is not None and s.last_rebuild.base_seq == newest
        assert s.engine.state_hash() == honest
    finally:
        await s.close()

    # As the app role could: the newest row's books get a resting bid no hold backs.
    engine = take(s.engine, newest, 0).restore()
    engine.process(
        NewOrder(instrument=B, order_id=10**9, owner="b2", side=Side.BUY, quantity=LOT,
                 time=clock.now, price=119, client_order_id="forged")
    )  # fmt: skip
    forged = engine.snapshot()
    await db_conn.execute(
        "UPDATE market_snapshots SET engine = $1 WHERE journal_seq = $2", forged, newest
    )
    with caplog.at_level(logging.ERROR, logger="market.snapshots"):
        s = await open_seq(db_url, clock, every(25), hooks=[MerkleLog(signer)])
    try:
        assert f"market snapshot at journal seq {newest} is not loaded" in caplog.text
        assert s.last_rebuild is not None and s.last_rebuild.base_seq != newest
        assert s.engine.state_hash() == honest
        assert 10**9 not in {o.order_id for o in s.engine.book(B).to_snapshot().bids}
    finally:
        await s.close()  # rewrites the row at that position, sealed
    s = await open_seq(db_url, clock, every(25), hooks=[MerkleLog(signer)])
    try:
        assert s.last_rebuild is not None and s.last_rebuild.base_seq == newest
        assert s.engine.state_hash() == honest
    finally:
        await s.close()
