"""TokexClient in process (an AsyncTestClient as its transport): it signs exactly the target
and body it sends, including awkward queries; errors become TokexApiError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.testing import AsyncTestClient

from market.accounts import create_account
from market.auth import PUBLIC, Principal, requires_role
from market.client import TokexApiError, TokexClient
from ops.app import create_app, default_route_handlers
from ops.config import Settings
from schemas.accounts import Role


class Echo(msgspec.Struct):
    account_id: str
    query: dict[str, Any]
    body: Any = None


@get("/test/echo", guards=[requires_role(Role.BUYER, Role.OPERATOR)])
async def echo_get(
    principal: NamedDependency[Principal], a: FromQuery[str], b: FromQuery[list[int]]
) -> Echo:
    return Echo(account_id=principal.account_id, query={"a": a, "b": b})


@post("/test/echo/{thing:str}", status_code=200)
async def echo_post(
    principal: NamedDependency[Principal], thing: FromPath[str], data: JSONBody[dict[str, Any]]
) -> Echo:
    return Echo(account_id=principal.account_id, query={"thing": thing}, body=data)


@get("/test/open", opt=PUBLIC)
async def open_route() -> dict[str, str]:
    return {"open": "yes"}


@get("/test/open-but-asks")
async def open_but_asks(principal: NamedDependency[Principal]) -> dict[str, str]:
    return {"caller": principal.account_id}


ROUTES = [
    *default_route_handlers(),
    echo_get,
    echo_post,
    open_route,
    Router("/public", route_handlers=[open_but_asks], opt=PUBLIC),
]


@pytest.fixture
async def http(db_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(Settings(database_url=db_url), route_handlers=ROUTES)
    async with AsyncTestClient(app, base_url="http://tokex.test") as client:
        yield client


@pytest.fixture
async def buyer(db_url: str, http: AsyncTestClient) -> AsyncIterator[TokexClient]:  # type: ignore[type-arg]
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.BUYER, "acme", None)
    finally:
        await conn.close()
    assert key is not None
    async with TokexClient("http://tokex.test", created.key_id, key, http=http) as client:
        yield client


async def test_query_and_path_are_signed_as_sent(buyer: TokexClient) -> None:
    me = await buyer.me()
    answer = await buyer.request("GET", "/test/echo", params={"a": "sp ace/ü&=?#", "b": [3, 1, 2]})
    assert answer == {
        "account_id": me.account_id,
        "query": {"a": "sp ace/ü&=?#", "b": [3, 1, 2]},
        "body": None,
    }
    answer = await buyer.request("POST", "/test/echo/x%20y", json={"n": [1, "ü"]})
    assert answer == {
        "account_id": me.account_id,
        "query": {"thing": "x y"},
        "body": {"n": [1, "ü"]},
    }


async def test_public_routes_and_principal_outside_auth(buyer: TokexClient, http: Any) -> None:
    anon = TokexClient("http://tokex.test", http=http)
    assert await anon.request("GET", "/test/open") == {"open": "yes"}
    with pytest.raises(TokexApiError) as info:
        await anon.request("GET", "/test/echo", params={"a": "x", "b": 1})
    assert (info.value.status, info.value.code) == (401, "missing_signature")
    # A public route that asks for the principal anyway: 401, not a crash.
    with pytest.raises(TokexApiError) as info:
        await buyer.request("GET", "/public/test/open-but-asks")
    assert (info.value.status, info.value.code) == (401, "missing_signature")


async def test_errors_and_constructor(buyer: TokexClient, http: Any) -> None:
    with pytest.raises(TokexApiError) as info:
        await buyer.request("GET", "/nowhere")
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert info.value.retry_after is None
    with pytest.raises(ValueError):
        TokexClient("http://x", key_id="key_0000000000000000")
    with pytest.raises(ValueError):
        buyer.as_account(await_created_without_key())


def await_created_without_key() -> Any:
    from schemas.accounts import AccountCreated

    return AccountCreated(account_id="acc_0", key_id="key_0", role=Role.BUYER, name="x")
