"""The app factory and the error mapping, in process, on a real database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from litestar import Router, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.testing import AsyncTestClient

from market.auth import PUBLIC
from market.schema import load_migrations
from ops.app import create_app
from ops.config import Settings
from ops.database import open_pool
from schemas.errors import DomainError, ErrorKind
from tests.support.pg import PgServer


class OutOfFunds(DomainError):
    code = "insufficient_funds"
    kind = ErrorKind.REJECTED


class Order(msgspec.Struct):
    instrument: str
    quantity: int


@get("/test/domain/{kind:str}")
async def raise_domain(kind: FromPath[str]) -> None:
    error = DomainError(f"a {kind} error", code=f"test_{kind}")
    error.kind = ErrorKind(kind)
    raise error


@get("/test/funds")
async def raise_funds() -> None:
    raise OutOfFunds("available 5 < required 7")


@get("/test/boom")
async def boom() -> None:
    raise RuntimeError("secret internal detail: password=hunter2")


@get("/test/left-mid-query")
async def left_mid_query() -> None:
    # What asyncpg raises releasing a pooled connection a killed PostgreSQL left mid-query
    # (seen by the chaos campaign, ops/bench/chaos.py, as a 500 on POST /v1/deposits).
    raise asyncpg.exceptions._base.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"
    )


@post("/test/orders")
async def place(data: JSONBody[Order]) -> Order:
    return data


# Public (no signed request needed): these tests are about the app, not authentication.
TEST_ROUTES = [
    Router("/", route_handlers=[raise_domain, raise_funds, boom, left_mid_query, place], opt=PUBLIC)
]


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(Settings(database_url=db_url), route_handlers=TEST_ROUTES)
    async with AsyncTestClient(app) as client:
        yield client


async def test_health_reports_schema_version(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "reachable",
        "schema_version": len(load_migrations()),
    }


async def test_ready_is_503_without_a_running_exchange(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    """This app runs no sequencer (no writer): alive and healthy, but not ready."""
    assert (await client.get("/health")).status_code == 200
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["code"] == "exchange_not_running"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"].startswith("req_")


async def test_currencies_and_the_scale_set_up(db_url: str) -> None:
    for scale, expected in ((None, 2), (4, 4)):
        app = create_app(Settings(database_url=db_url, currency_scale=scale), route_handlers=[])
        async with AsyncTestClient(app) as client:
            response = await client.get("/v1/currencies")
        assert response.json() == [{"code": "USD", "scale": expected, "symbol": "$"}]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("invalid", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("conflict", 409),
        ("rejected", 422),
        ("rate_limited", 429),
        ("unavailable", 503),
    ],
)
async def test_domain_error_kinds_map_to_statuses(
    client: AsyncTestClient,  # type: ignore[type-arg]
    kind: str,
    status: int,
) -> None:
    response = await client.get(f"/test/domain/{kind}")
    assert response.status_code == status
    assert response.json() == {"code": f"test_{kind}", "message": f"a {kind} error"}


async def test_domain_subclass_keeps_its_code(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/test/funds")
    assert response.status_code == 422
    assert response.json() == {"code": "insufficient_funds", "message": "available 5 < required 7"}


async def test_unexpected_exception_is_500_without_details(
    client: AsyncTestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="ops.errors"):
        response = await client.get("/test/boom")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_a_connection_left_mid_query_by_a_lost_database_is_503_not_500(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    response = await client.get("/test/left-mid-query")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert response.headers["retry-after"]


async def test_unknown_route_is_404_json(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == "not_found"
    assert "/no/such/thing" in response.json()["message"]


async def test_wrong_method_is_405(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.delete("/health")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_invalid_body_says_which_field(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/test/orders", json={"instrument": "x", "quantity": "many"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request"
    assert "quantity" in body["message"], body

    response = await client.post("/test/orders", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"

    response = await client.post("/test/orders", json={"instrument": "x"})
    assert response.status_code == 400
    assert "quantity" in response.json()["message"]


@pytest.mark.parametrize("headers", [{"content-type": "application/json"}, {}])
async def test_a_body_route_sent_no_body_says_it_needs_one(
    client: AsyncTestClient,  # type: ignore[type-arg]
    headers: dict[str, str],
) -> None:
    response = await client.post("/test/orders", content=b"", headers=headers)
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_request",
        "message": "this route needs a JSON body, and the request has none",
    }  # not Litestar's KeyError, "'data'"


async def test_valid_body_round_trips(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/test/orders", json={"instrument": "x", "quantity": 3000})
    assert response.status_code == 201
    assert response.json() == {"instrument": "x", "quantity": 3000}


async def test_oversized_body_is_413(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/test/orders",
        content=b'{"instrument": "' + b"x" * (2 << 20) + b'", "quantity": 1}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_openapi_schema_is_served(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "tokex"
    assert "/health" in schema["paths"]


async def test_health_is_503_when_database_goes_away(pg: PgServer) -> None:
    name = await pg.create_database()
    url = pg.url(name)
    app = create_app(Settings(database_url=url), route_handlers=[])
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health")).status_code == 200
        await pg.drop_database(name)  # terminates the pool's connections, then the database
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json() == {
            "code": "database_unreachable",
            "message": "database unreachable",
        }


async def test_pool_factory_is_used_and_pool_closed(db_url: str) -> None:
    pools: list[asyncpg.Pool] = []

    async def factory(settings: Settings) -> asyncpg.Pool:
        pool = await open_pool(db_url, min_size=1, max_size=2)
        pools.append(pool)
        return pool

    app = create_app(Settings(), pool_factory=factory, route_handlers=[])
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health")).status_code == 200
        assert app.state.pool is pools[0]
    assert pools[0].is_closing()


async def test_health_follows_a_postgres_restart(pg: PgServer, db_url: str) -> None:
    """Down: 503. Back up: 200 again on the same pool (broken connections are replaced)."""
    app = create_app(Settings(database_url=db_url), route_handlers=[])
    async with AsyncTestClient(app) as client:
        assert (await client.get("/health")).status_code == 200
        pg.stop(mode="immediate")  # a crash of PostgreSQL: WAL replay on start
        try:
            response = await client.get("/health")
            assert response.status_code == 503
            assert response.json()["code"] == "database_unreachable"
        finally:
            pg.start()
        statuses = [(await client.get("/health")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200], statuses


async def test_bad_query_parameter_names_it(db_url: str) -> None:
    @get("/test/page", opt=PUBLIC)
    async def page(limit: FromQuery[int]) -> None:
        return None

    app = create_app(Settings(database_url=db_url), route_handlers=[page])
    async with AsyncTestClient(app) as client:
        response = await client.get("/test/page?limit=lots")
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_request",
        "message": "Expected `int`, got `str` (query limit)",
    }
