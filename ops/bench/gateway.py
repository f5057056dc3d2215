"""The metering gateway's throughput and the latency it adds to a call.

    python -m ops.bench.gateway [--seconds 10] [--clients 64] [--mode both] [--keep]
                                [--profile PREFIX] [--paced 0.5] [--workers N]

Starts a real `tokex serve` (embedded PostgreSQL in a temporary data dir, or DATABASE_URL)
and the stand-in upstream (its answers served lean, `tests.support.upstream_lean`, in a
process of its own) on loopback;
lists an instrument whose delivery window is now, a provider with an endpoint on the
upstream, a buyer holding entitlement from a crossed order and an inference key. Then
`--clients` concurrent clients (one keep-alive connection each) call chat completions for
`--seconds`, first the upstream directly, then through `/openai/v1`, streaming and not
(`--mode`). It prints, for each: calls per second (through the gateway: metered calls,
each answered only after its receipt committed), and the time to first byte and total
time per call (p50, p99), the gateway's added latency being the difference, and the CPU
each process spent per call (ops.bench.cpu: the server with its helper process, the
gateway's own cost; the upstream; PostgreSQL's postmaster with its backends, when
embedded; the load generator), the figure that holds on a shared machine; and how many
group commits a call waited for at its end (from the server's log at shutdown: 1 is its
receipt's journal commit, 2 a call that found every journal writer busy and waited for
one of their commits too; the charges' commits in sequencer batches follow, on no call's
path). Then (`--paced SHARE`, default 0.5) each
mode again, upstream directly and through the gateway, at a fixed rate of that share of the
gateway's calls/s: at its maximum every closed-loop client waits in the queue of a
saturated machine, so the latency the gateway adds by its own work shows only below it.
Server, upstream, database and load share this machine. The data dir is deleted afterwards
unless `--keep` or the run failed.
`--workers N` runs `tokex serve --workers N`: the CPU of the sequencer process (with the
gateway's desk) and of its children, the gateway processes and NATS, apart (not the
gateways' signature helpers: bearer-key calls do not use them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import msgspec

from market.accounts import create_account
from market.client import TokexClient
from market.instruments import format_symbol
from ops.bench.cpu import CpuSample, Group, postmaster_pid
from ops.bench.process import free_port
from ops.config import Settings
from ops.database import database_url, remove_embedded
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder

MODEL = "bench-model"
TOKENS = 10**9
PRICE = 1
MAX_TOKENS = 4
CHAT = [{"role": "user", "content": "one two three"}]


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a process of the bench exited: see {log}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer: see {log}")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_upstream(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = data_dir / "upstream.log"
    # the stand-in's answers served lean (its Litestar server took a third of the machine)
    command = [sys.executable, "-m", "tests.support.upstream_lean", "--port", str(port)]
    proc = _spawn([*command, "--model", MODEL], {**os.environ, "PYTHONPATH": str(Path.cwd())}, log)
    _wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log)
    return proc


def start_server(url: str, data_dir: Path, port: int, workers: int = 0) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "DATABASE_URL": url, "TOKEX_RATE_LIMIT": "1000000",
        "TOKEX_RATE_BURST": "1000000", "TOKEX_ENDPOINT_ALLOW_HOSTS": "127.0.0.1",
        "TOKEX_GATEWAY_RATE_LIMIT": "1000000", "TOKEX_GATEWAY_RATE_BURST": "1000000",
        "TOKEX_GATEWAY_MAX_IN_FLIGHT": "100000", "TOKEX_ENDPOINT_HEALTH_INTERVAL_S": "3600",
    }  # fmt: skip
    log = data_dir / "server.log"
    proc = _spawn(
        [sys.executable, "-m", "ops", "serve", "--port", str(port), "--data-dir", str(data_dir),
         *(("--workers", str(workers)) if workers else ())],
        env, log,
    )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{port}/health", proc, log)
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("Application startup complete") < workers:
        if time.monotonic() > deadline:  # every gateway up, not only the first
            raise SystemExit(f"the gateways did not start: {log}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def setup(url: str, base: str, upstream_url: str) -> str:
    """A live instrument, a provider with an endpoint, a buyer with entitlement: its key."""
    conn = await asyncpg.connect(url)
    try:
        created, secret = await create_account(conn, Role.OPERATOR, "bench", None)
    finally:
        await conn.close()
    assert secret is not None
    operator = TokexClient(base, created.key_id, secret)
    try:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        symbol = format_symbol(MODEL, int(hour.timestamp()), 86_400)
        await operator.create_instrument(CreateInstrument(
            symbol=symbol, lot_size=1, tick_size=1, price_min=1, price_max=1000,
            provider_fee_bps=100, allow_started=True,  # its window runs now
        ))  # fmt: skip
        p = await operator.create_account(Role.PROVIDER, "provider")
        b = await operator.create_account(Role.BUYER, "buyer")
        provider, buyer = operator.as_account(p), operator.as_account(b)
        await provider.list_capacity("cap", symbol, TOKENS)
        await operator.deposit("dep", b.account_id, TOKENS * PRICE)
        for client, side, coid in ((provider, Side.SELL, "ask"), (buyer, Side.BUY, "bid")):
            await client.place_order(PlaceOrder(
                client_order_id=coid, instrument=symbol, side=side, quantity=TOKENS, price=PRICE,
            ))  # fmt: skip
        endpoint = {"endpoint_id": "e1", "model": MODEL, "base_url": upstream_url,
                    "max_concurrency": 100_000}  # fmt: skip
        await provider.request("POST", "/v1/endpoints", json=endpoint)
        made = await buyer.request("POST", "/v1/inference-keys", json={})
        key: str = made["secret"]
        return key
    finally:
        await operator.aclose()


class Connection:
    """A keep-alive HTTP/1.1 connection with little overhead per request (chunked or
    sized answers), timing the first byte of the body and the last."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def post(self, head: bytes, body: bytes) -> tuple[int, float, float, bytes]:
        """(status, seconds to the first byte of the body, seconds to its end, body)."""
        started = time.perf_counter()
        self.writer.write(head + body)
        reader = self.reader
        status = int((await reader.readuntil(b"\r\n")).split()[1])
        chunked, length = False, 0
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value)
        if not chunked:
            data = await reader.readexactly(length)
            now = time.perf_counter() - started
            return status, now, now, data
        parts: list[bytes] = []
        first = 0.0
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
            first = first or time.perf_counter() - started
        await reader.readuntil(b"\r\n")
        return status, first, time.perf_counter() - started, b"".join(parts)

    def close(self) -> None:
        self.writer.close()


