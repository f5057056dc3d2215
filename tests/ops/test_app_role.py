"""Serving as a role that owns nothing: `tokex db grant-app ROLE`, then `tokex serve` as ROLE
with `TOKEX_MIGRATE=0`. The exchange trades as that role, and the role cannot rewrite the
append-only tables: not by UPDATE, DELETE or TRUNCATE, not by switching the triggers off.

The roles are real LOGIN roles on the test's PostgreSQL (dropped afterwards), and connect
with their passwords (the embedded cluster asks for one too: scram-sha-256)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from ledger.canonical import transaction_bytes
from ledger.migrate import SchemaNotCurrent
from ledger.migrate import migrate as run_migrations
from market.client import TokexApiError, TokexClient
from market.schema import load_migrations
from market.snapshots import SettlingEngine
from ops.db_grants import AppRoleRefused, grant_app
from schemas.ledger import Account, Bucket, CommittedTransaction, Entry
from schemas.market import NewOrder, Side
from tests.ops.test_cli import tokex
from tests.ops.test_ledger_head import answer
from tests.support.market import SYMBOL, order, small_market
from tests.support.pg import quote_ident
from tests.support.server import ServerProcess, free_port

#: Ways the tables' owner or a superuser rewrites an append-only table; the app role may
#: do none of them.
REWRITES = [
    "UPDATE ledger_entries SET amount = amount + 1",
    "DELETE FROM market_fills",
    "UPDATE market_journal SET seq = seq",
    "DELETE FROM gateway_receipts",
    "TRUNCATE market_journal",
    "TRUNCATE ledger_transactions CASCADE",
    "ALTER TABLE ledger_entries DISABLE TRIGGER USER",
    "ALTER TABLE market_fills DISABLE TRIGGER ALL",
    "SET session_replication_role = replica",
    "DROP TABLE ledger_checkpoints",
    "CREATE TRIGGER t BEFORE INSERT ON ledger_entries "
    "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
    "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'x', 'x')",
]

DENIED = r"^(permission denied|must be owner)"


class AppRole:
    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def url(self, owner_url: str) -> str:
        """`owner_url` with this role and its password instead of the owner's."""
        parts = urlsplit(owner_url)
        host = parts.netloc.rpartition("@")[2]
        login = f"{quote(self.name, safe='')}:{quote(self.password, safe='')}"
        return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


async def _drop_role(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP OWNED BY {quote_ident(name)}")  # its grants in this database
        await conn.execute(f"DROP ROLE {quote_ident(name)}")
    finally:
        await conn.close()


@pytest.fixture
async def app_role(db_url: str) -> AsyncIterator[AppRole]:
    role = AppRole(f"tokex_app_{uuid.uuid4().hex[:12]}", secrets.token_hex(16))
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f"CREATE ROLE {quote_ident(role.name)} LOGIN PASSWORD '{role.password}'")
    finally:
        await conn.close()
    try:
        yield role
    finally:
        await _drop_role(db_url, role.name)


async def _table_privileges(conn: asyncpg.Connection, role: str) -> dict[str, set[str]]:
    rows = await conn.fetch(
        """SELECT table_name, privilege_type FROM information_schema.role_table_grants
            WHERE grantee = $1 AND table_schema = current_schema()""",
        role,
    )
    granted: dict[str, set[str]] = {}
    for row in rows:
        granted.setdefault(row["table_name"], set()).add(row["privilege_type"])
    return granted


