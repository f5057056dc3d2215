"""`tokex serve --workers N`: N gateway processes in front of one sequencer process.

The process started as `tokex serve --workers N` is the sequencer process: it
migrated the database (`ops.cli`), starts an embedded NATS unless `NATS_URL` is set
(`ops.bus`), opens the exchange exactly as one process does (`ops.exchange`: the
sequencer, the ledger writer, recovery, the database supervisor) without serving HTTP,
answers commands and queries over NATS and publishes market data there
(`market.sequencer.responder`). It binds the listening socket once and starts N
gateway processes (`tokex serve-gateway`, `ops.gateway_process`) that inherit it: the
kernel hands each new connection to one of them. A gateway that exits is started
again (after a delay that doubles while they keep dying, up to `RESTART_MAX_DELAY_S`),
while the others keep answering. An embedded NATS that dies is started again on its
port with its token (`ops.bus.watch`), and every process's connection reconnects;
while a gateway is not connected it answers 503 `bus_unavailable` at once. On SIGTERM:
the gateways first (they finish their requests), then the responder, then the
exchange, then NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State

from market.sequencer.port import Exchange
from ops.bus import (
    TOKEN_ENV,
    URL_ENV,
    EmbeddedNats,
    close,
    connect,
    die_with_parent,
    nats_url_from_env,
    watch,
)
from ops.config import Settings
from ops.errors import DATABASE_UNAVAILABLE_MESSAGE, DatabaseUnavailable

log = logging.getLogger(__name__)

#: A gateway that ran less than this before exiting counts as dying at start.
HEALTHY_RUN_S = 10.0
RESTART_FIRST_DELAY_S = 0.1
RESTART_MAX_DELAY_S = 5.0
#: How long a gateway may take to finish its requests on SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0
LISTEN_BACKLOG = 2048
BIND_TIMEOUT_S = 10.0


def listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every gateway accepts on (inherited by each)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + BIND_TIMEOUT_S
    while True:  # the gateways of a killed tokex may still hold it for a moment
        try:
            sock.bind((host, port))
            break
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.1)
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class Gateways:
    """N gateway processes on one inherited socket, each restarted when it exits.

    Each process started gets an instance id of its own (`--instance`: its slot and random
    hex), which owns the calls it opens; `on_exit(instance id)` is called when it exits
    other than by `stop` (the desk closes its calls: `market.gateway.desk_server`)."""

    def __init__(
        self, count: int, command: list[str], fd: int, env: dict[str, str],
        on_exit: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self._count = count
        self._command = command
        self._fd = fd
        self._env = env
        self._on_exit = on_exit
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self.instances: list[str] = [""] * count
        self.restarts = 0
        self._stopping = False

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        instance = f"gw{slot}-{secrets.token_hex(6)}"
        proc = subprocess.Popen(
            [*self._command, "--fd", str(self._fd), "--worker", str(slot), "--instance", instance],
            env=self._env,
            pass_fds=(self._fd,),
            preexec_fn=die_with_parent,
            start_new_session=True,  # signals come from here: stopped in order
        )
        log.info("gateway %d started (pid %d) as %s", slot, proc.pid, instance)
        self.processes[slot] = proc
        self.instances[slot] = instance
        return proc

    async def run(self) -> None:
        """Start every gateway and keep each running until `stop`."""
        await asyncio.gather(*(self._keep(slot) for slot in range(self._count)))

    async def _keep(self, slot: int) -> None:
        delay = RESTART_FIRST_DELAY_S
        while not self._stopping:
            started = time.monotonic()
            proc = self._spawn(slot)
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            if self._on_exit is not None:
                self._on_exit(self.instances[slot])
            ran = time.monotonic() - started
            delay = (
                RESTART_FIRST_DELAY_S
                if ran >= HEALTHY_RUN_S
                else min(delay * 2, RESTART_MAX_DELAY_S)
            )
            self.restarts += 1
            log.warning(
                "gateway %d (pid %d) exited with %s; restarting in %.1fs",
                slot,
                proc.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        self._stopping = True
        running = [p for p in self.processes if p is not None and p.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                await asyncio.to_thread(proc.wait, STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


def gateway_command(settings: Settings) -> list[str]:
    """The gateway's argv: nothing secret (`ps` shows it to every local user); the NATS
    URL, which may carry a user and password, is in its environment (`URL_ENV`)."""
    return [
        sys.executable, "-m", "ops", "serve-gateway",
        "--host", settings.host, "--port", str(settings.port),
    ]  # fmt: skip


def _serving(app: Litestar) -> Exchange | None:
    """The sequencer the responder answers with; `ledger_regressed` to the gateways while
    the exchange refuses its database (`ops.ledger_head`): their answers say why; and
    `database_unavailable` while the supervisor does not have it back (a command taken
    then would wait on a database that froze, past the gateway's timeout, and could
    commit after the gateway answered 503)."""
    supervisor = app.state.get("database_supervisor")
    if supervisor is not None and supervisor.regressed is not None:
        raise supervisor.regressed
    if supervisor is not None and not supervisor.ready:
        raise DatabaseUnavailable(DATABASE_UNAVAILABLE_MESSAGE)
    sequencer: Exchange | None = app.state.get("sequencer")
    return sequencer


def run_workers(settings: Settings, workers: int) -> int:
    """The sequencer process of `tokex serve --workers N` (see the module docstring)."""
    assert settings.database_url is not None  # set by `tokex serve` once it migrated
    embedded: EmbeddedNats | None = None
    nats_url = nats_url_from_env()
    env = {**os.environ, "DATABASE_URL": settings.database_url}
    if nats_url is None:
        embedded = EmbeddedNats(Path(settings.data_path) / "nats")
        nats_url = embedded.url
        env[TOKEN_ENV] = os.environ[TOKEN_ENV] = embedded.token  # this process's too
    env[URL_ENV] = nats_url
    sock = listening_socket(settings.host, settings.port)
    try:
        asyncio.run(_sequencer_process(settings, nats_url, sock, workers, env, embedded))
    finally:
        sock.close()
        if embedded is not None:
            embedded.stop()
    return 0


async def _sequencer_process(
    settings: Settings,
    nats_url: str,
    sock: socket.socket,
    workers: int,
    env: dict[str, str],
    embedded: EmbeddedNats | None = None,
) -> None:
    from market.gateway.desk import desk_starting
    from market.sequencer.responder import Responder
    from ops.exchange import exchange_lifespan
    from ops.gateway import desk_lifespan

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # an embedded bus that dies is started again (an external NATS_URL is not ours)
    watchdog = None if embedded is None else asyncio.create_task(watch(embedded))
    nats = await connect(nats_url, name="tokex-sequencer")
    # settlement waits until the desk is up (it may owe charges of calls a crash cut)
    app = Litestar(route_handlers=[], state=State({"delivering": desk_starting}),
                   logging_config=None)  # fmt: skip
    responder = Responder(nats, lambda: _serving(app))
    app.state.market_data = responder  # the sequencer's publish hook: market data to NATS
    try:
        async with exchange_lifespan(settings)(app), desk_lifespan(settings, nats)(app) as desk:
            await responder.start()
            closing: set[asyncio.Task[None]] = set()

            def gone(instance_id: str) -> None:  # its open calls: closed as cut by a crash
                task = asyncio.create_task(desk.gone(instance_id), name="gateway-gone")
                closing.add(task)
                task.add_done_callback(closing.discard)

            command = gateway_command(settings)
            gateways = Gateways(workers, command, sock.fileno(), env, on_exit=gone)
            app.state.gateways = gateways
            running = asyncio.create_task(gateways.run())
            log.info("tokex: %d gateways on http://%s:%d", workers, settings.host, settings.port)
            await stop.wait()
            log.info("tokex: stopping the gateways, then the exchange")
            await gateways.stop()
            await running
            if closing:
                await asyncio.wait(list(closing))
            await responder.close()
    finally:
        await close(nats)
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