def request_head(path: str, length: int, key: str | None) -> bytes:
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"content-length: {length}\r\n{auth}\r\n"
    ).encode()


@dataclass
class Phase:
    #: CPU per call (ms) of each process group (`groups`): the server, the upstream,
    #: PostgreSQL (postmaster, backends, workers), the load generator
    cpu_ms: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # status -> calls not complete
    seconds: float = 0.0
    first: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def _complete(stream: bool, status: int, data: bytes) -> bool:
    if status != 200:
        return False
    return data.endswith(b"data: [DONE]\n\n") if stream else b'"usage"' in data


def groups(server: int, upstream: int, data_dir: Path | None, workers: int = 0) -> dict[str, Group]:
    """The processes whose CPU a phase reports (ops.bench.cpu); with `workers`, the
    sequencer process (its desk) and its children (the gateway processes and NATS) apart."""
    out = {"server": Group(server, children=True), "upstream": Group(upstream)}
    if workers:
        out = {"sequencer": Group(server), "gateways": Group(server, children=True,
               only_children=True), "upstream": Group(upstream)}  # fmt: skip
    postmaster = postmaster_pid(data_dir / "pg") if data_dir is not None else None
    if postmaster is not None:
        out["postgresql"] = Group(postmaster, children=True)
    out["load"] = Group(os.getpid())
    return out


