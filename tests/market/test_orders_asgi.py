"""The lean order path's dispatch: which requests it takes, and the body it gives back to
Litestar when it does not answer itself (the answers themselves are the trading suite's:
tests/market/test_trading_e2e.py and tests/ops/test_bad_input.py go through it)."""

from __future__ import annotations

from typing import Any

import pytest

from market.orders_asgi import Route, _replaying, route_of


def _scope(method: str, path: str, query: bytes = b"") -> Any:
    return {"type": "http", "method": method, "path": path, "query_string": query}


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1/orders", Route.PLACE),
        ("POST", "/v1/orders/batch", Route.BATCH),
        ("DELETE", "/v1/orders/42", Route.CANCEL),
        ("DELETE", "/v1/orders/0", Route.CANCEL),
    ],
)
def test_the_hot_routes_are_taken(method: str, path: str, route: Route) -> None:
    assert route_of(_scope(method, path)) is route


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/orders", b""),  # reads are Litestar's
        ("POST", "/v1/orders/", b""),
        ("POST", "/v1/orders", b"x=1"),  # a query: strict_query says why it is refused
        ("DELETE", "/v1/orders/-1", b""),
        ("DELETE", "/v1/orders/\u0663", b""),  # a non-ASCII digit
        ("DELETE", "/v1/orders/1234567890123456789", b""),  # 19 digits: maybe beyond 64 bits
        ("DELETE", "/v1/orders/by-client-id/abc", b""),
        ("PATCH", "/v1/orders/42", b""),
    ],
)
def test_everything_else_is_litestars(method: str, path: str, query: bytes) -> None:
    assert route_of(_scope(method, path, query)) is None


async def test_a_refused_body_is_given_back_whole_then_the_rest() -> None:
    later = {"type": "http.disconnect"}

    async def receive() -> Any:
        return later

    first = {"type": "http.request", "body": b"ab", "more_body": True}
    second = {"type": "http.request", "body": b"c", "more_body": False}
    replay = _replaying([first, second], receive)  # type: ignore[list-item]
    assert [await replay(), await replay(), await replay()] == [first, second, later]
