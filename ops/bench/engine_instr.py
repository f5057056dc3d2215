"""Instructions per command of the book (pure, and compiled when built) and of the
old book, counted by valgrind.

On a shared machine wall and even CPU time move with the neighbours' load; an
instruction count does not. This runs each replay under
`valgrind --tool=cachegrind --cache-sim=no` twice, once replaying the stream
once and once replaying it twice in the same process, and reports the
difference divided by the stream's length: one replay's instructions, without
the interpreter's start, the imports and the loading of the stream.

    python -m ops.bench.engine_instr [--commands N] [--deep-commands D] [--seed S]
                                     [--scenario both|shallow|deep|cancel]

`--scenario cancel` counts what one cancel costs with the book near 1,000 and
near 100,000 resting orders: the deep stream held at that size up to a point
(the prefix), then the prefix followed by cancels of resting orders drawn at
random (so at random queue positions); the difference of the two replays'
counts divided by the cancels is one cancel's instructions, and, with
cachegrind's cache simulation on, its first-level and last-level data misses:
the work a cancel does, apart from what the memory under it costs. (The
simulated last-level cache is the host's; a difference of a few LLd misses
either way, even below zero, is the noise of the rest of the process.)

Defaults: both streams of `ops.bench.engine` at 300,000 commands each (the
shallow one shorter than that bench's 1,000,000: under valgrind a replay runs
~50x slower). Needs valgrind on the PATH and a git checkout (the old book is
read from git, see `ops.bench.baseline`). Each replay checks the generator's
state hash, as in `ops.bench.engine`.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

from market.book import OrderBook
from market.book_select import compiled_book
from ops.bench.baseline import BASELINE_COMMIT
from ops.bench.baseline import load as load_baseline
from ops.bench.engine import ENGINE_NAMES, bench_instrument, generate, make_engine
from ops.bench.engine_runs import Engine, Factory, HashMismatch
from schemas.market import CancelOrder, Command

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
_D1 = re.compile(r"D1\s+misses:\s+([\d,]+)")
_LLD = re.compile(r"LLd\s+misses:\s+([\d,]+)")
CANCEL_SIZES = (1_000, 100_000)


def _factory(engine: str) -> Factory:
    if engine == "pure":
        return lambda: make_engine(OrderBook)
    if engine == "compiled":
        compiled, why = compiled_book()
        if compiled is None:
            raise SystemExit(f"no compiled book: {why}")
        return lambda: make_engine(compiled)
    old, why = load_baseline(BASELINE_COMMIT)
    if old is None:
        raise SystemExit(f"no baseline: {why}")
    return lambda: old.make([bench_instrument()])


def _replay_file(path: str, engine: str, times: int) -> None:
    """The child's side: load the stream, replay its first `limit` commands `times`
    times on fresh engines.
    The engines stay alive to the end (no replay pays for freeing the one before)
    and only the last is hashed (the hash is not the replay's cost)."""
    with open(path, "rb") as f:
        cmds, expected, limit = pickle.load(f)
    make = _factory(engine)
    kept: list[Engine] = []
    for _ in range(times):
        kept.append(make())
        gc.collect()
        process = kept[-1].process
        for cmd in islice(cmds, limit):
            process(cmd)
    if kept[-1].state_hash() != expected:
        raise HashMismatch(f"{engine}: state hash differs from the generator's run")


def _start(path: str, engine: str, times: int, cache_sim: bool = False) -> subprocess.Popen[str]:
    """A valgrind replay; PYTHONHASHSEED fixed, so that the dicts and sets of the
    two processes compared collide alike (a random seed moves the count ~1%)."""
    sim = "--cache-sim=yes" if cache_sim else "--cache-sim=no"
    return subprocess.Popen(
        [
            "valgrind", "--tool=cachegrind", sim, "--cachegrind-out-file=/dev/null",
            sys.executable, "-m", "ops.bench.engine_instr", "--replay", path, engine, str(times),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip


def _instructions(path: str, engine: str) -> tuple[int, int]:
    """Instructions of the process replaying once and of the one replaying twice
    (run side by side)."""
    procs = [_start(path, engine, times) for times in (1, 2)]
    counts = []
    for times, proc in zip((1, 2), procs, strict=True):
        _, err = proc.communicate()
        match = _REFS.search(err)
        if proc.returncode != 0 or match is None:
            raise SystemExit(f"valgrind replay failed ({engine}, x{times}):\n{err[-2000:]}")
        counts.append(int(match.group(1).replace(",", "")))
    return counts[0], counts[1]


def _per_command(name: str, cmds: list[Command], expected: bytes, tmp: Path) -> None:
    path = str(tmp / f"{name}.pickle")
    with open(path, "wb") as f:
        pickle.dump((cmds, expected, len(cmds)), f)
    counts = {}
    engines = ["pure", "compiled", "old"] if compiled_book()[0] is not None else ["pure", "old"]
    for engine in engines:
        one, two = _instructions(path, engine)
        counts[engine] = (two - one) / len(cmds)
    print(f"{name}: {len(cmds):,} commands; instructions per command:")
    for engine, count in counts.items():
        ratio = "" if engine == "old" else f"; old/this {counts['old'] / count:.2f}x"
        print(f"  {ENGINE_NAMES[engine]:<38} {count:>8,.0f}{ratio}")


def _counts(proc: subprocess.Popen[str], label: str) -> tuple[int, int, int]:
    """Instructions, D1 and LLd misses of a finished cache-simulating replay."""
    _, err = proc.communicate()
    found = [rx.search(err) for rx in (_REFS, _D1, _LLD)]
    if proc.returncode != 0 or any(m is None for m in found):
        raise SystemExit(f"valgrind replay failed ({label}):\n{err[-2000:]}")
    a, b, c = (int(m.group(1).replace(",", "")) for m in found if m is not None)
    return a, b, c


def _cancel_stream(size: int, seed: int) -> tuple[list[Command], list[Command], int]:
    """The held deep stream up to its first command with `size` resting (the
    prefix), and the prefix followed by cancels of a fifth of the resting orders
    (at most 5,000) drawn at random."""
    from ops.bench.engine import SYMBOL
    from ops.bench.engine_deep import generate_deep

    stream = generate_deep(size * 4 + 20_000, seed, size)
    at = next(i for i, r in enumerate(stream.resting_before) if r >= size)
    prefix = stream.cmds[:at]
    engine = make_engine(OrderBook)
    for cmd in prefix:
        engine.process(cmd)
    resting = engine.book(SYMBOL).open_orders()
    rng = random.Random(seed)
    picked = rng.sample(resting, min(5_000, len(resting) // 5))
    t = prefix[-1].time
    cancels: list[Command] = [
        CancelOrder(instrument=SYMBOL, order_id=o.order_id, owner=o.owner, time=t) for o in picked
    ]
    return prefix, prefix + cancels, len(cancels)


def _per_cancel(seed: int, tmp: Path) -> None:
    engines = ["pure", "compiled", "old"] if compiled_book()[0] is not None else ["pure", "old"]
    print("cancel: instructions, D1 and LLd misses per cancel (cachegrind's simulated caches):")
    for size in CANCEL_SIZES:
        prefix, whole, n = _cancel_stream(size, seed)
        paths = []
        for name, limit in (("prefix", len(prefix)), ("whole", len(whole))):
            # both files hold the whole stream (loading it costs the same in both)
            engine = make_engine(OrderBook)
            for cmd in whole[:limit]:
                engine.process(cmd)
            path = str(tmp / f"cancel-{size}-{name}.pickle")
            with open(path, "wb") as f:
                pickle.dump((whole, engine.state_hash(), limit), f)
            paths.append(path)
        for engine_name in engines:
            procs = [_start(path, engine_name, 1, cache_sim=True) for path in paths]
            before, after = (_counts(p, f"{engine_name} at {size}") for p in procs)
            per = [(b - a) / n for a, b in zip(before, after, strict=True)]
            print(
                f"  {size:>7,} resting, {n:,} cancels  {ENGINE_NAMES[engine_name]:<38}"
                f" {per[0]:>7,.0f} instr, {per[1]:>5.1f} D1 misses, {per[2]:>5.1f} LLd misses"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=300_000, help="shallow stream length")
    parser.add_argument("--deep-commands", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenario", choices=["both", "shallow", "deep", "cancel"], default="both")
    parser.add_argument("--replay", nargs=3, metavar=("FILE", "ENGINE", "TIMES"), help="internal")
    args = parser.parse_args(argv)
    if args.replay:
        path, engine, times = args.replay
        try:
            _replay_file(path, engine, int(times))
        except HashMismatch as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tokex-instr-") as tmp:
        if args.scenario == "cancel":
            _per_cancel(args.seed, Path(tmp))
            return 0
        if args.scenario != "deep":
            cmds, expected, _ = generate(args.commands, args.seed, 1_000)
            _per_command("shallow", cmds, expected, Path(tmp))
        if args.scenario != "shallow":
            from ops.bench.engine_deep import generate_deep

            stream = generate_deep(args.deep_commands, args.seed)
            _per_command("deep", stream.cmds, stream.state_hash, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
