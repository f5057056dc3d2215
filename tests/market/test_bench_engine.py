"""The engine benchmark script runs, and its replay reproduces the generator's state."""

from __future__ import annotations

import pytest

from ops.bench import engine as bench


def test_bench_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--commands", "3000", "--repeat", "1", "--resting", "100"]) == 0
    out = capsys.readouterr().out
    assert "throughput:" in out and "commands/s" in out
    assert "p99.9" in out


def test_workload_is_seeded() -> None:
    a = bench.generate(500, seed=3, resting=50)
    b = bench.generate(500, seed=3, resting=50)
    assert a[0] == b[0] and a[1] == b[1]
