"""One gateway process of `tokex serve --workers N` (`ops.workers` starts each as
`tokex serve-gateway --fd FD`, the bus's URL in `NATS_URL`: never in argv, which `ps`
shows to every local user).

It serves the whole HTTP API on the socket it inherited: signatures, validation and
every read that PostgreSQL answers, here; what changes state, and what only the
sequencer's memory knows (books, balances, instruments), through
`market.sequencer.remote.RemoteSequencer` on `app.state.sequencer`, over NATS. Its
websocket clients get market data from its own hub, fed by `market.feed_relay`. It
watches the database itself (`probe_lifespan`: 503 at once while it is down). It
serves `/openai/v1` too (`ops.gateway.remote_gateway_lifespan`): its calls reserve and
are charged at the desk in the sequencer process (`market.gateway.desk_server`), and its
streaming calls' progress marks carry its instance id (`--instance`, new at every start).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from collections.abc import AsyncIterator

import asyncpg
from litestar import Litestar

from ops.app import Lifespan
from ops.config import Settings

log = logging.getLogger(__name__)


def remote_exchange_lifespan(nats_url: str, worker: int) -> Lifespan:
    """Connect to NATS; the sequencer over it on `app.state.sequencer`; the market data relay."""
    from contextlib import asynccontextmanager

    from market.feed_relay import FeedRelay
    from market.sequencer.remote import RemoteSequencer
    from ops.bus import close, connect

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        relay: FeedRelay | None = None

        async def disconnected() -> None:  # batches may be lost: hold them from here on
            if relay is not None:
                relay.hold()

        async def reconnected() -> None:
            if relay is not None:
                relay.reload()

        nats = await connect(
            nats_url,
            name=f"tokex-gateway-{worker}",
            disconnected=disconnected,
            reconnected=reconnected,
        )
        remote = RemoteSequencer(nats)
        relay = FeedRelay(nats, remote, app.state.market_data)
        await relay.start()
        app.state.sequencer = remote
        app.state.nats = nats
        # private subscribes claim their signatures in the database, for every gateway
        # (one process's replay window does not see the others': market.stream_claims)
        app.state.stream_claims = True
        try:
            yield
        finally:
            app.state.sequencer = None
            app.state.nats = None
            await relay.close()
            await close(nats)

    return lifespan


def probe_lifespan(url: str) -> Lifespan:
    """A database supervisor of this gateway's own (`app.state.database_supervisor`), which
    only probes: when the database stops answering, this process's routes answer 503
    `database_unavailable` at once (`ops.middleware.DatabaseGate`) and its pool's
    connections are cut, as in one process; once it answers again the pool's old
    connections are replaced. It never restarts PostgreSQL or reopens the exchange: the
    sequencer process does (and refuses commands meanwhile, `ops.workers`)."""
    from contextlib import asynccontextmanager

    from ops.supervisor import DatabaseSupervisor

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async def refresh_pool() -> None:  # connections from before the outage are dead
            pool: asyncpg.Pool | None = app.state.get("pool")
            if pool is not None:
                await pool.expire_connections()

        supervisor = DatabaseSupervisor(url, embedded=None, reopen=refresh_pool)
        app.state.database_supervisor = supervisor
        supervisor.start()
        try:
            yield
        finally:
            await supervisor.close()
            app.state.database_supervisor = None

    return lifespan


def serve_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from ops.app import create_app
    from ops.bus import nats_url_from_env
    from ops.cli import settings_from_args
    from ops.gateway import remote_gateway_lifespan
    from ops.limits import uvicorn_options

    settings: Settings = settings_from_args(args)
    nats_url = nats_url_from_env()
    if nats_url is None:
        raise SystemExit("tokex serve-gateway: NATS_URL is not set (`serve --workers` sets it)")
    if settings.database_url is None:
        raise SystemExit("tokex serve-gateway: DATABASE_URL is not set (`serve --workers` sets it)")
    instance_id = args.instance or f"gw{args.worker}"
    lifespans = [
        probe_lifespan(settings.database_url),
        remote_exchange_lifespan(nats_url, args.worker),
        remote_gateway_lifespan(settings, instance_id),
    ]
    app = create_app(settings, lifespans=lifespans)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        **uvicorn_options(settings.connection_limits),
    )
    sock = socket.socket(fileno=args.fd)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ops.cli import add_database_options

    parser = subparsers.add_parser(
        "serve-gateway", help="one gateway process of `serve --workers N` (started by it)"
    )
    parser.add_argument("--fd", type=int, required=True, help="the inherited listening socket")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument(
        "--instance", default="", help="this process's instance id (owner of its open calls)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    add_database_options(parser)
    parser.set_defaults(handler=serve_gateway)
