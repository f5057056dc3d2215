"""`tokex report ...` as a user runs it (subprocesses on DATABASE_URL): the same bytes as
the `/v1/reports/...` route for the same query."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from market.auth import now_ms, sign_request
from ops.app import create_app
from ops.config import Settings
from tests.market.clearing.reports_support import SYM, T0, Activity, build_activity
from tests.support.pg import PgServer
from tests.support.server import REPO_ROOT


def tokex(*args: str, url: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
async def market(pg: PgServer, pg_template: str) -> AsyncIterator[tuple[str, Activity]]:
    async with pg.fresh_database(pg_template) as url:
        yield url, await build_activity(url)


async def route_bytes(url: str, a: Activity, who: str, target: str) -> bytes:
    key = a.keys[who]
    app = create_app(Settings(database_url=url))
    async with AsyncTestClient(app) as client:
        headers = sign_request(key.private_key, key.key_id, "GET", target, b"", now_ms())
        response = await client.get(target, headers=headers)
    assert response.status_code == 200, response.text
    return response.content


async def test_cli_writes_the_routes_bytes(market: tuple[str, Activity], tmp_path: Path) -> None:
    url, a = market
    b1 = a.id("b1")
    out = tmp_path / "statement.csv"
    r = tokex("report", "statement", "--account", b1, "--format", "csv", "--out", str(out), url=url)
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert out.read_bytes() == await route_bytes(url, a, "b1", "/v1/reports/statement?format=csv")
    assert not (tmp_path / "statement.csv.partial").exists()

    # to stdout, JSON; times given as ISO-8601 on the command line, as ms to the route
    r = tokex("report", "fees", "--period", "hour", "--from-time", "2027-01-15T08:00:00Z", url=url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == await route_bytes(
        url, a, "auditor", f"/v1/reports/fees?period=hour&from_time_ms={T0}"
    )
    assert json.loads(r.stdout)["rows"]

    r = tokex("report", "instrument", SYM, "--format", "csv", url=url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == await route_bytes(
        url, a, "operator", f"/v1/reports/instruments/{SYM}?format=csv"
    )
    assert r.stdout.splitlines()[1].startswith(
        b"total," + SYM.encode() + b",,,4,55000,284000,5163,"
    )


async def test_cli_trial_balance_and_errors(market: tuple[str, Activity]) -> None:
    url, _ = market
    r = tokex("report", "trial-balance", "--format", "csv", url=url)
    assert r.returncode == 0, r.stderr
    totals = [line for line in r.stdout.decode().splitlines() if line.startswith("asset_total,")]
    assert totals and all(line.endswith(",0") for line in totals)
    assert r.stdout == tokex("report", "trial-balance", "--format", "csv", url=url).stdout

    r = tokex("report", "instrument", "nope/2027-01-01T00Z/1h", url=url)
    assert r.returncode == 1 and b"unknown_instrument" in r.stderr
    assert b"Traceback" not in r.stderr
    r = tokex("report", "payouts", "--from-time", "soon", url=url)
    assert r.returncode == 1 and b"invalid_report_query" in r.stderr


async def test_cli_text_shows_money_in_units(market: tuple[str, Activity]) -> None:
    """`--format text`: the JSON report's numbers, money as dollars and cents in the scale
    set up (TOKEX_CURRENCY_SCALE), tokens as counts."""
    url, _ = market
    raw = json.loads(tokex("report", "trial-balance", "--format", "json", url=url).stdout)
    r = tokex("report", "trial-balance", "--format", "text", url=url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == raw["columns"]
    assert len(lines) == 1 + len(raw["rows"])
    for line, row in zip(lines[1:], raw["rows"], strict=True):
        if row["asset"] == "USD":
            cents = row["available"]
            sign, dollars = ("-" if cents < 0 else ""), f"{abs(cents) // 100:,}"
            assert f"{sign}${dollars}.{abs(cents) % 100:02d}" in line.split()
        else:
            assert f"{row['available']:,}" in line.split()
    assert any("$" in line for line in lines[1:])


async def test_cli_out_a_directory_is_one_line(
    market: tuple[str, Activity], tmp_path: Path
) -> None:
    """`--out` naming a directory: one line and exit 1 (no traceback), in every format."""
    url, _ = market
    for fmt in ("json", "csv", "text"):
        r = tokex("report", "trial-balance", "--format", fmt, "--out", str(tmp_path), url=url)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(b"tokex: error: output_file_error: cannot write ")
        assert len(r.stderr.splitlines()) == 1 and not list(tmp_path.glob("*.partial"))
    r = tokex("report", "trial-balance", "--to-index", str(2**62 + 1), url=url)
    assert r.returncode == 2 and b"an index is 0..2**62" in r.stderr
