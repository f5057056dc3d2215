"""The app's answers at the edges of HTTP, in process on a real database: OPTIONS, a body
route sent no body, a client that hangs up before its body is in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from market.metrics import REGISTRY
from market.signing import now_ms
from ops.app import create_app
from ops.config import Settings
from tests.support.api_world import module_db_fixture  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
async def client(module_db: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(create_app(Settings(database_url=module_db))) as client:
        yield client


@pytest.mark.parametrize(
    ("target", "allow"),
    [
        ("/health?x=1", "GET, OPTIONS"),
        ("/v1/book?instrument=a", "GET, OPTIONS"),
        ("/openai/v1/models?x=1", "GET, OPTIONS"),
        ("/v1/orders", "GET, OPTIONS, POST"),  # two routers' handlers on one path
        ("/v1/orders/12?x=1&x=2", "DELETE, GET, OPTIONS, PATCH"),
        ("/openai/v1/chat/completions", "OPTIONS, POST"),
    ],
)
async def test_options_answers_204_with_the_routes_methods_unsigned(
    client: AsyncTestClient,  # type: ignore[type-arg]
    target: str,
    allow: str,
) -> None:
    """OPTIONS carries no data: no signature needed (public routes or not), any query
    string ignored, and `Allow` names every method the path takes."""
    response = await client.options(target)
    assert response.status_code == 204, response.text
    assert response.headers["allow"] == allow
    assert response.content == b""


async def test_options_on_no_route_is_still_a_404(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    response = await client.options("/v1/nothing-here?x=1")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def _requests(method: str, route: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "tokex_http_requests_total", {"method": method, "route": route, "status": str(status)}
    )
    return value or 0.0


@pytest.mark.parametrize("path", ["/v1/orders", "/v1/deposits"])  # the lean path, Litestar's
async def test_a_client_that_hangs_up_before_its_body_is_in_is_no_server_error(
    client: AsyncTestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    """It declared a longer body than it sent and went away: nobody is answered, a line at
    info says so, and the access line and the metrics count a 499, not a 500."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", b"100"),
                    # signature headers the headers-only check passes: the body is read
                    (b"x-tokex-key", b"key_0123456789abcdef"),
                    (b"x-tokex-timestamp", str(now_ms()).encode()),
                    (b"x-tokex-signature", b"A" * 86)],
    }  # fmt: skip
    pending = [{"type": "http.request", "body": b'{"client_order_id": ', "more_body": True}]

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    errors_before = _requests("POST", path, 500)
    with caplog.at_level(logging.INFO):
        await client.app(scope, receive, send)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("went away" in r.getMessage() for r in caplog.records)
    (access,) = [r for r in caplog.records if r.name == "tokex.access"]
    assert access.status == 499  # type: ignore[attr-defined]
    assert _requests("POST", path, 500) == errors_before
    assert _requests("POST", path, 499) >= 1
