"""The operator's commands over the API, against a real `tokex serve`: each one does what
it says, as a table in the currency's units or as JSON, and a refusal is one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.accounts import create_account
from market.client import TokexApiError, TokexClient
from market.keys import private_key_pem
from ops.cli import build_parser, main
from schemas.accounts import Role
from schemas.market import Side
from tests.support.market import order
from tests.support.server import REPO_ROOT, ServerProcess

SYMBOL = "llama-3.1-70b/2030-12-01T00Z/1h"


class Cli:
    """`tokex ...` run in this process (in a thread: it runs its own event loop), with
    the key of one account."""

    def __init__(self, capsys: pytest.CaptureFixture[str], url: str, key_id: str, key: Path):
        self.capsys, self.url, self.key_id, self.key = capsys, url, key_id, key

    async def __call__(self, *argv: str, key: tuple[str, Path] | None = None) -> tuple[int, str]:
        key_id, key_file = key or (self.key_id, self.key)
        words = [*argv, "--url", self.url, "--key-id", key_id, "--key-file", str(key_file)]
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, words)
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err

    async def json(self, *argv: str, key: tuple[str, Path] | None = None) -> object:
        code, out = await self(*argv, "--json", key=key)
        assert code == 0, out
        return json.loads(out)


async def _operator(db_url: str, tmp_path: Path) -> tuple[str, Path]:
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "root", None)
    finally:
        await conn.close()
    assert key is not None
    path = tmp_path / "root.pem"
    path.write_text(private_key_pem(key))
    return created.key_id, path


async def test_operator_commands_against_a_running_server(
    db_url: str, server_process: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server_process.base_url
    key_id, key_file = await _operator(db_url, tmp_path)
    cli = Cli(capsys, url, key_id, key_file)

    made = await cli.json(
        "instruments", "create", SYMBOL, "--lot-size", "1000", "--tick-size", "5",
        "--price-min", "5", "--price-max", "100000", "--taker-fee-bps", "20",
        "--delivery-grace-s", "60", "--dispute-period-s", "7", "--completion-weight", "3",
    )  # fmt: skip
    assert isinstance(made, dict) and made["symbol"] == SYMBOL and made["tick_size"] == 5
    terms = (made["delivery_grace_s"], made["dispute_period_s"], made["completion_weight"])
    assert terms == (60, 7, 3)
    running = f"llama-3.1-8b/{datetime.now(UTC):%Y-%m-%dT%H}Z/2h"  # begun, not over
    started = await cli.json(
        "instruments", "create", running, "--lot-size", "1000",
        "--tick-size", "5", "--price-min", "5", "--price-max", "100000", "--allow-started",
    )  # fmt: skip
    assert isinstance(started, dict) and started["symbol"] == running
    code, out = await cli("instruments", "list")
    assert code == 0 and SYMBOL in out and "$0.05" in out and "$1,000.00" in out
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["instruments", "list", "--url", url])  # no key
    assert code == 0 and SYMBOL in capsys.readouterr().out

    async with TokexClient.from_key_file(url, key_id, key_file) as operator:
        buyer = await operator.create_account(Role.BUYER, "acme")
        assert buyer.private_key is not None
        buyer_key = tmp_path / "acme.pem"
        buyer_key.write_text(buyer.private_key)
        as_buyer = (buyer.key_id, buyer_key)

        accounts = await cli.json("accounts", "list", "--role", "buyer")
        assert [a["account_id"] for a in accounts] == [buyer.account_id]  # type: ignore[union-attr,index]
        code, out = await cli("accounts", "list")
        assert code == 0 and "root" in out and "acme" in out and "operator" in out
        for params, status in (({"limit": 0}, 400), ({"role": "admin"}, 400)):
            with pytest.raises(TokexApiError) as bad:
                await operator.request("GET", "/v1/accounts", params=params)
            assert (bad.value.status, bad.value.code) == (status, "invalid_request")
        async with operator.as_account(buyer) as acme:
            with pytest.raises(TokexApiError) as forbidden:
                await acme.accounts()
            assert forbidden.value.code == "forbidden_role"

        code, out = await cli(
            "deposits", "create", "--account", buyer.account_id, "--amount", "2109875",
            "--id", "dep-1",
        )  # fmt: skip
        assert code == 0 and "deposit dep-1: $21,098.75 to " + buyer.account_id in out, out
        again = await cli.json(
            "deposits", "create", "--account", buyer.account_id, "--amount", "2109875",
            "--id", "dep-1",
        )  # fmt: skip
        assert isinstance(again, dict) and again["amount"] == 2109875  # idempotent: same entry

        async with operator.as_account(buyer) as acme:
            await acme.withdraw("w-1", 10_000)
            await acme.withdraw("w/2", 5)  # a client id may hold "/": the CLI encodes it
            placed = await acme.place_order(order("o-1", Side.BUY, 2_000, 3_000))

        listed = await cli.json("withdrawals", "list", "--status", "pending")
        assert sorted(w["withdrawal_id"] for w in listed) == ["w-1", "w/2"]  # type: ignore[index,union-attr]
        code, out = await cli("withdrawals", "paid", buyer.account_id, "w-1")
        assert code == 0 and "$100.00" in out and "paid" in out, out
        failed = await cli.json("withdrawals", "failed", buyer.account_id, "w/2")
        assert isinstance(failed, dict) and failed["status"] == "failed"
        code, out = await cli("withdrawals", "failed", buyer.account_id, "w-1")
        assert code == 1 and out.strip().startswith("tokex: error: withdrawal_settled:"), out
        assert len(out.strip().splitlines()) == 1

        mine = await cli.json("orders", "list", key=as_buyer)
        assert [o["order_id"] for o in mine] == [placed.order_id]  # type: ignore[index,union-attr]
        code, out = await cli("orders", "list", key=as_buyer)
        assert code == 0 and "o-1" in out and "$30.00" in out and "2,000" in out, out
        cancelled = await cli.json("orders", "cancel", str(placed.order_id), key=as_buyer)
        assert isinstance(cancelled, dict) and cancelled["status"] == "cancelled"
        assert await cli.json("orders", "list", key=as_buyer) == []

        code, out = await cli(
            "instruments", "create", "x/y", "--lot-size", "1", "--tick-size", "1",
            "--price-min", "1", "--price-max", "2", key=as_buyer,
        )  # fmt: skip
        assert code == 1 and out.strip().startswith("tokex: error: forbidden_role:"), out

        code, out = await cli("settle", SYMBOL)
        assert code == 0 and f"{SYMBOL} settled (operator)" in out and "$0.00 refunded" in out
        settled = await cli.json("settle", SYMBOL)  # a repeat returns the settlement
        assert isinstance(settled, dict) and settled["instrument"] == SYMBOL


async def test_no_key_or_no_server_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(main, ["orders", "list", "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("tokex: error: missing_key:"), err
    # a public command needs no key: it goes unsigned (and finds no exchange here)
    code = await asyncio.to_thread(main, ["instruments", "list", "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("tokex: error: exchange_unreachable:"), err
    key = tmp_path / "k.pem"
    key.write_text(private_key_pem(Ed25519PrivateKey.generate()))
    cli = Cli(capsys, "http://127.0.0.1:9", "key_0123456789abcdef", key)
    code, out = await cli("orders", "list")
    assert code == 1 and out.startswith("tokex: error: exchange_unreachable:"), out
    assert len(out.strip().splitlines()) == 1


COMMANDS = [
    ("instruments", "create"), ("instruments", "list"), ("deposits", "create"), ("settle",),
    ("withdrawals", "list"), ("withdrawals", "paid"), ("withdrawals", "failed"),
    ("accounts", "list"), ("orders", "list"), ("orders", "cancel"),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tokex {' '.join(command)}") and "--json" in out
    assert "--url" in out and "--key-id" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip().startswith("tokex 0.")


def test_ready_and_a_second_server_on_the_same_database(server_process: ServerProcess) -> None:
    ready = httpx.get(server_process.base_url + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    second = subprocess.run(
        [sys.executable, "-m", "ops", "serve", "--port", "0", "--data-dir",
         str(server_process.data_dir)],
        cwd=REPO_ROOT, env=server_process.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("tokex: error: ledger_writer_busy: another tokex serve ")
    assert "listening" not in second.stdout + second.stderr
    assert httpx.get(server_process.base_url + "/ready").status_code == 200  # the first serves on


async def test_accounts_list_walks_every_page(
    db_url: str, server_process: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """More accounts than a page (the list stopped at 1,000 before), many made in the same
    microsecond: the client, the CLI and a walk by cursor each see every one exactly once."""
    key_id, key_file = await _operator(db_url, tmp_path)
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """INSERT INTO accounts (account_id, role, name)
               SELECT 'acc_' || lpad(to_hex(n), 16, '0'), 'buyer', 'b' || n
                 FROM generate_series(1, 1004) AS n"""
        )  # one statement: every row has the same created_at
        expected = {r["account_id"] for r in await conn.fetch("SELECT account_id FROM accounts")}
    finally:
        await conn.close()
    assert len(expected) == 1005
    url = server_process.base_url
    async with TokexClient.from_key_file(url, key_id, key_file) as operator:
        every = [a.account_id for a in await operator.accounts()]
        walked: list[str] = []
        cursor: str | None = None
        while True:
            page = await operator.accounts_page(limit=25, cursor=cursor)
            walked.extend(a.account_id for a in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        buyers = await operator.accounts(Role.BUYER)
    assert len(every) == len(set(every)) == 1005 and set(every) == expected
    assert walked == every  # newest first, the same order page by page
    assert len(buyers) == 1004
    listed = await Cli(capsys, url, key_id, key_file).json("accounts", "list")
    assert isinstance(listed, list) and [a["account_id"] for a in listed] == every[::-1]
