"""The app factory: one Litestar app that later wires market and ledger together.

Extension point: routes. `default_route_handlers()` is the one list of every
route of the exchange (market and ledger routers are added there); a test may
pass its own `route_handlers` instead. `/health`, `/ready` (`ops.ready`), `/metrics`
(`ops.metrics`) and the OpenAPI schema at `/schema` are always there; every request
goes through `ops.observe` (request id, access log line, request metrics). Start-up
work that needs the database (the sequencer, recovery) goes in `lifespans`, which run
after the pool is open and can reach it as `app.state.pool`.

Handlers get the pool and the settings as dependencies named `pool` and
`settings` (declare them as `NamedDependency[asyncpg.Pool]`), and raise
`DomainError`s; `ops.errors` turns those into responses.

Authentication (`market.auth`): every HTTP route needs a signed request unless
its handler, controller or router has `opt=PUBLIC` (or its path is under
/health, /schema, /v1/ledger). Handlers get the caller as `principal: Principal`
and restrict roles with `guards=[requires_role(...)]`. The `Authenticator` is
`app.state.authenticator` (for the websocket stream's signed subscribe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.types import ControllerRouterHandler

from ledger.api import ledger_router
from ledger.migrate import schema_version
from market.accounts_api import accounts_router
from market.api import trading_router
from market.auth import Authenticator, AuthMiddleware, RateLimiter, provide_principal
from market.clearing.reports_api import reports_router
from market.feed import MarketData
from market.gateway.endpoints_api import endpoints_router
from market.gateway.keys_api import keys_router
from market.gateway.openai_api import openai_router
from market.gateway.openai_asgi import OpenAICalls, serve_call
from market.gateway.receipts_api import receipts_router
from market.key_revocations import RevocationListener
from market.orders_asgi import OrderCalls
from market.sequencer.remote import RemoteSequencer
from market.stream import market_stream
from market.stream_cancels import OwedCancels
from market.vouchers_api import vouchers_router
from ops.audit_api import audit_router
from ops.config import Settings
from ops.currencies import currencies
from ops.dashboard.routes import dashboard_routes
from ops.database import CONNECTION_ERRORS, DatabaseUnreachable, database_url, open_pool
from ops.errors import exception_handlers
from ops.metrics import metrics
from ops.middleware import AnswerOptions, DatabaseGate, PrivateNoStore, RefuseNulBytes
from ops.observe import observe
from ops.openapi import openapi_config
from ops.ready import ready
from ops.supervisor import DatabaseState
from ops.wire import StrictRequest, strict_query
from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

PoolFactory = Callable[[Settings], Awaitable[asyncpg.Pool]]
Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]

HEALTH_TIMEOUT = 2.0  # seconds; a health check that hangs is a failed one
POOL_CLOSE_TIMEOUT = 10.0
MAX_BODY_BYTES = 64 * 1024  # orders and reports are small; 413 beyond this


class ExchangeUnavailable(DomainError):
    code = "exchange_unavailable"
    kind = ErrorKind.UNAVAILABLE


class Health(msgspec.Struct, frozen=True):
    status: str
    database: str
    schema_version: int


@get("/health", tags=["ops"], summary="Liveness and database reachability")
async def health(pool: NamedDependency[asyncpg.Pool], state: State) -> Health:
    """200 when the database answers (with the applied schema version), else 503.

    Tried twice: after a PostgreSQL restart the pool may still hold a dead idle
    connection, whose failure says nothing about the database now. Where the exchange
    runs in this process, its sequencer must be able to write too: after losing the
    database it rebuilds itself, and until then this answers 503 `exchange_unavailable`.
    While the database supervisor (`ops.supervisor`) has the database down this answers
    503 `database_unreachable`, and while it reopens the exchange `exchange_unavailable`;
    while the exchange refuses a database whose ledger went back in time, `ledger_regressed`.
    A gateway process of `serve --workers N` not connected to NATS: 503 `bus_unavailable`.
    """
    supervisor = state.get("database_supervisor")
    if supervisor is not None and supervisor.regressed is not None:
        raise supervisor.regressed  # 503 ledger_regressed: the exchange refuses its database
    if supervisor is not None and supervisor.state is DatabaseState.REOPENING:
        raise ExchangeUnavailable("the exchange is reopening on its database after losing it")
    if supervisor is not None and not supervisor.ready:
        raise DatabaseUnreachable("database unreachable")
    sequencer = state.get("sequencer")
    if isinstance(sequencer, RemoteSequencer):  # a gateway process: its bus, not a rebuild
        sequencer.require_bus()
    if sequencer is not None and not sequencer.healthy:
        raise ExchangeUnavailable("the exchange is rebuilding its state from the database")
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            for attempt in (1, 2):
                try:
                    async with pool.acquire() as conn:
                        version = await schema_version(conn)
                    break
                except CONNECTION_ERRORS:
                    if attempt == 2:
                        raise
    except CONNECTION_ERRORS as exc:
        log.warning("health: database unreachable: %s: %s", type(exc).__name__, exc)
        raise DatabaseUnreachable("database unreachable") from exc
    return Health(status="ok", database="reachable", schema_version=version)


def default_route_handlers() -> list[ControllerRouterHandler]:
    """Every route of the exchange (besides /health and /schema). Register new routers here."""
    return [
        ledger_router, accounts_router, trading_router, market_stream, reports_router,
        endpoints_router, keys_router, openai_router, receipts_router, audit_router,
        vouchers_router, *dashboard_routes,
    ]  # fmt: skip


async def default_pool_factory(settings: Settings) -> asyncpg.Pool:
    # database_url may start the embedded server: blocking, so off the event loop.
    url = await asyncio.to_thread(database_url, settings)
    return await open_pool(url, min_size=settings.pool_min_size, max_size=settings.pool_max_size)


def _pool_lifespan(settings: Settings, pool_factory: PoolFactory) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await pool_factory(settings)
        app.state.pool = pool
        authenticator = Authenticator.from_pool(pool)
        app.state.authenticator = authenticator
        revocations = RevocationListener(pool, authenticator)
        revocations.start()
        try:
            await authenticator.checker.start()  # if it cannot, checks run here meanwhile
            yield
        finally:
            await revocations.close()
            await authenticator.checker.close()
            try:
                await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("pool did not close within %ss; terminating", POOL_CLOSE_TIMEOUT)
                pool.terminate()

    return lifespan


@asynccontextmanager
async def _drain_owed_cancels(app: Litestar) -> AsyncIterator[None]:
    """At shutdown, the websocket's cancels on disconnect still owed get a few more tries
    (`market.stream_cancels`); the connections have ended by then (uvicorn waits for them)."""
    yield
    await app.state.owed_cancels.drain()


def _provide_pool(state: State) -> asyncpg.Pool:
    pool: asyncpg.Pool = state.pool
    return pool


def create_app(
    settings: Settings,
    *,
    pool_factory: PoolFactory = default_pool_factory,
    route_handlers: Sequence[ControllerRouterHandler] | None = None,
    lifespans: Sequence[Lifespan] = (),
    debug: bool = False,
) -> Litestar:
    """Build the tokex app. The pool is opened on start-up and closed on shutdown."""
    routes = default_route_handlers() if route_handlers is None else list(route_handlers)

    def provide_settings() -> Settings:
        return settings

    dependencies: dict[str, Any] = {
        "pool": Provide(_provide_pool, sync_to_thread=False),
        "settings": Provide(provide_settings, sync_to_thread=False),
        "principal": Provide(provide_principal, sync_to_thread=False),
    }
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app = Litestar(
        route_handlers=[health, ready, metrics, currencies, *routes],
        dependencies=dependencies,
        exception_handlers=exception_handlers(),
        middleware=[RefuseNulBytes, DatabaseGate, AuthMiddleware(limiter)],
        # integers strictly on the wire: JSON bodies and integer query parameters (ops.wire)
        request_class=StrictRequest,
        before_request=strict_query,
        # the owed cancels' drain last, so it exits first: before the sequencer closes
        lifespan=[_pool_lifespan(settings, pool_factory), *lifespans, _drain_owed_cancels],
        openapi_config=openapi_config(_version()),  # ops.openapi: errors, security, docs page
        request_max_body_size=MAX_BODY_BYTES,
        # the market data hub exists before any lifespan, so the sequencer's can feed it
        state=State(
            {"settings": settings, "market_data": MarketData(), "owed_cancels": OwedCancels()}
        ),
        debug=debug,
        logging_config=None,  # logging is the process's business (the CLI sets it up)
    )
    # OPTIONS, before authentication: 204 and the route's methods (ops.middleware)
    app.asgi_handler = AnswerOptions(app.asgi_handler, app)
    # the gateway's metered calls, in front of Litestar's router and middleware, with the
    # NUL check and the database gate (market.gateway.openai_asgi)
    calls = RefuseNulBytes(DatabaseGate(serve_call))
    app.asgi_handler = OpenAICalls(app.asgi_handler, calls)
    # the single-order routes likewise, with the same gates and rate limiter as Litestar's
    # chain (market.orders_asgi)
    app.asgi_handler = OrderCalls(
        app.asgi_handler,
        limiter,
        MAX_BODY_BYTES,
        wrap=lambda lean: RefuseNulBytes(DatabaseGate(lean)),
    )
    # one account's answers are never cached, whichever path answered (ops.middleware)
    app.asgi_handler = PrivateNoStore(app.asgi_handler)
    # request ids, the access log and request metrics, around everything (ops.observe)
    return observe(app)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokex")
    except PackageNotFoundError:
        return "0.0.0"