async def run_phase(
    port: int, path: str, key: str | None, clients: int, seconds: float, stream: bool,
    cpu: Mapping[str, Group] | None = None, rate: float | None = None,
) -> Phase:  # fmt: skip
    """Calls for `seconds` over `clients` connections: each as soon as the last one
    ended (closed loop), or, with `rate`, `rate` calls/s in all on a fixed schedule (each
    connection every clients/rate seconds, the connections staggered); a call that starts
    late because the one before ran over is timed from when it was due, so a queue that
    builds up shows in its latency (no coordinated omission)."""
    payload: dict[str, object] = {"model": MODEL, "messages": CHAT, "max_tokens": MAX_TOKENS}
    if stream:
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
    body = msgspec.json.encode(payload)
    head = request_head(path, len(body), key)
    phase = Phase()
    connections = [await Connection.open(port) for _ in range(clients)]
    stop_at = time.perf_counter() + seconds

    interval_s = clients / rate if rate else 0.0

    async def worker(index: int, conn: Connection) -> None:
        due = time.perf_counter() + interval_s * index / clients
        while time.perf_counter() < stop_at:
            late = 0.0
            if rate:
                late = time.perf_counter() - due
                if late < 0:
                    await asyncio.sleep(-late)
                    late = 0.0
                due += interval_s
            status, first, total, data = await conn.post(head, body)
            first, total = first + late, total + late
            if not _complete(stream, status, data):
                phase.failed[status] = phase.failed.get(status, 0) + 1
                continue
            phase.calls += 1
            phase.first.append(first)
            phase.total.append(total)

    began, before = time.perf_counter(), CpuSample.take(cpu or {})
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    phase.seconds = time.perf_counter() - began
    used = CpuSample.take(cpu or {}).since(before)
    phase.cpu_ms = {name: s * 1000 / max(1, phase.calls) for name, s in used.items()}
    for conn in connections:
        conn.close()
    return phase


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def report(kind: str, direct: Phase, gateway: Phase) -> None:
    print(f"  {kind}:")
    for name, p in (("direct", direct), ("gateway", gateway)):
        print(
            f"    {name:>8}: {p.rate:>7,.0f} calls/s ({p.calls} calls, "
            f"{sum(p.failed.values())} failed{f' {p.failed}' if p.failed else ''}); "
            f"first byte p50 {pct(p.first, 0.5):6.2f} ms p99 {pct(p.first, 0.99):6.2f} ms; "
            f"total p50 {pct(p.total, 0.5):6.2f} ms p99 {pct(p.total, 0.99):6.2f} ms"
        )
        cpu = ", ".join(f"{name} {ms:.3f}" for name, ms in p.cpu_ms.items())
        print(f"              CPU a call (ms): {cpu}")
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        ttfb = pct(gateway.first, q) - pct(direct.first, q)
        total = pct(gateway.total, q) - pct(direct.total, q)
        print(f"    added by the gateway at {label}: first byte {ttfb:+.2f} ms, "
              f"total {total:+.2f} ms")  # fmt: skip


async def bench(
    url: str, port: int, upstream_port: int, seconds: float, clients: int, modes: list[bool],
    cpu: Mapping[str, Group], profile: str | None = None, paced: float = 0.0,
) -> None:  # fmt: skip
    """`cpu`: the processes whose CPU per call is reported (the server's group first).
    `profile`: record the server with py-spy during the gateway's phases, to files
    `profile`-<mode>[-paced].txt. `paced`: then each mode again at this share of the gateway's
    closed-loop rate (`_paced`; 0: not)."""
    key = await setup(url, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream_port}/v1")
    print(f"gateway bench: {clients} concurrent clients, {seconds:g} s per phase, chat "
          f"completions of {MAX_TOKENS} tokens; server, upstream, database and load on this "
          f"machine ({os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")  # fmt: skip
    for stream in modes:
        warm = min(1.0, seconds)
        await run_phase(upstream_port, "/v1/chat/completions", None, clients, warm, stream)
        await run_phase(port, "/openai/v1/chat/completions", key, clients, warm, stream)
        direct = await run_phase(
            upstream_port, "/v1/chat/completions", None, clients, seconds, stream, cpu
        )
        spy = (
            _py_spy(cpu["server"].pid, seconds, f"{profile}-{'stream' if stream else 'plain'}.txt")
            if profile
            else None
        )
        waited = await waits(port)
        through = await run_phase(
            port, "/openai/v1/chat/completions", key, clients, seconds, stream, cpu
        )
        if spy is not None:
            spy.wait()
        kind = "streaming" if stream else "not streaming"
        report(kind, direct, through)
        waits_report(waited, await waits(port))
        if paced:
            rate = through.rate * paced
            out = f"{profile}-{'stream' if stream else 'plain'}-paced.txt" if profile else None
            await _paced(port, upstream_port, key, clients, seconds, stream, rate, cpu, out)


async def _paced(
    port: int, upstream_port: int, key: str, clients: int, seconds: float, stream: bool,
    rate: float, cpu: Mapping[str, Group], profile: str | None = None,
) -> None:  # fmt: skip
    """The same calls at a fixed `rate` below the gateway's maximum, upstream directly and
    through the gateway: the latency the gateway adds by its own work, not by the queue
    of a saturated machine (at its maximum, every closed-loop client waits its turn)."""
    direct = await run_phase(
        upstream_port, "/v1/chat/completions", None, clients, seconds, stream, cpu, rate
    )
    spy = _py_spy(cpu["server"].pid, seconds, profile) if profile else None
    waited = await waits(port)
    through = await run_phase(
        port, "/openai/v1/chat/completions", key, clients, seconds, stream, cpu, rate
    )
    if spy is not None:
        spy.wait()
    kind = "streaming" if stream else "not streaming"
    report(f"{kind}, paced at {rate:,.0f} calls/s offered", direct, through)
    waits_report(waited, await waits(port))


