"""Trading API throughput: durable orders acknowledged per second, with latency.

    python -m ops.bench.api [--seconds 10] [--clients 48] [--batch 50] [--workers N] [--keep]
                            [--profile FILE]

Starts a real `tokex serve` (embedded PostgreSQL in a temporary data dir, or
DATABASE_URL), creates an instrument, providers and buyers, then drives it on
loopback with concurrent signed clients (one account each): first single
orders (`POST /v1/orders`), then batches (`POST /v1/orders/batch`). Every
order counted was acknowledged, and so durable. The mix: resting bids and
asks around the middle with a share that crosses (about one in five), so the
sequencer also settles fills. Server, database and load share this machine. The
temporary data dir (gigabytes of database) is deleted afterwards, unless `--keep` or the
run failed (its `server.log` says why). `--workers N` runs `tokex serve --workers N` (N
gateway processes and the sequencer process, over an embedded NATS) and reports the CPU
of each of its processes. `--profile FILE` records the server's main process with
`py-spy` (installed apart: `pip install py-spy`) during the single-order phase, as
collapsed stacks in FILE (`py-spy record --format raw`; keep it out of the repo).

Old and new side by side: copy this file and `ops/bench/cpu.py` into a checkout of the old
commit (`git archive <commit> | tar -x -C /tmp/api-before`) and run it from there with this
venv's python (`-m` puts the current directory first on the path), so each side's client
speaks its own server's wire; alternate the two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import msgspec

from market.accounts import create_account
from market.client import TokexClient
from market.signing import sign_request
from ops.bench.cpu import CpuSample, Group, postmaster_pid
from ops.bench.process import free_port
from ops.config import Settings
from ops.database import database_url, remove_embedded
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, OrderResult, PlaceOrder, PlaceOrders

SYM = "bench-model/2030-01-01T00Z/1h"


def _start_server(url: str, data_dir: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "TOKEX_RATE_LIMIT": "1000000",
           "TOKEX_RATE_BURST": "1000000"}  # fmt: skip
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *(("--workers", str(workers)) if workers else ()),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: see {data_dir / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not become healthy")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _setup(url: str, base: str, clients: int) -> list[tuple[TokexClient, Side]]:
    conn = await asyncpg.connect(url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "bench", None)
    finally:
        await conn.close()
    assert key is not None
    http = httpx.AsyncClient(
        base_url=base,
        timeout=30,
        transport=httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=clients * 2),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ),
    )
    operator = TokexClient(base, created.key_id, key, http=http)
    await operator.create_instrument(
        CreateInstrument(
            symbol=SYM, lot_size=1000, tick_size=1, price_min=1, price_max=10_000,
            maker_fee_bps=5, taker_fee_bps=10,
        )
    )  # fmt: skip
    traders: list[tuple[TokexClient, Side]] = []
    for i in range(clients):
        if i % 2 == 0:
            account = await operator.create_account(Role.PROVIDER, f"provider-{i}")
            client = operator.as_account(account)
            await client.list_capacity("bench", SYM, 10**12)
            traders.append((client, Side.SELL))
        else:
            account = await operator.create_account(Role.BUYER, f"buyer-{i}")
            await operator.deposit(f"bench-{i}", account.account_id, 10**15)
            traders.append((operator.as_account(account), Side.BUY))
    return traders


class RawConnection:
    """A keep-alive HTTP/1.1 connection that signs like TokexClient, with far less
    overhead per request than httpx, so the load generator does not starve the server
    of the machine's two cores. Used for the measured phases only."""

    def __init__(self, client: TokexClient, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:  # fmt: skip
        self.client = client
        self.reader = reader
        self.writer = writer
        self.last_ts = 0

    @classmethod
    async def open(cls, client: TokexClient, host: str, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(client, reader, writer)

    async def post(self, path: str, payload: object) -> tuple[int, bytes]:
        body = msgspec.json.encode(payload)
        self.last_ts = max(int(time.time() * 1000), self.last_ts + 1)
        assert self.client.private_key is not None and self.client.key_id is not None
        headers = sign_request(
            self.client.private_key, self.client.key_id, "POST", path, body, self.last_ts
        )
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{head}\r\n"
            ).encode()
            + body
        )
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _order(rng: random.Random, side: Side, coid: str) -> PlaceOrder:
    # Bids 990-1004, asks 996-1010: about a fifth of the orders cross.
    price = rng.randint(990, 1004) if side is Side.BUY else rng.randint(996, 1010)
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=1000 * rng.randint(1, 3),
        price=price,
    )  # fmt: skip


