"""Cursor pagination of the list routes: `limit`, `cursor`, and a `Page` with
`next_cursor` (older records) and `prev_cursor` (newer ones).

Every list is in one stable order, newest first, by a key that never changes for a
record and is unique (an order's id; a fill's `(time_ms, instrument, seq)`; ...). A
cursor is that key of the record a page ended (or began) at, with the direction to go
from it, so a page is a keyset query (`WHERE key < cursor ORDER BY key DESC`): records
that arrive meanwhile are newer than every cursor already handed out, so walking
`next_cursor` to the end sees every record that existed when the walk began exactly
once, in order, and walking `prev_cursor` back up sees the newer ones too.

- `next_cursor` is null when nothing older is left; `prev_cursor` is null only on a
  first page (no cursor) that is empty. A page reached by `prev_cursor` that comes back
  empty has caught up: its `prev_cursor` is the same cursor, to poll with later. An
  empty page's cursors include the record it was asked from (an inclusive cursor), so
  turning back at either end skips nothing.
- A cursor is opaque to clients (URL-safe base64 of a small JSON array: the tag of the
  list that handed it out, the direction, the key). A malformed one, or one another list
  handed out (even with a key of the same shape), is 400 `invalid_cursor`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

import msgspec

from schemas.errors import DomainError, ErrorKind

__all__ = [
    "FIRST_PAGE",
    "Direction",
    "InvalidCursor",
    "Keyset",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "page_of",
]

T = TypeVar("T")
R = TypeVar("R")
Key = tuple[int | str, ...]

MAX_CURSOR_BYTES = 512


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    kind = ErrorKind.INVALID


class Direction(StrEnum):
    NEXT = "n"  # older than the key
    PREV = "p"  # newer than the key


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a list, newest first."""

    items: list[T]
    next_cursor: str | None = None  # older records; null: none left
    prev_cursor: str | None = None  # newer records (may be empty until some arrive)


@dataclass(frozen=True, slots=True)
class Keyset:
    """Where a page starts: after `key` (exclusive) going `direction`; no key: the newest.
    `tag` names the list (`decode_cursor`'s), whose cursors `page_of` hands out."""

    direction: Direction = Direction.NEXT
    key: Key | None = None
    inclusive: bool = False  # the record at `key` itself too
    tag: str = ""

    def sql(self, columns: str, first_param: int) -> tuple[str, str, list[int | str]]:
        """(condition, ORDER BY, parameters) for a query on `columns` (e.g.
        "(time_ms, instrument, seq)"), numbering parameters from `first_param`."""
        descending = self.direction is Direction.NEXT
        order = ", ".join(f"{c} {'DESC' if descending else 'ASC'}" for c in _names(columns))
        if self.key is None:
            return "TRUE", order, []
        marks = ", ".join(f"${first_param + i}" for i in range(len(self.key)))
        op = ("<" if descending else ">") + ("=" if self.inclusive else "")
        return f"{columns} {op} ({marks})", order, list(self.key)


#: The first page of a list: its newest records.
FIRST_PAGE = Keyset()


def _names(columns: str) -> list[str]:
    return [c.strip() for c in columns.strip("()").split(",")]


def encode_cursor(tag: str, direction: Direction, key: Key, *, inclusive: bool = False) -> str:
    """The cursor of list `tag` at `key`, going `direction`."""
    mark = direction.value.upper() if inclusive else direction.value
    raw = msgspec.json.encode([tag, mark, *key])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str | None, tag: str, arity: int, kinds: Sequence[type]) -> Keyset:
    """The keyset a client's cursor names, checked to be one list `tag` handed out, with
    that list's key shape."""
    if cursor is None:
        return Keyset(tag=tag)
    if len(cursor) > MAX_CURSOR_BYTES:
        raise InvalidCursor("the cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursor("the cursor is not one this list handed out") from None
    ok = (
        bool(tag) and isinstance(value, list) and len(value) == arity + 2
        and value[0] == tag and value[1] in ("n", "p", "N", "P")
    )  # fmt: skip
    if ok:
        key = value[2:]
        ok = all(type(k) is kind for k, kind in zip(key, kinds, strict=True))
    if not ok:
        raise InvalidCursor("the cursor is not one this list handed out")
    mark: str = value[1]
    return Keyset(Direction(mark.lower()), tuple(key), inclusive=mark.isupper(), tag=tag)


def page_of(
    rows: Sequence[R], limit: int, keyset: Keyset, key: Callable[[R], Key],
    view: Callable[[R], T],
) -> Page[T]:  # fmt: skip
    """The page from `rows` fetched with `keyset.sql` and `LIMIT limit + 1`; its cursors
    are of `keyset.tag`'s list."""
    tag = keyset.tag
    more = len(rows) > limit
    taken = list(rows[:limit])
    if keyset.direction is Direction.PREV:
        taken.reverse()
    items = [view(r) for r in taken]
    if not taken:
        if keyset.key is None:
            return Page(items=items)
        if keyset.direction is Direction.NEXT:  # the end: turn back from the cursor's record
            back = encode_cursor(tag, Direction.PREV, keyset.key, inclusive=True)
            return Page(items=items, prev_cursor=back)
        forward = encode_cursor(tag, Direction.NEXT, keyset.key, inclusive=True)
        again = encode_cursor(tag, Direction.PREV, keyset.key, inclusive=keyset.inclusive)
        return Page(items=items, next_cursor=forward, prev_cursor=again)
    has_older = more if keyset.direction is Direction.NEXT else True
    return Page(
        items=items,
        next_cursor=encode_cursor(tag, Direction.NEXT, key(taken[-1])) if has_older else None,
        prev_cursor=encode_cursor(tag, Direction.PREV, key(taken[0])),
    )