async def _wait_for_snapshot(conn: asyncpg.Connection) -> None:
    for _ in range(200):
        if await conn.fetchval("SELECT count(*) FROM market_snapshots"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the exchange wrote no snapshot of the books as the app role")


async def test_the_exchange_trades_as_the_app_role_which_cannot_rewrite_the_ledger(
    db_url: str, app_role: AppRole, tmp_path: Path
) -> None:
    granted = tokex("db", "grant-app", app_role.name, env={"DATABASE_URL": db_url})
    assert granted.returncode == 0, granted.stderr
    assert "ledger_entries: SELECT, INSERT\n" in granted.stdout
    assert "market_orders: SELECT, INSERT, UPDATE, DELETE\n" in granted.stdout

    app_url = app_role.url(db_url)
    server = ServerProcess(
        database_url=app_url,
        data_dir=tmp_path,
        env={"TOKEX_MIGRATE": "0"},
        extra_args=("--snapshot-interval-seconds", "0.2"),
    )
    with server:
        market = await small_market(app_url, server.base_url)
        try:
            await market.provider.place_order(order("ask-1", Side.SELL, 10_000, 3_000))
            placed = await market.buyer.place_order(order("bid-1", Side.BUY, 10_000, 3_000))
            assert placed.status == "filled"
            assert len(await market.buyer.fills()) == 1
        finally:
            await market.aclose()
        conn = await asyncpg.connect(app_url)
        try:
            serving_as = await conn.fetch(
                """SELECT DISTINCT usename FROM pg_stat_activity
                    WHERE application_name = 'tokex' AND datname = current_database()"""
            )
            assert [row["usename"] for row in serving_as] == [app_role.name]
            await _wait_for_snapshot(conn)  # snapshots update and delete rows: they work too
            for statement in REWRITES:
                # refused by the privileges (not only by the triggers, which an owner
                # switches off): "permission denied for table ...", "must be owner of ..."
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match=DENIED):
                    await conn.execute(statement)
            assert await conn.fetchval("SELECT count(*) FROM market_fills") == 1
        finally:
            await conn.close()
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    assert "permission denied" not in server.log()
    assert "can switch the ledger's append-only triggers off" not in server.log()


