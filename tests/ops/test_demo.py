"""`tokex demo` from the CLI, as a newcomer runs it: exit 0 and a verified audit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
        # amounts with units: the bank's cash went out as the buyers' deposits, -$300,000.00
        assert "-$300,000.00" in out and "-30000000" not in out
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
