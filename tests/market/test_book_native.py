"""The optional compiled book (`python -m ops.build_engine`) against the pure one.

Skipped where it is not built; CI builds it and runs these with
`TOKEX_ENGINE=compiled`, where a missing or stale build fails at import
(`market.book_select`). The pure book is tested by every other book test
whether or not the compiled one exists (they import `market.book` directly).
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import market.book_select as book_select
from market.book import OrderBook
from market.engine import MatchingEngine
from ops.bench import engine as bench
from ops.bench.engine_deep import generate_deep
from tests.market.test_book_deep import deep_levels_match_the_reference
from tests.market.test_book_properties import BookMachine

COMPILED, WHY = book_select.compiled_book()

pytestmark = pytest.mark.skipif(COMPILED is None, reason=f"no compiled book: {WHY}")


def test_the_engine_builds_the_compiled_book_when_it_is_built() -> None:
    assert COMPILED is not None and COMPILED is not OrderBook
    if os.environ.get("TOKEX_ENGINE") != "pure":
        engine = MatchingEngine([bench.bench_instrument()])
        assert type(engine.book(bench.SYMBOL)) is COMPILED


def test_a_build_from_other_sources_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source edited after the build: its stamp no longer matches, so the pure
    book is used (and with TOKEX_ENGINE=compiled the import fails)."""
    monkeypatch.setattr(book_select, "source_hash", lambda version: "edited since")
    book, why = book_select.compiled_book()
    assert book is None and "out of date" in why
    monkeypatch.setenv("TOKEX_ENGINE", "compiled")
    with pytest.raises(book_select.CompiledBookUnavailable):
        book_select._select()
    monkeypatch.setenv("TOKEX_ENGINE", "")
    assert book_select._select()[0] is OrderBook


@pytest.mark.parametrize("stream", ["shallow", "deep"])
def test_the_bench_streams_give_the_pure_books_events_and_snapshots(stream: str) -> None:
    """Every command's events equal, the snapshots byte-equal, and each book
    restores the other's snapshot to the same state."""
    assert COMPILED is not None
    if stream == "shallow":
        cmds, expected, _ = bench.generate(4_000, seed=13, resting=300)
    else:
        deep = generate_deep(4_000, seed=13)
        cmds, expected = deep.cmds, deep.state_hash
    inst = bench.bench_instrument()
    pure, compiled = OrderBook(inst), COMPILED(inst)
    for i, cmd in enumerate(cmds):
        assert compiled.process(cmd) == pure.process(cmd), cmd
        if i % 997 == 0:
            assert compiled.snapshot() == pure.snapshot()
            assert compiled.open_orders() == pure.open_orders()
            assert compiled.depth(50) == pure.depth(50)
    data = pure.snapshot()
    assert compiled.snapshot() == data
    assert COMPILED.restore(data).snapshot() == data == OrderBook.restore(data).snapshot()
    engine = MatchingEngine()
    engine._books[bench.SYMBOL] = compiled
    assert engine.state_hash() == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_level=st.integers(20, 160),
    steps=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 10**6)), max_size=250),
    restore_at=st.integers(0, 250),
)
def test_deep_levels_of_the_compiled_book_match_the_reference(
    per_level: int, steps: list[tuple[int, int]], restore_at: int
) -> None:
    assert COMPILED is not None
    deep_levels_match_the_reference(COMPILED, per_level, steps, restore_at)


if COMPILED is not None:

    class CompiledBookMachine(BookMachine):
        """The stateful property test of `test_book_properties` on the compiled book."""

        book_cls = COMPILED

    CompiledBookMachine.TestCase.settings = settings(
        max_examples=100,
        stateful_step_count=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    TestCompiledBookAgainstReference = CompiledBookMachine.TestCase