def _py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes] | None:
    """py-spy (`pip install py-spy`) recording `pid` for `seconds`, as collapsed stacks."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("  (py-spy is not installed: no profile)")
        return None
    args = [str(exe), "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
            "-f", "raw", "-o", out, "--nonblocking"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_METER_LINE = re.compile(
    r"gateway meter: (\d+) journal commits; receipts by commits waited for: (\{.*\}); "
    r"([\d.]+) ms a commit; (\d+) charge commits, ([\d.]+) ms a commit"
)


_ROUTED_LINE = re.compile(r"gateway: (\d+) calls routed at once, (\d+) after the batch")
_PROGRESS_LINE = re.compile(r"gateway progress: (\d+) marks in (\d+) commits")


_DURABLE = re.compile(r'tokex_gateway_receipts_durable_total\{commits_waited="(\d+)"\} ([\d.e+]+)')


async def waits(port: int) -> dict[int, int]:
    """The server's receipts so far by the journal commits their call waited for at its
    end (`GET /metrics`; with `--workers`, the counts of the gateway process that answers)."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {int(n): int(float(v)) for n, v in _DURABLE.findall(text)}


def waits_report(before: dict[int, int], after: dict[int, int]) -> None:
    phase = {n: after[n] - before.get(n, 0) for n in sorted(after) if after[n] > before.get(n, 0)}
    print(f"    receipt journal commits a call waited for at its end -> calls: {phase}")


def commits_report(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    for at_once, after in _ROUTED_LINE.findall(text)[-1:]:
        print(f"  routing: {int(at_once):,} calls on the committed view at once, "
              f"{int(after):,} after waiting for the batch in flight")  # fmt: skip
    for marks, commits in _PROGRESS_LINE.findall(text)[-1:]:
        print(f"  progress marks of streaming calls: {int(marks):,} in {int(commits):,} "
              f"commits (TOKEX_GATEWAY_PROGRESS_MS)")  # fmt: skip
    found = _METER_LINE.findall(text)
    if not found:
        print("  group commits: not in the server's log")
        return
    writes, waited, write_ms, charges, charge_ms = max(found, key=lambda f: int(f[0]))
    counts = {int(k): int(v) for k, v in re.findall(r"(\d+): (\d+)", waited)}
    receipts = sum(counts.values())
    print(f"  group commits: {int(writes):,} receipt journal commits for {receipts:,} receipts "
          f"({receipts / max(1, int(writes)):.1f} a commit, {write_ms} ms each); commits a "
          f"call waited for at its end -> calls: {counts}; {int(charges):,} charge commits "
          f"in sequencer batches, {charge_ms} ms each")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--mode", choices=["stream", "plain", "both"], default="both")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    parser.add_argument(
        "--profile", metavar="PREFIX", help="py-spy the server during the gateway's phases"
    )
    parser.add_argument(
        "--paced", type=float, default=0.5, metavar="SHARE",
        help="then each mode at this share of the gateway's calls/s, on a fixed schedule "
        "(the latency added below saturation); 0: not",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=0, help="serve --workers N (default: one process)"
    )
    args = parser.parse_args()
    modes = {"stream": [True], "plain": [False], "both": [True, False]}[args.mode]
    data_dir = Path(tempfile.mkdtemp(prefix="tokex-gateway-bench-"))
    os.chmod(data_dir, 0o755)
    keep = args.keep
    server = upstream = None
    try:
        url = os.environ.get("DATABASE_URL") or database_url(Settings(data_dir=str(data_dir)))
        port, upstream_port = free_port(), free_port()
        upstream = start_upstream(data_dir, upstream_port)
        server = start_server(url, data_dir, port, args.workers)
        embedded = None if os.environ.get("DATABASE_URL") else data_dir
        cpu = groups(server.pid, upstream.pid, embedded, args.workers)
        run = bench(url, port, upstream_port, args.seconds, args.clients, modes, cpu,
                    args.profile, args.paced)  # fmt: skip
        asyncio.run(run)
        stop(server)
        commits_report(data_dir / "server.log")
    except BaseException:
        keep = True
        raise
    finally:
        stop(server)
        stop(upstream)
        if keep:
            print(f"data dir kept: {data_dir}", file=sys.stderr)
        else:
            remove_embedded(data_dir)


if __name__ == "__main__":
    main()
