"""The engine benchmark script runs, and its replay reproduces the generator's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.bench import engine as bench
from schemas.market import AdvanceTime, OrderExpired


def test_bench_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--commands", "3000", "--repeat", "1", "--resting", "100"]) == 0
    out = capsys.readouterr().out
    assert "throughput, best of 1" in out and "commands/s" in out
    assert "new book, pure Python" in out and "old book" in out
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


def test_deep_workload_matches_the_reference() -> None:
    """The deep-book stream (every command kind, an expiry burst, mass cancels)
    gives exactly the reference's events."""
    from ops.bench.engine_deep import generate_deep
    from tests.market.reference import ReferenceBook

    stream = generate_deep(3_000, seed=5)
    kinds = {stream.kind_of(c) for c in stream.cmds}
    assert {"cancel", "amend", "market", "new gtc", "new gtd", "expiry burst"} <= kinds
    assert "expiry (clock)" in kinds  # GTD orders expire on the clock, not in a cancel
    assert stream.burst > 0
    engine = bench.make_engine()
    ref = ReferenceBook(engine.book(bench.SYMBOL).instrument)
    for cmd in stream.cmds:
        events = engine.process(cmd)
        assert events == ref.process(cmd)
        if not isinstance(cmd, AdvanceTime):  # expiry is the clock's work, not a cancel's
            assert not any(isinstance(e, OrderExpired) for e in events), cmd
    assert engine.state_hash() == stream.state_hash


def test_baseline_is_the_old_book_and_agrees_with_the_new() -> None:
    """The bench's baseline really is the book before this change, and on both
    workloads it emits the same events as the new one, so the side-by-side
    figures compare the same work."""
    from ops.bench.baseline import BASELINE_COMMIT, load
    from ops.bench.engine_deep import generate_deep

    old, why = load(BASELINE_COMMIT)
    assert old is not None, why
    from market.book import OrderBook
    from market.engine import MatchingEngine

    # the old book had top_of_book (removed by this change); the new one has not
    assert hasattr(old.book_cls, "top_of_book") and not hasattr(OrderBook, "top_of_book")
    shallow, _, _ = bench.generate(2_000, seed=3, resting=200)
    for cmds in (shallow, generate_deep(2_000, seed=4).cmds):
        old_engine, new_engine = old.make([bench.bench_instrument()]), bench.make_engine()
        for cmd in cmds:
            assert old_engine.process(cmd) == new_engine.process(cmd)
        assert old_engine.state_hash() == new_engine.state_hash()
        # the snapshot format is unchanged: each restores the other's, byte for byte
        old_bytes = old_engine.snapshot()  # type: ignore[attr-defined]
        assert new_engine.snapshot() == old_bytes
        assert MatchingEngine.restore(old_bytes).snapshot() == old_bytes
        assert old.engine_cls.restore(new_engine.snapshot()).snapshot() == old_bytes


def test_instruction_count_replay_checks_the_state(tmp_path: Path) -> None:
    """The replay `ops.bench.engine_instr` runs under valgrind reproduces the
    generator's state on both engines, and refuses a stream whose hash differs
    (so a count is never of a replay that went wrong)."""
    import pickle

    from ops.bench import engine_instr

    cmds, expected_hash, _ = bench.generate(1_000, seed=5, resting=100)
    good, bad = tmp_path / "good.pickle", tmp_path / "bad.pickle"
    good.write_bytes(pickle.dumps((cmds, expected_hash, len(cmds))))
    bad.write_bytes(pickle.dumps((cmds, b"\0" * 32, len(cmds))))
    short = tmp_path / "short.pickle"  # the whole stream's hash, half of it replayed
    short.write_bytes(pickle.dumps((cmds, expected_hash, len(cmds) // 2)))
    for engine in ("pure", "old"):
        assert engine_instr.main(["--replay", str(good), engine, "2"]) == 0
        assert engine_instr.main(["--replay", str(bad), engine, "1"]) == 1
        assert engine_instr.main(["--replay", str(short), engine, "1"]) == 1


def test_cancel_count_stream_cancels_resting_orders_at_the_size() -> None:
    """`engine_instr --scenario cancel` counts cancels that each take a resting
    order out of a book near the size named: the prefix reaches it, and every
    cancel after it succeeds."""
    from ops.bench import engine_instr
    from schemas.market import CancelOrder, OrderCancelled, OrderRejected

    prefix, whole, n = engine_instr._cancel_stream(300, 5)
    assert whole[: len(prefix)] == prefix and n == 60 and len(whole) == len(prefix) + n
    engine = bench.make_engine()
    for cmd in prefix:
        engine.process(cmd)
    assert len(engine.book(bench.SYMBOL)) >= 300
    cancelled = 0
    for cmd in whole[len(prefix) :]:
        assert isinstance(cmd, CancelOrder)
        events = engine.process(cmd)
        assert not any(isinstance(e, OrderRejected) for e in events)
        cancelled += sum(isinstance(e, OrderCancelled) for e in events)
    assert cancelled == n
