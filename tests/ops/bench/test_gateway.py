"""The gateway bench runs, with tiny numbers, and says what it measured."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys


async def test_the_gateway_bench_runs(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    args = [sys.executable, "-m", "ops.bench.gateway", "--seconds", "0.5", "--clients", "2"]
    done = await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "streaming:" in out and "not streaming:" in out
    # closed loop and then paced at half its rate, each upstream directly and through
    assert len(re.findall(r"calls/s \(\d+ calls, 0 failed\)", out)) == 8
    assert "streaming, paced at" in out and "not streaming, paced at" in out
    assert "added by the gateway at p50" in out
    assert "group commits:" in out and "not in the server's log" not in out
