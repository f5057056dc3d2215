"""The engine as it was before the constant-time book, loaded from git for a
side-by-side benchmark (nothing old ships in the package).

`load(commit)` reads `market/book.py` and `market/engine.py` at `commit` with
`git show` and executes them as fresh modules outside the package namespace;
the old engine's `OrderBook` global is pointed at the old book. Returns None
(with the reason) when there is no git checkout to read from, e.g. an
installed package.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import cast

from ops.bench.engine_runs import Engine
from schemas.market import Instrument

BASELINE_COMMIT = "7cbf26d"  # main before the constant-time book


class Baseline:
    """The old `MatchingEngine` and `OrderBook` classes and where they came from."""

    def __init__(self, commit: str, engine_cls: type, book_cls: type) -> None:
        self.commit = commit
        self.engine_cls = engine_cls
        self.book_cls = book_cls

    def make(self, instruments: list[Instrument]) -> Engine:
        return cast(Engine, self.engine_cls(instruments))


def _source(commit: str, path: str) -> str:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        ["git", "-C", str(root), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def _module(name: str, source: str, path: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module  # dataclass/typing machinery looks modules up by name
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def load(commit: str = BASELINE_COMMIT) -> tuple[Baseline | None, str]:
    """The old engine, or None and why not."""
    try:
        book_src = _source(commit, "market/book.py")
        engine_src = _source(commit, "market/engine.py")
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot read commit {commit} with git ({exc})"
    book = _module(f"_baseline_book_{commit}", book_src, f"{commit}:market/book.py")
    engine = _module(f"_baseline_engine_{commit}", engine_src, f"{commit}:market/engine.py")
    engine.OrderBook = book.OrderBook  # type: ignore[attr-defined]
    return Baseline(commit, engine.MatchingEngine, book.OrderBook), ""
