"""The app's answers at the edges of HTTP, in process on a real database: OPTIONS, a body
route sent no body, a client that hangs up before its body is in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

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