async def _run_phase(
    traders: list[tuple[TokexClient, Side]], port: int, seconds: float, batch: int, tag: str
) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    counts = [0, 0]  # acknowledged orders, refused
    connections = [await RawConnection.open(c, "127.0.0.1", port) for c, _ in traders]
    stop = time.perf_counter() + seconds

    async def worker(index: int, conn: RawConnection, side: Side) -> None:
        rng = random.Random(index)
        n = 0
        while time.perf_counter() < stop:
            n += 1
            started = time.perf_counter()
            if batch == 1:
                status, _ = await conn.post("/v1/orders", _order(rng, side, f"{tag}-{index}-{n}"))
                counts[0 if status == 201 else 1] += 1
            else:
                orders = [_order(rng, side, f"{tag}-{index}-{n}-{k}") for k in range(batch)]
                status, body = await conn.post("/v1/orders/batch", PlaceOrders(orders=orders))
                if status == 200:
                    results = msgspec.json.decode(body, type=list[OrderResult])
                    counts[0] += sum(r.order is not None for r in results)
                    counts[1] += sum(r.order is None for r in results)
                else:
                    counts[1] += batch
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(
        *(
            worker(i, conn, side)
            for i, (conn, (_, side)) in enumerate(zip(connections, traders, strict=True))
        )
    )
    elapsed = time.perf_counter() - began
    for conn in connections:
        conn.close()
    return int(counts[0] / elapsed), counts[1], latencies


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose parent is `pid`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
            if int(rest.split()[1]) == pid:
                found.append((int(entry.name), name))
    return sorted(found)


def _process_groups(server_pid: int, pg_data: Path | None, workers: int) -> dict[str, Group]:
    """The processes whose CPU is reported: the server's main process, its children (the
    signature helper; with workers: the gateways, each with its signature helper, and
    NATS), PostgreSQL (postmaster and backends; embedded only) and this one."""
    if workers:
        groups = {"sequencer": Group(server_pid)}
        for n, (pid, name) in enumerate(_children(server_pid)):
            if name == "nats-server":
                groups["nats"] = Group(pid)
            else:
                groups[f"gateway {n}"] = Group(pid)
                groups[f"its signature helper {n}"] = Group(pid, children=True, only_children=True)
    else:
        groups = {
            "server": Group(server_pid),
            "signature helper": Group(server_pid, children=True, only_children=True),
        }
    postmaster = postmaster_pid(pg_data) if pg_data is not None else None
    if postmaster is not None:
        groups["postgresql"] = Group(postmaster, children=True)
    groups["load generator"] = Group(os.getpid())
    return groups


def _cpu_line(used_s: dict[str, float], acknowledged: int, seconds: float) -> str:
    """CPU per acknowledged order (ms) and share of one core, per process group."""
    parts = [
        f"{name} {used * 1000 / max(1, acknowledged):.3f} ms ({used / seconds:.0%})"
        for name, used in used_s.items()
    ]
    return "CPU per order (share of a core): " + ", ".join(parts)


async def _bench(
    url: str,
    port: int,
    seconds: float,
    clients: int,
    batch: int,
    groups: dict[str, Group],
    workers: int,
    profile: Path | None,
) -> None:
    traders = await _setup(url, f"http://127.0.0.1:{port}", clients)
    await _run_phase(traders, port, 1.0, 1, "warm")
    mode = f"serve --workers {workers}" if workers else "serve (one process)"
    print(
        f"api bench, {mode}: {clients} concurrent signed clients on loopback; server, database and"
    )
    print("load on this machine; every order counted was acknowledged after its commit")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for size in (1, batch):
        spy = _py_spy(next(iter(groups.values())).pid, profile, seconds) if size == 1 else None
        before, began = CpuSample.take(groups), time.perf_counter()
        rate, refused, lat = await _run_phase(traders, port, seconds, size, f"b{size}")
        if spy is not None:
            await asyncio.to_thread(spy.wait)
        used, elapsed = CpuSample.take(groups).since(before), time.perf_counter() - began
        what = "single orders" if size == 1 else f"batches of {size}"
        p50, p99 = _percentile(lat, 0.5) * 1000, _percentile(lat, 0.99) * 1000
        p999 = _percentile(lat, 0.999) * 1000
        print(
            f"  {what:>16}: {rate:>7,} orders/s acknowledged, {len(lat):>6} requests, "
            f"p50 {p50:6.1f} ms, p99 {p99:6.1f} ms, p99.9 {p999:6.1f} ms per request "
            f"({refused} refused)"
        )
        print(f"  {'':>16}  {_cpu_line(used, int(rate * elapsed), elapsed)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _py_spy(pid: int, out: Path | None, seconds: float) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of `pid` for the phase (collapsed stacks in `out`)."""
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
               "--rate", "250", "--format", "raw", "--output", str(out),
               "--nonblocking"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--workers", type=int, default=0, help="serve --workers N (default: one process)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data dir (database, server.log)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the server into this file")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tokex-api-bench-"))
    os.chmod(data_dir, 0o755)
    keep = args.keep
    server: subprocess.Popen[bytes] | None = None
    try:
        external = os.environ.get("DATABASE_URL")
        url = external or database_url(Settings(data_dir=str(data_dir)))
        port = free_port()
        server = _start_server(url, data_dir, port, args.workers)
        pg_data = None if external else data_dir / "pg"
        groups = _process_groups(server.pid, pg_data, args.workers)
        asyncio.run(
            _bench(url, port, args.seconds, args.clients, args.batch, groups, args.workers,
                   args.profile)
        )  # fmt: skip
    except BaseException:
        keep = True  # for its server.log
        raise
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if keep:
            print(f"data dir kept: {data_dir}", file=sys.stderr)
        else:  # a run leaves gigabytes of database behind
            remove_embedded(data_dir)


if __name__ == "__main__":
    main()
