"""Which `OrderBook` class the engine builds: the compiled one when it is built
and current, else the pure one (the default: a fresh machine needs no compiler).

The compiled build is optional and explicit: `python -m ops.build_engine` runs
mypyc over the book modules (`SOURCES`, with `market.book_order_native` as the
resting order) and writes the extension modules to `market/_native/` (git-ignored),
stamped with the SHA-256 of the sources it was built from (and of `schemas.market`,
whose field order it relies on). At import the stamp is
compared with the sources as they are now: a build that does not match (a source
edited since, another mypyc) is ignored, never run. `TOKEX_ENGINE=pure` forces the
pure modules; `TOKEX_ENGINE=compiled` makes a missing or stale build an error
(`CompiledBookUnavailable`) instead of a silent fallback (CI uses it).

This module reads the sources once at import, so it is not part of the pure core
(`market.book` and its storage are); the books it returns are.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Final, cast

import schemas.market
from market.book import OrderBook

__all__ = [
    "BOOK",
    "BUILD",
    "SOURCES",
    "CompiledBookUnavailable",
    "compiled_book",
    "source_hash",
]

# module name in `market._native` -> the source file it is compiled from (in `market/`)
SOURCES: Final = {
    "book_order": "book_order_native.py",
    "level": "level.py",
    "book_state": "book_state.py",
    "book": "book.py",
}
NATIVE_PACKAGE: Final = "market._native"
_HERE: Final = Path(__file__).resolve().parent


class CompiledBookUnavailable(RuntimeError):
    """TOKEX_ENGINE=compiled, and there is no current compiled build."""


def source_hash(mypyc_version: str) -> str:
    """What a build is stamped with: the sources' bytes, the commands' and events'
    definitions (the compiled book reads a command's fields by position) and the
    compiler's version."""
    digest = hashlib.sha256(mypyc_version.encode())
    files = [(module, _HERE / filename) for module, filename in SOURCES.items()]
    files.append(("schemas.market", Path(schemas.market.__file__ or "")))
    for name, path in files:
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def compiled_book() -> tuple[type[OrderBook] | None, str]:
    """The compiled `OrderBook` class if built and current, else None and why not."""
    try:
        native = importlib.import_module(f"{NATIVE_PACKAGE}.book")
    except ImportError as exc:
        return None, f"not built ({exc}; build it with `python -m ops.build_engine`)"
    stamp = getattr(native, "BUILD_STAMP", None)
    if not isinstance(stamp, tuple) or stamp[1] != source_hash(stamp[0]):
        return None, "out of date (the sources changed since; `python -m ops.build_engine`)"
    return cast(type[OrderBook], native.OrderBook), "compiled"


def _select() -> tuple[type[OrderBook], str]:
    wanted = os.environ.get("TOKEX_ENGINE", "")
    if wanted == "pure":
        return OrderBook, "pure (TOKEX_ENGINE=pure)"
    book, why = compiled_book()
    if book is not None:
        return book, why
    if wanted == "compiled":
        raise CompiledBookUnavailable(f"TOKEX_ENGINE=compiled, but the compiled book is {why}")
    return OrderBook, f"pure (the compiled book is {why})"


BOOK, BUILD = _select()
