"""Cursors name the list that handed them out: one list's cursor is refused by another
with `invalid_cursor`, even when the two keys have the same shape."""

from __future__ import annotations

import base64

import pytest

from market.pages import (
    FIRST_PAGE,
    Direction,
    InvalidCursor,
    Keyset,
    decode_cursor,
    encode_cursor,
    page_of,
)


def _raw(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def test_a_cursor_decodes_on_its_own_list() -> None:
    cursor = encode_cursor("orders", Direction.NEXT, (42,))
    assert decode_cursor(cursor, "orders", 1, (int,)) == Keyset(Direction.NEXT, (42,), tag="orders")
    back = encode_cursor("fills", Direction.PREV, (7, "x", 3), inclusive=True)
    assert decode_cursor(back, "fills", 3, (int, str, int)) == Keyset(
        Direction.PREV, (7, "x", 3), inclusive=True, tag="fills"
    )


def test_no_cursor_is_the_first_page_of_that_list() -> None:
    first = decode_cursor(None, "trades", 1, (int,))
    assert first == Keyset(tag="trades") and first.key is None
    assert first.sql("(seq)", 1) == FIRST_PAGE.sql("(seq)", 1)


@pytest.mark.parametrize(
    ("made_by", "used_by"),
    [("orders", "trades"), ("trades", "receipts"), ("delivery-reports", "disputes")],
)
def test_a_cursor_from_another_list_of_the_same_shape_is_refused(
    made_by: str, used_by: str
) -> None:
    arity, kinds = (3, (int, str, str)) if used_by == "disputes" else (1, (int,))
    key = (5, "a", "b") if arity == 3 else (5,)
    cursor = encode_cursor(made_by, Direction.NEXT, key)
    assert decode_cursor(cursor, made_by, arity, kinds).key == key
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, used_by, arity, kinds)


@pytest.mark.parametrize(
    "cursor",
    [
        _raw(b'["n",5]'),  # the old format: no tag
        _raw(b'[null,"n",5]'),
        _raw(b'["","n",5]'),
        _raw(b'["nope","n",5]'),
        _raw(b'["orders","x",5]'),
        _raw(b'["orders","n","5"]'),
        _raw(b'["orders","n"]'),
        _raw(b'{"orders":5}'),
    ],
)
def test_untagged_unknown_or_malformed_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, "orders", 1, (int,))


def test_the_cursors_of_a_page_are_its_lists() -> None:
    keyset = decode_cursor(None, "orders", 1, (int,))
    page = page_of([3, 2, 1], 2, keyset, lambda r: (r,), str)
    assert page.items == ["3", "2"] and page.next_cursor and page.prev_cursor
    older = decode_cursor(page.next_cursor, "orders", 1, (int,))
    assert older == Keyset(Direction.NEXT, (2,), tag="orders")
    assert decode_cursor(page.prev_cursor, "orders", 1, (int,)).key == (3,)
    for cursor in (page.next_cursor, page.prev_cursor):
        with pytest.raises(InvalidCursor):
            decode_cursor(cursor, "trades", 1, (int,))
    # An empty page's cursors (turning back from either end) carry the list too.
    end = page_of([], 2, older, lambda r: (r,), str)
    assert end.prev_cursor is not None
    assert decode_cursor(end.prev_cursor, "orders", 1, (int,)).inclusive
    again = decode_cursor(end.prev_cursor, "orders", 1, (int,))
    caught_up = page_of([], 2, again, lambda r: (r,), str)
    for cursor in (caught_up.next_cursor, caught_up.prev_cursor):
        assert cursor is not None
        decode_cursor(cursor, "orders", 1, (int,))
        with pytest.raises(InvalidCursor):
            decode_cursor(cursor, "fills", 1, (int,))
