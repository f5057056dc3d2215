"""Timed replays for `ops.bench.engine`: throughput passes that interleave the
engines compared (so a noisy neighbour slows them alike), and a latency pass
with a timer around every command, by command kind."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from schemas.market import Command, Event


class Engine(Protocol):
    def process(self, cmd: Command) -> list[Event]: ...

    def state_hash(self) -> bytes: ...


Factory = Callable[[], Engine]


class HashMismatch(Exception):
    """A replay did not reach the generator's state: the figures would be void."""


class Replay:
    """One timed replay: wall and process CPU time, events, the engine after."""

    def __init__(self, wall_ns: int, cpu_ns: int, n_events: int, engine: Engine) -> None:
        self.wall_ns = wall_ns
        self.cpu_ns = cpu_ns
        self.n_events = n_events
        self.engine = engine


def replay(make: Factory, cmds: Sequence[Command], expected_hash: bytes, label: str) -> Replay:
    """One perf_counter_ns around the whole loop; events built and returned."""
    engine = make()
    process = engine.process
    gc.collect()
    cpu0 = time.process_time_ns()
    start = time.perf_counter_ns()
    n_events = 0
    for cmd in cmds:
        n_events += len(process(cmd))
    wall = time.perf_counter_ns() - start
    cpu = time.process_time_ns() - cpu0
    if engine.state_hash() != expected_hash:
        raise HashMismatch(f"{label}: state hash differs from the generator's run")
    return Replay(wall, cpu, n_events, engine)


def interleaved(
    engines: dict[str, Factory], cmds: Sequence[Command], expected_hash: bytes, repeat: int
) -> dict[str, list[Replay]]:
    """`repeat` rounds, each replaying the stream once on every engine in turn, the
    order reversed every other round: the place in a round moved a replay's CPU time
    by ~6% (measured: the shallow stream 0.89x new/old with the new book first in
    every round, 0.97x with it last)."""
    out: dict[str, list[Replay]] = {name: [] for name in engines}
    for i in range(repeat):
        order = list(engines) if i % 2 == 0 else list(reversed(engines))
        for name in order:
            out[name].append(replay(engines[name], cmds, expected_hash, name))
    return out


def rate(n: int, runs: list[Replay]) -> tuple[float, float, float]:
    """(best, median, best by CPU time) commands per second."""
    walls = sorted(r.wall_ns for r in runs)
    cpus = sorted(r.cpu_ns for r in runs)
    return n / (walls[0] / 1e9), n / (walls[len(walls) // 2] / 1e9), n / (cpus[0] / 1e9)


def latencies(
    make: Factory,
    cmds: Sequence[Command],
    expected_hash: bytes,
    kind_of: Callable[[Command], str],
    label: str,
) -> tuple[list[int], dict[str, list[int]]]:
    """perf_counter_ns around every command (the timer calls cost ~100 ns each,
    so this pass is not used for throughput): all latencies in stream order, and
    sorted latencies by kind."""
    engine = make()
    process = engine.process
    clock = time.perf_counter_ns
    lat = [0] * len(cmds)
    gc.collect()
    for i, cmd in enumerate(cmds):
        t = clock()
        process(cmd)
        lat[i] = clock() - t
    if engine.state_hash() != expected_hash:
        raise HashMismatch(f"{label}: state hash differs in the latency pass")
    by_kind: dict[str, list[int]] = {}
    for cmd, ns in zip(cmds, lat, strict=True):
        by_kind.setdefault(kind_of(cmd), []).append(ns)
    for values in by_kind.values():
        values.sort()
    return lat, by_kind


def pct_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def summary_us(sorted_ns: list[int]) -> str:
    return (
        f"p50 {pct_us(sorted_ns, 0.5):.2f} us, p99 {pct_us(sorted_ns, 0.99):.2f} us, "
        f"p99.9 {pct_us(sorted_ns, 0.999):.2f} us, max {sorted_ns[-1] / 1000:.1f} us"
    )
