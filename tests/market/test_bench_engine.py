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


def test_benchmark_workload_matches_the_reference() -> None:
    """A deeper book than the property tests build (hundreds of orders over many
    levels): the engine still emits exactly the reference's events."""
    from tests.market.reference import ReferenceBook

    cmds, expected_hash, _ = bench.generate(3_000, seed=11, resting=200)
    engine = bench.make_engine()
    ref = ReferenceBook(engine.book(bench.SYMBOL).instrument)
    for cmd in cmds:
        assert engine.process(cmd) == ref.process(cmd)
    assert engine.book(bench.SYMBOL).open_orders() == ref.open_orders()
    assert engine.state_hash() == expected_hash
    assert len(engine.book(bench.SYMBOL)) > 100
