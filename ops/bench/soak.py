"""Soak: mixed load at about half the measured maximum for a while; the server's memory
and the p99 latency sampled each minute, and a verdict on their trend.

    python -m ops.bench.soak [--minutes 10] [--traders 8] [--calibrate-seconds 20]

A real `tokex serve` on its own embedded PostgreSQL (a temporary data dir), loopback
only. First the maximum: every trader places crossing orders as fast as it is answered
for `--calibrate-seconds` (acknowledged orders per second). Then the soak, open loop at
half that rate in all: each trader sends on a fixed schedule (latency is measured from
when a command was due, so a stall counts in full) a mix of orders (about one in five
crosses), cancels of its oldest open order (it keeps at most `KEEP_OPEN` resting: the
books stay the same size, as the per-account cap `max_open_orders` guarantees in the
worst case), amends, withdrawals (buyers) or deliveries (providers), and balance reads;
the operator deposits and pays the pending withdrawals once a second. Each sample:
commands answered, rate, p50 and p99 latency, refusals, server RSS (VmRSS). The verdict
fits a line through the samples after the first (warm-up) one: memory grows if the fit
rises by more than max(10 MB, 5%) over the run; p99 grows if the fit rises by more than
50% of where it began (and by at least 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from market.accounts import create_account
from market.client import TokexApiError, TokexClient
from ops.bench.process import ExchangeProcess
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder

SYM = "soak-model/2031-01-01T00Z/1h"
LOT = 1000
KEEP_OPEN = 100
NO_RATE_LIMIT = {"TOKEX_RATE_LIMIT": "1000000", "TOKEX_RATE_BURST": "1000000"}


@dataclass(slots=True)
class Trader:
    client: TokexClient
    account_id: str
    side: Side
    rng: random.Random
    n: int = 0
    open: list[int] = field(default_factory=list)

    def order(self, crossing: bool) -> PlaceOrder:
        self.n += 1
        if crossing:
            price = 100 if self.side is Side.BUY else 99
        else:
            price = (
                self.rng.randint(80, 98) if self.side is Side.BUY else self.rng.randint(101, 120)
            )
        return PlaceOrder(
            client_order_id=f"{self.account_id[:8]}-{self.n}", instrument=SYM, side=self.side,
            quantity=LOT * self.rng.randint(1, 3), price=price,
        )  # fmt: skip

    async def place(self, crossing: bool) -> None:
        view = await self.client.place_order(self.order(crossing))
        if view.status == "open":
            self.open.append(view.order_id)

    async def step(self) -> None:
        r = self.rng.random()
        if len(self.open) > KEEP_OPEN or (r < 0.15 and self.open):
            await self.client.cancel_order(self.open.pop(0))
        elif r < 0.25 and self.open:
            await self.client.amend_order(self.rng.choice(self.open), price=self._rest_price())
        elif r < 0.3:
            await self._treasury()
        elif r < 0.4:
            await self.client.balances()
        else:
            await self.place(crossing=self.rng.random() < 0.2)

    def _rest_price(self) -> int:
        return self.rng.randint(80, 98) if self.side is Side.BUY else self.rng.randint(101, 120)

    async def _treasury(self) -> None:
        self.n += 1
        if self.side is Side.BUY:
            await self.client.withdraw(f"w-{self.n}", self.rng.randint(1, 100))
            return
        owed = [e for e in await self.client.entitlements()
                if e.provider == self.account_id and e.entitlement > 0]  # fmt: skip
        if owed:
            e = self.rng.choice(owed)
            await self.client.report_delivery(f"d-{self.n}", SYM, e.buyer, min(e.entitlement, LOT))


@dataclass(slots=True)
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    refused: int = 0
    errors: int = 0  # 5xx or no answer


@dataclass(slots=True)
class Sample:
    minute: float
    commands: int
    rate: float
    p50_ms: float
    p99_ms: float
    refused: int
    errors: int
    rss_mb: float


async def set_up(proc: ExchangeProcess, traders: int) -> tuple[TokexClient, list[Trader]]:
    conn = await asyncpg.connect(proc.database_url())
    try:
        created, key = await create_account(conn, Role.OPERATOR, "soak", None)
    finally:
        await conn.close()
    assert key is not None
    http = httpx.AsyncClient(base_url=proc.base_url, timeout=30,
                             limits=httpx.Limits(max_connections=traders * 2 + 4))  # fmt: skip
    root = TokexClient(proc.base_url, created.key_id, key, http=http)
    await root.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=1000,
                         maker_fee_bps=5, taker_fee_bps=10, provider_fee_bps=10)
    )  # fmt: skip
    out = []
    for i in range(traders):
        role = Role.PROVIDER if i % 2 == 0 else Role.BUYER
        account = await root.create_account(role, f"{role.value}-{i}")
        client = root.as_account(account)
        if role is Role.PROVIDER:
            await client.list_capacity("cap", SYM, 10**12)
        else:
            await root.deposit(f"fund-{i}", account.account_id, 10**13)
        side = Side.SELL if role is Role.PROVIDER else Side.BUY
        out.append(Trader(client, account.account_id, side, random.Random(i)))
    return root, out


async def calibrate(traders: list[Trader], seconds: float) -> float:
    """Acknowledged orders per second, every trader as fast as it is answered."""
    deadline = time.monotonic() + seconds
    counts = [0] * len(traders)

    async def run(i: int, t: Trader) -> None:
        while time.monotonic() < deadline:
            try:
                await t.place(crossing=t.rng.random() < 0.2)
                counts[i] += 1
                if len(t.open) > KEEP_OPEN:
                    await t.client.cancel_order(t.open.pop(0))
            except TokexApiError:
                pass  # refused, or the order to cancel filled meanwhile

    await asyncio.gather(*(run(i, t) for i, t in enumerate(traders)))
    return sum(counts) / seconds


async def paced(
    step: Callable[[], Awaitable[None]], rate: float, stop: asyncio.Event, window: list[Window]
) -> None:
    """`step()` every 1/rate s; latency from when each was due (no coordinated omission)."""
    interval = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await step()
        except TokexApiError as exc:
            if exc.status >= 500:
                window[0].errors += 1
            else:
                window[0].refused += 1
        except httpx.HTTPError:
            window[0].errors += 1
        window[0].latencies_ms.append((time.monotonic() - due) * 1000)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(proc: ExchangeProcess, traders: list[Trader], root: TokexClient, rate: float,
               minutes: float, sample_s: float) -> list[Sample]:  # fmt: skip
    stop = asyncio.Event()
    window = [Window()]
    n = 0

    async def treasury() -> None:
        """A deposit, and the pending withdrawals paid (their holds do not pile up)."""
        nonlocal n
        n += 1
        await root.deposit(f"soak-{n}", traders[1].account_id, 10**6)
        for w in (await root.withdrawals(status="pending"))[:50]:
            await root.mark_withdrawal(w.account_id, w.withdrawal_id, paid=True)

    tasks = [asyncio.create_task(paced(t.step, rate / len(traders), stop, window))
             for t in traders]  # fmt: skip
    tasks.append(asyncio.create_task(paced(treasury, 1.0, stop, window)))
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < minutes * 60 - 1e-6:
            await asyncio.sleep(min(sample_s, minutes * 60 - (time.monotonic() - started)))
            w, window[0] = window[0], Window()
            elapsed = time.monotonic() - started
            samples.append(Sample(
                elapsed / 60, len(w.latencies_ms), len(w.latencies_ms) / sample_s,
                _percentile(w.latencies_ms, 0.5), _percentile(w.latencies_ms, 0.99), w.refused,
                w.errors, proc.rss_kib() / 1024,
            ))  # fmt: skip
            print(f"sample {len(samples)}: {samples[-1]}", file=sys.stderr, flush=True)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return samples


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def verdict(samples: list[Sample]) -> tuple[bool, str]:
    """(no growth trend, the sentence saying so) over the samples after the first."""
    steady = samples[1:] if len(samples) > 2 else samples
    xs = [s.minute for s in steady]
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 0.0
    rss = [s.rss_mb for s in steady]
    rss_growth = slope(xs, rss) * span
    rss_flat = rss_growth <= max(10.0, 0.05 * (sum(rss) / len(rss)))
    p99 = [s.p99_ms for s in steady]
    fit_start = sum(p99) / len(p99) - slope(xs, p99) * span / 2
    p99_growth = slope(xs, p99) * span
    p99_flat = p99_growth < 5.0 or p99_growth <= 0.5 * max(fit_start, 1e-9)
    text = (
        f"RSS {'flat' if rss_flat else 'GROWING'} ({rss_growth:+.1f} MB over {span:.1f} min "
        f"by the fit), p99 {'flat' if p99_flat else 'GROWING'} ({p99_growth:+.1f} ms)"
    )
    return rss_flat and p99_flat, text


def print_table(max_rate: float, rate: float, samples: list[Sample], verdict_text: str) -> None:
    print(f"maximum {max_rate:,.0f} orders/s (closed loop); soak at {rate:,.0f} commands/s")
    print(f"{'minute':>6} {'cmds':>6} {'rate/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'refused':>7} "
          f"{'errors':>6} {'RSS MB':>7}")  # fmt: skip
    for s in samples:
        print(f"{s.minute:>6.1f} {s.commands:>6} {s.rate:>7.1f} {s.p50_ms:>7.1f} {s.p99_ms:>7.1f} "
              f"{s.refused:>7} {s.errors:>6} {s.rss_mb:>7.1f}")  # fmt: skip
    print(f"verdict: {verdict_text}")


async def run(data_dir: Path, minutes: float, traders: int, calibrate_s: float,
              sample_s: float) -> tuple[float, float, list[Sample]]:  # fmt: skip
    proc = ExchangeProcess(data_dir, env=NO_RATE_LIMIT)
    await asyncio.to_thread(proc.start)
    try:
        root, people = await set_up(proc, traders)
        max_rate = await calibrate(people, calibrate_s)
        rate = max(1.0, max_rate / 2)
        samples = await soak(proc, people, root, rate, minutes, sample_s)
        await root.aclose()
        return max_rate, rate, samples
    finally:
        await asyncio.to_thread(proc.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--traders", type=int, default=8)
    parser.add_argument("--calibrate-seconds", type=float, default=20.0)
    parser.add_argument("--sample-seconds", type=float, default=60.0)
    parser.add_argument("--data-dir", default=None, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args(argv)
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tokex-soak-"))
    max_rate, rate, samples = asyncio.run(
        run(root / "data", args.minutes, args.traders, args.calibrate_seconds, args.sample_seconds)
    )
    flat, text = verdict(samples)
    print_table(max_rate, rate, samples, text)
    if args.data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
