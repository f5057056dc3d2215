"""Matching-engine benchmark: seeded streams, the engine beside the old book.

The same command streams on one instrument, replayed on the book in pure
Python (the default), on the compiled book when it is built and current
(`python -m ops.build_engine`, see `market.book_select`; skipped otherwise) and
on the old book, the one before the constant-time levels.

    python -m ops.bench.engine [--commands N] [--deep-commands D] [--seed S]
                               [--resting R] [--repeat K] [--scenario both|shallow|deep]
                               [--no-baseline]

Two workloads:

- shallow (N commands, 1,000,000): shaped like the usual exchange benchmarks,
  about R (1,000) resting orders over several hundred price levels; mostly new
  limit orders near the touch, a share of them crossing; cancels; amends (size
  down, price moves); some IOC, FOK and market orders; 20 owners with mixed
  STP modes; every order has a client order id;
- deep (D commands, 300,000; see `ops.bench.engine_deep`): a token market
  whose levels hold hundreds of orders, ending with 100,000+ resting, 25%
  cancels spread over queue positions, mass cancels and an expiry burst;
  latency by command kind, and cancel latency with the book held near 1,000
  and near 100,000 resting orders.

Each stream is generated beforehand by driving a scratch engine (so cancels and
amends name orders that really rest), then replayed on fresh engines:

1. throughput: one `perf_counter_ns` around the whole replay loop, K rounds,
   each round replaying on every engine in turn (best and median; on a shared
   machine the best is the least disturbed, and the figure by process CPU time
   is shown too, with the ratios to the old book). The baseline is `market/book.py` and
   `market/engine.py` at commit `ops.bench.baseline.BASELINE_COMMIT`, read with
   `git show` (nothing old ships in the package); without git it is skipped;
2. latency: a separate replay with `perf_counter_ns` around every command (the
   timer calls cost ~100 ns each, so this pass is slower and is not used for
   the throughput figure).

Every pass checks that the replay gives the generator's final state hash (so
both engines reach the same book, byte for byte).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from market.book import OrderBook
from market.book_select import compiled_book
from market.engine import MatchingEngine
from market.instruments import make_instrument
from ops.bench.baseline import BASELINE_COMMIT
from ops.bench.baseline import load as load_baseline
from ops.bench.engine_runs import (
    Factory,
    HashMismatch,
    Replay,
    interleaved,
    latencies,
    rate,
    summary_us,
)
from schemas.market import (
    AmendOrder,
    CancelOrder,
    Command,
    Event,
    Fill,
    Instrument,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)

SYMBOL = "llama-3.1-70b/2026-12-01T00Z/1h"
LOT = 1_000
MID = 50_000  # price units per lot, tick 1


def bench_instrument() -> Instrument:
    return make_instrument(SYMBOL, lot_size=LOT, tick_size=1, price_min=1, price_max=1_000_000)


def make_engine(book_cls: type[OrderBook] | None = None) -> MatchingEngine:
    """The engine with the bench's instrument; its book the engine's own choice
    (`market.book_select`: compiled when built) unless `book_cls` is given."""
    if book_cls is None:
        return MatchingEngine([bench_instrument()])
    engine = MatchingEngine()
    engine._books[SYMBOL] = book_cls(bench_instrument())
    return engine


class _Live:
    """Ids of resting orders with O(1) add, remove and random pick."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.pos: dict[int, int] = {}
        self.owner: dict[int, str] = {}

    def add(self, oid: int, owner: str) -> None:
        self.pos[oid] = len(self.ids)
        self.ids.append(oid)
        self.owner[oid] = owner

    def discard(self, oid: int) -> None:
        i = self.pos.pop(oid, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != oid:
            self.ids[i] = last
            self.pos[last] = i
        del self.owner[oid]

    def __len__(self) -> int:
        return len(self.ids)


def generate(n: int, seed: int, resting: int) -> tuple[list[Command], bytes, Counter[str]]:
    """The command stream, the state hash it leads to, and event counts."""
    rng = random.Random(seed)
    engine = make_engine()
    book = engine.book(SYMBOL)
    live = _Live()
    owners = [f"acct-{i:02d}" for i in range(20)]
    stp_modes = [StpMode.CANCEL_NEWEST] * 6 + [
        StpMode.CANCEL_OLDEST,
        StpMode.CANCEL_BOTH,
        StpMode.DECREMENT_AND_CANCEL,
    ]
    cmds: list[Command] = []
    stats: Counter[str] = Counter()
    next_id = 1
    for i in range(n):
        t = 1_000_000 + i
        bid = book.best_bid()
        ask = book.best_ask()
        mid = (bid + ask) // 2 if bid is not None and ask is not None else MID
        r = rng.random()
        cancel_share = 0.2 if len(live) < resting else 0.4
        cmd: Command
        if len(live) > 0 and 0.1 <= r < 0.1 + cancel_share:
            oid = live.ids[rng.randrange(len(live))]
            cmd = CancelOrder(instrument=SYMBOL, order_id=oid, owner=live.owner[oid], time=t)
        elif len(live) > 0 and r < 0.1:
            oid = live.ids[rng.randrange(len(live))]
            order = book.get_order(oid)
            assert order is not None
            if rng.random() < 0.5 and order.open_quantity > LOT:
                cmd = AmendOrder(
                    instrument=SYMBOL,
                    order_id=oid,
                    owner=order.owner,
                    time=t,
                    quantity=order.open_quantity - LOT,
                )
            else:  # move the price one to three ticks away from the touch
                step = rng.randint(1, 3)
                moved = order.price - step if order.side is Side.BUY else order.price + step
                cmd = AmendOrder(
                    instrument=SYMBOL, order_id=oid, owner=order.owner, time=t, price=moved
                )
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            owner = owners[rng.randrange(len(owners))]
            qty = LOT * rng.randint(1, 20)
            kind = rng.random()
            tif = TimeInForce.GTC
            order_type = OrderType.LIMIT
            price: int | None
            # 10% aggressive (through the touch); the rest passive, mostly near the
            # touch with a tail over some hundred levels
            offset = -rng.randint(0, 5) if kind < 0.10 else int(rng.expovariate(1 / 60)) + 1
            price = mid - offset if side is Side.BUY else mid + offset
            if kind > 0.96:
                order_type, tif = OrderType.MARKET, TimeInForce.IOC
                price = None if rng.random() < 0.5 else mid + (10 if side is Side.BUY else -10)
            elif kind > 0.93:
                tif = TimeInForce.FOK
                price = mid + (3 if side is Side.BUY else -3)
            elif kind > 0.89:
                tif = TimeInForce.IOC
                price = mid + (2 if side is Side.BUY else -2)
            cmd = NewOrder(
                instrument=SYMBOL,
                order_id=next_id,
                owner=owner,
                side=side,
                quantity=qty,
                time=t,
                price=price,
                order_type=order_type,
                tif=tif,
                stp=stp_modes[rng.randrange(len(stp_modes))],
                client_order_id=f"c{next_id}",
            )
            next_id += 1
        cmds.append(cmd)
        events = engine.process(cmd)
        _track(events, live)
        n_fills = sum(1 for ev in events if isinstance(ev, Fill))
        stats["fills"] += n_fills
        stats["trading commands"] += n_fills > 0
        for ev in events:
            if isinstance(ev, OrderRejected):
                stats[f"reject {ev.reason}"] += 1
    return cmds, engine.state_hash(), stats


def _track(events: list[Event], live: _Live) -> None:
    for ev in events:
        if isinstance(ev, OrderAccepted):
            if ev.tif is TimeInForce.GTC or ev.tif is TimeInForce.GTD:
                live.add(ev.order_id, ev.owner)
        elif isinstance(ev, Fill):
            if ev.maker_open == 0:
                live.discard(ev.maker_order_id)
            if ev.taker_open == 0:
                live.discard(ev.taker_order_id)
        elif isinstance(ev, OrderCancelled):
            if ev.open_quantity == 0:
                live.discard(ev.order_id)
        elif isinstance(ev, OrderExpired):
            live.discard(ev.order_id)


def _describe_shallow(cmds: list[Command], seed: int, gen_s: float, stats: Counter[str]) -> None:
    mix = Counter(
        str(c.tif) if isinstance(c, NewOrder) and c.order_type is OrderType.LIMIT
        else "market" if isinstance(c, NewOrder)
        else type(c).__name__
        for c in cmds
    )  # fmt: skip
    print(f"workload: {len(cmds):,} commands, seed {seed}, generated in {gen_s:.1f}s")
    print("  mix: " + ", ".join(f"{k} {v / len(cmds):.1%}" for k, v in sorted(mix.items())))
    rejects = ", ".join(
        f"{k.removeprefix('reject ')} {v:,}" for k, v in sorted(stats.items()) if k[:7] == "reject "
    )
    print(
        f"  {stats['fills']:,} fills; {stats['trading commands'] / len(cmds):.1%} of commands "
        f"trade; rejects: {rejects or 'none'}"
    )


def _print_throughput(n: int, runs: dict[str, list[Replay]], repeat: int) -> None:
    """One line per engine (best of its passes), with the ratios to the old book."""
    print(
        f"throughput, best of {repeat} passes interleaved (one perf_counter_ns around the "
        "whole loop, events built and returned; by process CPU time beside it):"
    )
    old = rate(n, runs["old"]) if "old" in runs else None
    for name, replays in runs.items():
        best, median, cpu = rate(n, replays)
        line = (
            f"  {ENGINE_NAMES[name]:<38} {best:>10,.0f} commands/s (median {median:,.0f}; "
            f"CPU {cpu:,.0f})"
        )
        if old is not None and name != "old":
            line += f"; x old: {best / old[0]:.2f} best, {cpu / old[2]:.2f} by CPU"
        print(line)


ENGINE_NAMES = {
    "pure": "new book, pure Python (default)",
    "compiled": "new book, compiled (ops.build_engine)",
    "old": f"old book ({BASELINE_COMMIT})",
}


def _engines(baseline: bool) -> dict[str, Factory]:
    """pure, compiled (when built and current) and the old book, in that order."""
    engines: dict[str, Factory] = {"pure": lambda: make_engine(OrderBook)}
    compiled, why = compiled_book()
    if compiled is None:
        print(f"(no compiled book: {why})")
    else:
        engines["compiled"] = lambda: make_engine(compiled)
    if baseline:
        old, why = load_baseline(BASELINE_COMMIT)
        if old is None:
            print(f"(no baseline: {why})")
        else:
            engines["old"] = lambda: old.make([bench_instrument()])
    return engines


def _shallow(args: argparse.Namespace, engines: dict[str, Factory]) -> None:
    t0 = time.perf_counter()
    cmds, expected_hash, stats = generate(args.commands, args.seed, args.resting)
    _describe_shallow(cmds, args.seed, time.perf_counter() - t0, stats)
    runs = interleaved(engines, cmds, expected_hash, args.repeat)
    engine = runs["pure"][-1].engine
    assert isinstance(engine, MatchingEngine)
    book = engine.book(SYMBOL)
    full = book.depth(10**9)
    n_events = runs["pure"][-1].n_events
    print(
        f"book at end: {len(book)} resting orders on {len(full.bids)} bid + {len(full.asks)} "
        f"ask levels; {n_events:,} events ({n_events / len(cmds):.2f}/command)"
    )
    _print_throughput(len(cmds), runs, args.repeat)
    print("latency per command (perf_counter_ns around each call, separate pass):")
    for name, make in engines.items():
        lat, _ = latencies(make, cmds, expected_hash, lambda c: "", f"{name} latency pass")
        lat.sort()
        print(f"  {ENGINE_NAMES[name]:<38} {summary_us(lat)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resting", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3, help="throughput passes")
    parser.add_argument(
        "--deep-commands",
        type=int,
        default=None,
        help="deep-book stream length (default: 30%% of --commands, so 300,000)",
    )
    parser.add_argument(
        "--scenario", choices=["both", "shallow", "deep"], default="both", help="what to run"
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help=f"do not load the old book ({BASELINE_COMMIT})"
    )
    args = parser.parse_args(argv)
    engines = _engines(not args.no_baseline)
    try:
        if args.scenario != "deep":
            _shallow(args, engines)
        if args.scenario != "shallow":
            from ops.bench.engine_deep import run_deep

            deep_n = args.deep_commands or max(1_000, (args.commands * 3) // 10)
            run_deep(deep_n, args.seed, args.repeat, engines)
    except HashMismatch as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