async def test_grant_app_is_idempotent_and_takes_back_what_is_too_much(
    db_conn: asyncpg.Connection, app_role: AppRole
) -> None:
    first = await grant_app(db_conn, app_role.name)
    granted = await _table_privileges(db_conn, app_role.name)
    assert granted["ledger_entries"] == {"SELECT", "INSERT"}
    assert granted["market_vouchers"] == {"SELECT", "INSERT"}
    assert granted["market_reports"] == {"SELECT", "INSERT", "UPDATE"}  # no DELETE: a trigger
    assert granted["market_orders"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert granted["schema_migrations"] == {"SELECT"}
    assert not any({"TRUNCATE", "TRIGGER", "REFERENCES"} & p for p in granted.values())

    who = quote_ident(app_role.name)
    await db_conn.execute(f"GRANT UPDATE, DELETE, TRUNCATE, TRIGGER ON ledger_entries TO {who}")
    assert await grant_app(db_conn, app_role.name) == first
    assert await _table_privileges(db_conn, app_role.name) == granted


async def test_a_role_that_could_switch_the_triggers_off_is_refused(
    db_conn: asyncpg.Connection, app_role: AppRole
) -> None:
    owner = await db_conn.fetchval("SELECT current_user")
    who = quote_ident(app_role.name)
    await db_conn.execute(f"GRANT {quote_ident(owner)} TO {who}")  # a member of the owner
    with pytest.raises(AppRoleRefused, match="could switch the append-only triggers off"):
        await grant_app(db_conn, app_role.name)
    await db_conn.execute(f"REVOKE {quote_ident(owner)} FROM {who}")
    await db_conn.execute(f"ALTER ROLE {who} CREATEROLE")
    with pytest.raises(AppRoleRefused, match="CREATEROLE"):
        await grant_app(db_conn, app_role.name)
    with pytest.raises(AppRoleRefused, match="there is no role"):
        await grant_app(db_conn, "tokex_nobody_" + uuid.uuid4().hex[:8])
    assert await _table_privileges(db_conn, app_role.name) == {}


def test_grant_app_refuses_the_owner_itself(db_url: str) -> None:
    result = tokex("db", "grant-app", "postgres", env={"DATABASE_URL": db_url})
    assert result.returncode == 1
    assert "app_role_refused" in result.stderr


async def test_serve_without_migrating_refuses_a_database_behind(
    empty_db_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await run_migrations(conn, load_migrations()[:-1])  # all but the last
        with pytest.raises(SchemaNotCurrent):
            await grant_app(conn, "postgres")
    finally:
        await conn.close()
    result = tokex(
        "serve", "--port", str(free_port()), "--data-dir", str(tmp_path),
        env={"DATABASE_URL": empty_db_url, "TOKEX_MIGRATE": "0"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = load_migrations()[-1]
    assert "schema_not_current" in result.stderr
    assert f"{last.version:04d}_{last.name}" in result.stderr
    conn = await asyncpg.connect(empty_db_url)
    try:  # and it applied nothing
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == last.version - 1
    finally:
        await conn.close()


def test_serve_without_migrating_as_the_owner_says_it_is_no_boundary(
    db_url: str, tmp_path: Path
) -> None:
    """`TOKEX_MIGRATE=0` is meant for an app role: served as the owner it still starts (a
    current schema), but warns that these credentials can switch the triggers off."""
    server = ServerProcess(database_url=db_url, data_dir=tmp_path, env={"TOKEX_MIGRATE": "0"})
    with server:
        pass
    assert server.proc is not None and server.proc.returncode == 0, server.log()
    assert "can switch the ledger's append-only triggers off" in server.log()


async def _mint_as_app_role(app_url: str, buyer_id: str, amount: int) -> None:
    """As the app role, the exchange stopped: a zero-sum edit of the balance snapshot,
    `amount` from the bank's row to the buyer's cash, and the hold of the buyer's resting
    bid released into that cash (the hold closed, the buyer's held moved over)."""
    conn = await asyncpg.connect(app_url)
    try:
        cash = await conn.fetchval(
            "SELECT id FROM ledger_accounts WHERE owner = $1 AND kind = 'cash'", buyer_id
        )
        bank = await conn.fetchval("SELECT id FROM ledger_accounts WHERE kind = 'bank'")
        async with conn.transaction():
            await conn.execute(
                "UPDATE ledger_balances SET available = available + held + $2, held = 0"
                " WHERE account_id = $1",
                cash,
                amount,
            )
            await conn.execute(
                "UPDATE ledger_balances SET available = available - $2 WHERE account_id = $1",
                bank,
                amount,
            )
            released = await conn.execute(
                """UPDATE ledger_hold_state s SET remaining = 0
                     FROM ledger_holds h
                    WHERE h.hold_id = s.hold_id AND h.account_id = $1 AND s.remaining > 0""",
                cash,
            )
            assert released == "UPDATE 1"
    finally:
        await conn.close()


async def test_a_snapshot_edited_as_the_app_role_is_not_loaded_and_cannot_be_spent(
    db_url: str, app_role: AppRole, tmp_path: Path
) -> None:
    """The app role may rewrite the balance snapshot (snapshots do), but what it writes
    there is not loaded: the snapshot is sealed by the exchange's key (`ledger.seal`)."""
    assert tokex("db", "grant-app", app_role.name, env={"DATABASE_URL": db_url}).returncode == 0
    app_url = app_role.url(db_url)
    server = ServerProcess(database_url=app_url, data_dir=tmp_path, env={"TOKEX_MIGRATE": "0"})

    async def buyer_cash() -> tuple[int, int]:
        buyer = TokexClient(server.base_url, key_id, private_key)
        try:
            [cash] = [b for b in await buyer.balances() if b.kind == "cash"]
        finally:
            await buyer.aclose()
        return cash.available, cash.held

    with server:
        market = await small_market(app_url, server.base_url)
        try:
            bid = await market.buyer.place_order(order("bid-1", Side.BUY, 10_000, 3_000))
            assert bid.status == "open"  # rests, holding the buyer's cash
            buyer_id = market.buyer_id
            assert market.buyer.key_id is not None and market.buyer.private_key is not None
            key_id, private_key = market.buyer.key_id, market.buyer.private_key
            before = await buyer_cash()
        finally:
            await market.aclose()
    assert before[1] > 0
    with server:  # an untampered restart loads the sealed snapshot
        assert await buyer_cash() == before
    assert "is not loaded" not in server.log()

    await _mint_as_app_role(app_url, buyer_id, 9_000_000)
    with server:
        assert await buyer_cash() == before
        buyer = TokexClient(server.base_url, key_id, private_key)
        try:
            with pytest.raises(TokexApiError) as refused:
                await buyer.withdraw("wd-mint", 9_000_000)
            assert refused.value.code == "insufficient_funds"
            await buyer.cancel_order(bid.order_id)  # the hold is still there to release
            assert await buyer_cash() == (before[0] + before[1], 0)
        finally:
            await buyer.aclose()
    assert f"{buyer_id}|USD|cash: snapshot ({before[0] + before[1] + 9_000_000}, 0)" in (
        server.log()
    )


async def _forge_tail_as_app_role(app_url: str, buyer_id: str, amount: int) -> int:
    """As the app role, the exchange stopped: append a bank-to-buyer transaction at the
    journal's next index (INSERT only, which the role may do); its index."""
    conn = await asyncpg.connect(app_url)
    try:
        rows = await conn.fetch(
            "SELECT id, owner, asset, kind FROM ledger_accounts"
            " WHERE (owner = $1 AND kind = 'cash') OR kind = 'bank' ORDER BY kind",
            buyer_id,
        )
        bank, cash = (Account(r["owner"], r["asset"], r["kind"]) for r in rows)
        ids = [r["id"] for r in rows]
        n = await conn.fetchval("SELECT max(idx) + 1 FROM ledger_transactions")
        entries = (Entry(bank, Bucket(0), -amount), Entry(cash, Bucket(0), amount))
        body = transaction_bytes(
            CommittedTransaction(n, "forged", "deposit", 10**13, entries, (), {})
        )
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger_transactions VALUES ($1, 'forged', 'deposit', $2, '\\x00', $3)",
                n,
                10**13,
                body,
            )
            await conn.execute(
                "INSERT INTO ledger_entries VALUES ($1, 0, $2, 0, $4), ($1, 1, $3, 0, $5)",
                n,
                *ids,
                -amount,
                amount,
            )
        return int(n)
    finally:
        await conn.close()


async def test_a_journal_row_appended_as_the_app_role_is_not_served_nor_signed(
    db_url: str, app_role: AppRole, tmp_path: Path
) -> None:
    """The app role may INSERT into the journal; a row past the last signed checkpoint
    is refused at the next start (503 ledger_regressed), not replayed and signed."""
    assert tokex("db", "grant-app", app_role.name, env={"DATABASE_URL": db_url}).returncode == 0
    app_url = app_role.url(db_url)
    server = ServerProcess(database_url=app_url, data_dir=tmp_path, env={"TOKEX_MIGRATE": "0"})
    with server:
        market = await small_market(app_url, server.base_url)
        buyer_id = market.buyer_id
        await market.aclose()
    with server:  # an honest restart is served
        assert (await answer(server.base_url, "/ready", 200)).json()["ledger_size"] > 0
    forged = await _forge_tail_as_app_role(app_url, buyer_id, 9_000_000)
    server.start(wait=False)
    try:
        await answer(server.base_url, "/ready", 503, "ledger_regressed", 60)
    finally:
        server.stop()
    assert f"from index {forged} on that no signed checkpoint covers" in server.log()
    conn = await asyncpg.connect(db_url)
    try:
        signed = await conn.fetchval("SELECT max(tree_size) FROM ledger_checkpoints")
    finally:
        await conn.close()
    assert signed == forged  # the log still ends before the forged row


async def _forge_book_as_app_role(app_url: str, owner: str) -> int:
    """As the app role, the exchange stopped: the newest snapshot of the books gets a
    resting ask no hold backs (an UPDATE of the row, which snapshots may make). Its price."""
    conn = await asyncpg.connect(app_url)
    try:
        row = await conn.fetchrow(
            "SELECT journal_seq, engine FROM market_snapshots ORDER BY journal_seq DESC LIMIT 1"
        )
        assert row is not None
        engine = SettlingEngine.restore_from(row["engine"])
        engine.process(
            NewOrder(instrument=SYMBOL, order_id=10**9, owner=owner, side=Side.SELL,
                     quantity=10_000, time=0, price=4_000, client_order_id="forged")
        )  # fmt: skip
        await conn.execute(
            "UPDATE market_snapshots SET engine = $1 WHERE journal_seq = $2",
            engine.snapshot(),
            row["journal_seq"],
        )
    finally:
        await conn.close()
    return 4_000


async def test_a_book_snapshot_written_as_the_app_role_is_not_loaded(
    db_url: str, app_role: AppRole, tmp_path: Path
) -> None:
    """The app role may rewrite `market_snapshots` (snapshots prune it), but a row it
    writes is not loaded: it is not sealed by the exchange's key (`market.snapshots`)."""
    assert tokex("db", "grant-app", app_role.name, env={"DATABASE_URL": db_url}).returncode == 0
    app_url = app_role.url(db_url)
    server = ServerProcess(database_url=app_url, data_dir=tmp_path, env={"TOKEX_MIGRATE": "0"})
    with server:
        market = await small_market(app_url, server.base_url)
        try:
            await market.buyer.place_order(order("bid-1", Side.BUY, 10_000, 3_000))
            before = await market.buyer.book(SYMBOL)
            provider_id = market.provider_id
        finally:
            await market.aclose()
    price = await _forge_book_as_app_role(app_url, provider_id)
    with server:
        client = TokexClient(server.base_url)
        try:
            after = await client.book(SYMBOL)
        finally:
            await client.aclose()
    assert (after.bids, after.asks) == (before.bids, before.asks)
    assert price not in {level.price for level in after.asks}
    assert "is not loaded: its seal" in server.log()
