"""A real `tokex serve` on its own embedded PostgreSQL, for the fault and soak campaigns.

    proc = ExchangeProcess(data_dir, env={...})
    proc.start()             # waits until GET /health answers 200
    proc.kill_server()       # SIGKILL of the server: a crash, no shutdown code runs
    proc.kill_postgres()     # SIGKILL of the postmaster tokex started (its supervisor restarts it)
    proc.stop()              # SIGTERM (the last handle out stops PostgreSQL too)

Loopback only: the server listens on 127.0.0.1, PostgreSQL on a unix socket in the data dir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ExchangeDown(RuntimeError):
    """The exchange did not answer GET /health with 200 in time."""


class ExchangeProcess:
    """One `python -m ops serve` on the embedded PostgreSQL of `data_dir`; restartable."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pg_path(self) -> Path:
        return self.data_dir / "pg"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout_s: float = 120.0) -> None:
        env = {**os.environ, **self.env}
        env.pop("DATABASE_URL", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "ops", "serve", "--host", HOST, "--port", str(self.port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_healthy(timeout_s)

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base_url + "/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ExchangeDown(f"tokex serve exited with {self.proc.returncode}: {self.tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise ExchangeDown(f"not healthy after {timeout_s}s: {self.tail()}")

    def kill_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pg_path / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def kill_postgres(self) -> int | None:
        """SIGKILL the postmaster; its pid (None if none was running)."""
        pid = self.postmaster_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return None
        return pid

    def database_url(self) -> str:
        """A DSN of the embedded PostgreSQL (unix socket), from its postmaster.pid."""
        from ops.embedded_access import running_dsn

        return running_dsn(self.pg_path)

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_kib(self) -> int:
        """Resident memory of the server process (KiB), 0 if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""
