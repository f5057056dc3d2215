"""A real `tokex serve` in a subprocess, for end-to-end and crash tests.

proc = ServerProcess(database_url=url)
proc.start()                  # waits until GET /health answers 200
httpx.get(proc.base_url + "/health")
proc.kill()                   # SIGKILL: a crash, no clean shutdown
proc.start()                  # same port, same database: recovery
proc.stop()                   # SIGTERM, then SIGKILL after a grace period
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import asyncpg
import httpx

from market.accounts import create_account
from market.client import TokexClient
from schemas.accounts import Role

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerNotHealthy(RuntimeError):
    pass


class ServerProcess:
    """One `python -m ops serve` process; restartable on the same port and database.

    `database_url=None` runs it on the embedded PostgreSQL in `data_dir` (DATABASE_URL is
    removed from its environment).
    """

    def __init__(
        self,
        *,
        database_url: str | None,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        open_file_limit: int | None = None,
    ) -> None:
        self.database_url = database_url
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tokex-serve-"))
        # TOKEX_TEST_SERVE_WORKERS=N runs every such server as `serve --workers N`
        # (the end-to-end suite against gateway processes; tests/ops/test_workers.py).
        workers = os.environ.get("TOKEX_TEST_SERVE_WORKERS")
        if workers and "--workers" not in extra_args:
            extra_args = (*extra_args, "--workers", workers)
        self.extra_args = extra_args
        self.extra_env = env or {}
        #: RLIMIT_NOFILE (soft and hard) of the server process; None: inherited.
        self.open_file_limit = open_file_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> ServerProcess:
        """Start it; wait until healthy unless `wait` is False (a server meant to refuse)."""
        if self.running:
            raise RuntimeError("server already running")
        env = self.env()
        cmd = [
            sys.executable, "-m", "ops", "serve",
            "--host", self.host, "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limit_open_files if self.open_file_limit else None,
            )
        if wait:
            self.wait_healthy(timeout)
        return self

    def env(self) -> dict[str, str]:
        """The environment the server runs in (for another `tokex` process beside it)."""
        env = {**os.environ, **self.extra_env}
        env.pop("DATABASE_URL", None)
        if self.database_url is not None:
            env["DATABASE_URL"] = self.database_url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def _limit_open_files(self) -> None:
        assert self.open_file_limit is not None
        limit = self.open_file_limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Poll GET /health until 200; fail early if the process died."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerNotHealthy(
                    f"tokex serve exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                response = httpx.get(self.base_url + "/health", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise ServerNotHealthy(f"not healthy after {timeout}s ({last}):\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, as in a crash: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (clean shutdown), SIGKILL after `grace` seconds. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def operator_client(db_url: str, base_url: str) -> TokexClient:
    """A client for a new operator account, created straight in the database (the way
    `tokex accounts create` makes the first operator)."""
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "root", None)
    finally:
        await conn.close()
    assert key is not None
    return TokexClient(base_url, created.key_id, key)
