"""`tokex demo` from the CLI, as a newcomer runs it: exit 0, the gateway's calls metered
exactly and paid pro rata, a voucher and a refunded dispute, and a verified audit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_its_audit_verifies(tmp_path: Path) -> None:
    data_dir = Path("/tmp") / f"tokex-demo-test-{os.getpid()}"  # outside pytest's 0700 tmp
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "ops", "demo", "--orders", "600", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
        assert "== Instrument settlement ==" in out
        assert "asset_total" in out and "verified offline" in out
        # Every asset totals zero in the printed trial balance: money in dollars and cents,
        # tokens as counts.
        totals = [line.split() for line in out.splitlines() if line.startswith("asset_total")]
        assert totals and all(row[-3:] in (["0"] * 3, ["$0.00"] * 3) for row in totals)
        assert any(row[1] == "USD" and row[-1] == "$0.00" for row in totals)
        assert "3 buyers deposited $100,000.00 each" in done.stderr
        # amounts with units: the bank's cash went out as the buyers' deposits, 3 x
        # $100,000.00 and app-buyer's $10,000.00
        assert "-$310,000.00" in out and "-31000000" not in out
        assert_delivery(out, done.stderr)
        # And the file it wrote verifies again through the CLI, with no database.
        again = subprocess.run(
            [sys.executable, "-m", "ops", "audit", "verify", str(data_dir / "audit.tokex"),
             "--public-key", str(data_dir / "exchange.pub")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        # A fresh data dir is required: a second run into the same one refuses.
        refused = subprocess.run(
            [sys.executable, "-m", "ops", "demo", "--data-dir", str(data_dir)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2
    finally:
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def assert_delivery(out: str, err: str) -> None:
    """The delivery part's outcomes, as printed: on the stand-in (said to be one), each
    call through the SDK took exactly its metered tokens off the entitlement and paid the
    provider its share of $120.00 less 2.5%, both rounded on the totals so far
    (`rules.delivery_split`); the receipts, a proof, the
    voucher, the refunded dispute and the close add up; the audit holds the receipts."""
    assert "a STAND-IN for a provider's own inference server" in err
    assert "TOKEX_ENDPOINT_ALLOW_HOSTS=127.0.0.1" in err
    assert "models.list() -> ['llama-3.1-70b']" in out
    # 6 prompt words + 12 completion words from the stand-in, each call, streamed or not.
    assert out.count("6 prompt + 12 completion = 18 tokens metered") == 2
    assert "entitlement 20,000 -> 19,982 tokens (-18)" in out
    assert "entitlement 19,982 -> 19,964 tokens (-18)" in out
    # $120.00 x 18 / 20,000 = 10.8 cents: 10 released, fee floor(10 x 2.5%) = 0, paid 10;
    # then 36 tokens in all: 21.6 cents, so 11 more (floored per call it was 10 again).
    assert ("$0.10 (in all $0.10 = $120.00 x 18/20,000), less the fee $0.00; provider cash "
            "+$0.10") in out  # fmt: skip
    assert ("$0.11 (in all $0.21 = $120.00 x 36/20,000), less the fee $0.00; provider cash "
            "+$0.11") in out  # fmt: skip
    assert "entitlement fell by 36 tokens = the metered tokens of the 2 calls (36): exact" in out
    assert len(re.findall(r"^  rcp_\w+  llama-3.1-70b  6\+12 = 18 tokens", out, re.M)) == 2
    assert "proof verified offline" in out
    # 5,036 tokens in all: floor($120.00 x 5,036 / 20,000) = $30.21, $30.00 more; the fee
    # floor($30.21 x 2.5%) = $0.75 in all.
    assert "$30.00 of escrow released at once, fee $0.75, provider cash +$29.25" in out
    assert "dispute period (60 min)" in out and "): dsp_" in out and " open" in out
    # 7,036 tokens in all: floor($120.00 x 7,036 / 20,000) = $42.21, $12.00 more, held,
    # then refunded.
    assert "2,000 tokens served outside the gateway (POST /v1/deliveries): pending, $12.00" in out
    assert re.search(r"resolved dsp_[0-9a-f]{16}: refunded; app-buyer cash \+\$12\.00 ", out)
    # 20,000 - 36 - 5,000 - 2,000 refunded = 12,964 left, burned at close.
    assert "12,964 undelivered tokens burned" in out
    assert "2 gateway deliveries, each backed by the receipts it commits to (2 receipts)" in out


async def test_demo_leaves_a_database_in_use_alone(db_url: str, tmp_path: Path) -> None:
    """`DATABASE_URL` naming an exchange's database: the demo refuses in one line before
    it writes anything (it used to migrate and add an operator account, then fail)."""
    conn = await asyncpg.connect(db_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM accounts")
        env = {**os.environ, "DATABASE_URL": db_url}
        done = subprocess.run(
            [sys.executable, "-m", "ops", "demo", "--data-dir", str(tmp_path / "demo")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert "has an exchange in it already" in done.stderr
        assert "Traceback" not in done.stderr
        assert await conn.fetchval("SELECT count(*) FROM accounts") == before
    finally:
        await conn.close()
