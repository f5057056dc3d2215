"""Instructions per command of the book (pure, and compiled when built) and of the
old book, counted by valgrind.

On a shared machine wall and even CPU time move with the neighbours' load; an
instruction count does not. This runs each replay under
`valgrind --tool=cachegrind --cache-sim=no` twice, once replaying the stream
once and once replaying it twice in the same process, and reports the
difference divided by the stream's length: one replay's instructions, without
the interpreter's start, the imports and the loading of the stream.

    python -m ops.bench.engine_instr [--commands N] [--deep-commands D] [--seed S]
                                     [--scenario both|shallow|deep]

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
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from market.book import OrderBook
from market.book_select import compiled_book
from ops.bench.baseline import BASELINE_COMMIT
from ops.bench.baseline import load as load_baseline
from ops.bench.engine import ENGINE_NAMES, bench_instrument, generate, make_engine
from ops.bench.engine_runs import Engine, Factory, HashMismatch
from schemas.market import Command

_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


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
    """The child's side: load the stream, replay it `times` times on fresh engines.
    The engines stay alive to the end (no replay pays for freeing the one before)
    and only the last is hashed (the hash is not the replay's cost)."""
    with open(path, "rb") as f:
        cmds, expected = pickle.load(f)
    make = _factory(engine)
    kept: list[Engine] = []
    for _ in range(times):
        kept.append(make())
        gc.collect()
        process = kept[-1].process
        for cmd in cmds:
            process(cmd)
    if kept[-1].state_hash() != expected:
        raise HashMismatch(f"{engine}: state hash differs from the generator's run")


def _start(path: str, engine: str, times: int) -> subprocess.Popen[str]:
    """A valgrind replay; PYTHONHASHSEED fixed, so that the dicts and sets of the
    two processes compared collide alike (a random seed moves the count ~1%)."""
    return subprocess.Popen(
        [
            "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
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
        pickle.dump((cmds, expected), f)
    counts = {}
    engines = ["pure", "compiled", "old"] if compiled_book()[0] is not None else ["pure", "old"]
    for engine in engines:
        one, two = _instructions(path, engine)
        counts[engine] = (two - one) / len(cmds)
    print(f"{name}: {len(cmds):,} commands; instructions per command:")
    for engine, count in counts.items():
        ratio = "" if engine == "old" else f"; old/this {counts['old'] / count:.2f}x"
        print(f"  {ENGINE_NAMES[engine]:<38} {count:>8,.0f}{ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--commands", type=int, default=300_000, help="shallow stream length")
    parser.add_argument("--deep-commands", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenario", choices=["both", "shallow", "deep"], default="both")
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
