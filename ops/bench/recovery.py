"""Restart time of the exchange after N journal entries, and whether it comes back the same.

    python -m ops.bench.recovery [--entries 100000,1000000] [--data-dir DIR]

For each N: a fresh database is filled with N `market_journal` entries through the real
sequencer (in-process, batches of `--batch` commands, the Merkle log and a signed
checkpoint per batch as `tokex serve` writes them): a rolling set of instruments, buyers
and providers placing limit orders around a mid price (about one in five trades), GTD
orders that expire, cancels, amends, mass cancels (more of them while the books are
deeper than about 20,000 resting orders), deposits, withdrawals, and every
`--settle-every` entries the oldest instrument closed and settled and a new one listed.
The filler is then killed (kill -9: no shutdown snapshot), and a fresh process opens the
exchange as `tokex serve` does (ledger, Merkle log, sequencer recovery, market data) and
reports the time from start to ready and whether the state it rebuilt (books' state hash,
balances, settlements) equals the one before the kill; then the same after a clean stop
(the books' and the ledger's last snapshots written: nothing left to replay). Each is
measured with snapshots ("after") and with their loading off, the journal replayed from
its first row ("before").

Uses DATABASE_URL when set, else the embedded PostgreSQL in a temporary data directory
(or --data-dir). Each bench database is dropped at the end (--keep keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from ledger.keys import load_or_create_signer
from ledger.log import MerkleLog
from market.feed import MarketData
from market.sequencer import (
    AmendOp,
    AnyOp,
    CancelAllOp,
    CancelOp,
    CloseInstrumentOp,
    CreateInstrumentOp,
    DepositOp,
    Done,
    ListingOp,
    PlaceOp,
    Sequencer,
    WithdrawalOutcomeOp,
    WithdrawOp,
)
from market.snapshot_writer import SnapshotPolicy
from market.snapshots import journal_size
from ops.bench.ledger import drop_database, fresh_database
from ops.config import Settings
from ops.database import database_url, remove_embedded
from schemas.market import Side, TimeInForce
from schemas.trading import (
    AmendOrder,
    CreateInstrument,
    Deposit,
    Listing,
    OrderView,
    PlaceOrder,
    WithdrawalRequest,
)

EXCHANGE = "bench.tokex/ledger"
LOT = 1_000
MID = 1_000
LIVE_INSTRUMENTS = 6
BUYERS = 60
PROVIDERS = 60
MODELS = ("llama-3.1-70b", "qwen-2.5-72b", "mistral-large")
RESTING = 20_000


# -- filling ---------------------------------------------------------------------------


@dataclass(slots=True)
class Filler:
    """Generates a realistic command mix and feeds it to the sequencer in large batches."""

    seq: Sequencer
    rng: random.Random
    batch: int
    live: list[str] = field(default_factory=list)
    opened: int = 0  # instruments listed so far
    orders: int = 0
    resting: dict[str, list[int]] = field(default_factory=dict)  # account -> open order ids
    withdrawals: list[tuple[str, str]] = field(default_factory=list)
    counter: int = 0

    def _symbol(self, n: int) -> str:
        model = MODELS[n % len(MODELS)]
        day, hour = divmod(n, 24)
        return f"{model}/2031-{1 + day // 28:02d}-{1 + day % 28:02d}T{hour:02d}Z/1h"

    async def setup(self) -> None:
        ops: list[AnyOp] = [
            DepositOp(Deposit(deposit_id=f"fund-b{i}", account_id=f"b{i}", amount=10**14))
            for i in range(BUYERS)
        ]
        await self._submit(ops)
        for _ in range(LIVE_INSTRUMENTS):
            await self.list_instrument()

    async def list_instrument(self) -> None:
        symbol = self._symbol(self.opened)
        self.opened += 1
        await self._submit(
            [
                CreateInstrumentOp(
                    CreateInstrument(
                        symbol=symbol, lot_size=LOT, tick_size=1, price_min=1,
                        price_max=100_000, maker_fee_bps=10, taker_fee_bps=20,
                        provider_fee_bps=10,
                    )
                )
            ]
        )  # fmt: skip
        await self._submit(
            [
                ListingOp(f"p{i}", Listing(listing_id=f"l-{symbol}", instrument=symbol,
                                           quantity=10**13))
                for i in range(PROVIDERS)
            ]
        )  # fmt: skip
        self.live.append(symbol)

    async def settle_oldest(self) -> None:
        symbol = self.live.pop(0)
        await self._submit([CloseInstrumentOp(symbol)])
        await self.list_instrument()

    def _place(self, now_ms: int) -> PlaceOp:
        rng = self.rng
        self.orders += 1
        buy = rng.random() < 0.5
        account = f"b{rng.randrange(BUYERS)}" if buy else f"p{rng.randrange(PROVIDERS)}"
        offset = rng.randint(-4, 24)
        price = MID - offset if buy else MID + offset
        gtd = rng.random() < 0.03
        return PlaceOp(
            account,
            PlaceOrder(
                client_order_id=f"o{self.orders}", instrument=rng.choice(self.live),
                side=Side.BUY if buy else Side.SELL, quantity=LOT * rng.randint(1, 5),
                price=price, tif=TimeInForce.GTD if gtd else None,
                expire_at_ms=now_ms + rng.randint(200, 3_000) if gtd else None,
            ),
        )  # fmt: skip

    def _others(self) -> list[AnyOp]:
        """Cancels, amends, a few mass cancels, deposits and withdrawals."""
        rng = self.rng
        ops: list[AnyOp] = []
        accounts = list(self.resting)
        for _ in range(self.batch // 10):
            if not accounts:
                break
            account = rng.choice(accounts)
            ids = self.resting[account]
            if ids:
                order_id = ids.pop(rng.randrange(len(ids)))
                ops.append(CancelOp(account, order_id))
        for _ in range(self.batch // 50):
            if not accounts:
                break
            account = rng.choice(accounts)
            ids = self.resting[account]
            if ids:
                ops.append(AmendOp(account, rng.choice(ids), AmendOrder(quantity=LOT)))
        # The books stay about `RESTING` orders deep, as a live exchange's do: what a
        # restart must load of them is then the same after 100,000 entries or 1,000,000.
        over = sum(len(book) for book in self.seq.engine.books()) - RESTING
        for _ in range(2 + min(30, max(0, over) // 400)):
            account = rng.choice(accounts) if accounts else "b0"
            ops.append(CancelAllOp(account, None))
            self.resting.pop(account, None)
        self.counter += 1
        buyer = f"b{rng.randrange(BUYERS)}"
        ops.append(DepositOp(Deposit(deposit_id=f"d{self.counter}", account_id=buyer,
                                     amount=rng.randint(1, 10**6))))  # fmt: skip
        wid = f"w{self.counter}"
        ops.append(WithdrawOp(buyer, WithdrawalRequest(withdrawal_id=wid, amount=10)))
        self.withdrawals.append((buyer, wid))
        if len(self.withdrawals) > 3:
            account, old = self.withdrawals.pop(0)
            ops.append(WithdrawalOutcomeOp(account, old, paid=rng.random() < 0.8))
        return ops

    async def step(self) -> None:
        now_ms = time.time_ns() // 1_000_000
        ops: list[AnyOp] = self._others()
        ops += [self._place(now_ms) for _ in range(self.batch - len(ops))]
        for op, outcome in zip(ops, await self._submit(ops), strict=True):
            view = outcome.value if isinstance(outcome, Done) else None
            if (
                isinstance(op, PlaceOp)
                and isinstance(view, OrderView)
                and view.status == "open"
                and op.request.tif is not TimeInForce.GTD
            ):
                self.resting.setdefault(op.account_id, []).append(view.order_id)

    async def _submit(self, ops: Sequence[AnyOp]) -> list[Any]:
        return await self.seq.submit_all(ops)


def state_digest(seq: Sequencer) -> dict[str, str]:
    """What a restart must rebuild exactly: the books, balances (available and held; the
    accounts at zero are left out, so a version that retires them compares equal),
    settlements, the ledger's size."""
    balances = hashlib.sha256()
    for b in sorted(seq.ledger.balances(), key=lambda b: (b.account.owner, b.account.asset,
                                                           b.account.kind)):  # fmt: skip
        if b.available or b.held:
            balances.update(f"{b.account}|{b.available}|{b.held}\n".encode())
    settled = hashlib.sha256(repr(seq.settlements()).encode())
    return {
        "books": seq.engine.state_hash().hex(),
        "balances": balances.hexdigest(),
        "settlements": settled.hexdigest(),
        "ledger_size": str(seq.ledger.size),
    }


async def fill(dsn: str, data_dir: Path, entries: int, batch: int, settle_every: int) -> None:
    """Fill to `entries` journal entries, print the state, and die by SIGKILL."""
    signer = load_or_create_signer(None, data_dir, EXCHANGE)
    seq = await Sequencer.open(dsn, hooks=[MerkleLog(signer, EXCHANGE)], max_batch=batch)
    conn = await asyncpg.connect(dsn)
    filler = Filler(seq, random.Random(11), batch)
    await filler.setup()
    started = time.perf_counter()
    size = await journal_size(conn)
    next_settle = settle_every
    while size < entries:
        await filler.step()
        size = await journal_size(conn)
        if size >= next_settle:
            await filler.settle_oldest()
            next_settle += settle_every
    elapsed = time.perf_counter() - started
    await seq.ledger.wait_for_snapshot()
    await seq.committed()
    size = await journal_size(conn)
    report = {"entries": size, "fill_seconds": round(elapsed, 1),
              "settled": len(seq.settlements()), "state": state_digest(seq)}  # fmt: skip
    print(json.dumps(report), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no shutdown snapshot


# -- restarting ------------------------------------------------------------------------


async def ledger_tail(dsn: str) -> int:
    """Ledger transactions after the ledger's own last snapshot (what its start replays)."""
    conn = await asyncpg.connect(dsn)
    try:
        tail: int = await conn.fetchval(
            """SELECT (SELECT coalesce(max(idx) + 1, 0) FROM ledger_transactions)
                    - (SELECT next_index FROM ledger_snapshot)"""
        )
    finally:
        await conn.close()
    return tail


async def reopen(dsn: str, data_dir: Path, options: dict[str, Any], *, stop: bool) -> None:
    """Open the exchange as `tokex serve` does; print the time to ready and the state.
    Then die by SIGKILL (the database stays as it was for the next run), or with `stop`
    close cleanly: the books' and the ledger's last snapshots are written."""
    signer = load_or_create_signer(None, data_dir, EXCHANGE)
    hub = MarketData()
    tail = await ledger_tail(dsn)
    started = time.perf_counter()
    seq = await Sequencer.open(
        dsn, hooks=[MerkleLog(signer, EXCHANGE)], snapshots=SnapshotPolicy(**options)
    )
    hub.load(book.depth(1_000_000) for book in seq.engine.books())
    elapsed = time.perf_counter() - started
    rebuilt = seq.last_rebuild
    assert rebuilt is not None
    report = {
        "seconds": round(elapsed, 3),
        "state": state_digest(seq),
        "replayed": rebuilt.replayed,
        "ledger_tail": tail,
        "resting": sum(len(b) for b in seq.engine.books()),
        "accounts_loaded": len(seq.ledger.balances()),
    }
    if stop:
        await seq.close()
    print(json.dumps(report), flush=True)
    if not stop:
        os.kill(os.getpid(), signal.SIGKILL)


def _child(args: Sequence[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "ops.bench.recovery", *args],
        stdout=subprocess.PIPE,
        check=False,
    )
    lines = out.stdout.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"bench child {args[0]} printed nothing (exit {out.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


#: The ways to restart that are compared: name -> SnapshotPolicy arguments. The restart
#: writes no snapshot of its own (the interval is out of reach), so each run finds the
#: database as the filler left it.
MODES: dict[str, dict[str, Any]] = {
    "before: journal from row 0": {"enabled": False},
    "after: snapshot + tail": {"interval_entries": 10**15, "interval_seconds": 10**9},
}


async def _measure(base_url: str, data_dir: Path, args: argparse.Namespace) -> None:
    figures: list[tuple[int, str, float, bool]] = []
    for entries in args.entries:
        dsn = await fresh_database(base_url)
        try:
            filled = _child(["fill", dsn, str(data_dir), str(entries), str(args.batch),
                             str(args.settle_every)])  # fmt: skip
            print(
                f"filled {filled['entries']:,} journal entries in {filled['fill_seconds']} s "
                f"({filled['settled']} instruments settled; ledger size "
                f"{int(filled['state']['ledger_size']):,})",
                flush=True,
            )
            for how in ("after kill -9", "after a clean stop"):
                if how != "after kill -9":  # open and stop cleanly: the last snapshots
                    _child(["stop", dsn, str(data_dir), "{}"])
                print(f"  restart {how}:", flush=True)
                for name, options in MODES.items():
                    seconds: list[float] = []
                    same = True
                    for _ in range(args.repeat):
                        opened = _child(["open", dsn, str(data_dir), json.dumps(options)])
                        seconds.append(opened["seconds"])
                        same = same and opened["state"] == filled["state"]
                    best = min(seconds)
                    figures.append((filled["entries"], f"{name}, {how}", best, same))
                    print(f"    {name}: ready in {best:.2f} s (best of {len(seconds)}); "
                          f"replayed {opened['replayed']:,} journal entries and "
                          f"{opened['ledger_tail']:,} ledger transactions; "
                          f"{opened['resting']:,} resting orders; "
                          f"state {'equal' if same else 'DIFFERENT'}", flush=True)  # fmt: skip
        finally:
            if not args.keep:
                await drop_database(base_url, dsn)
    print("\nrestart to ready (s):")
    for name in dict.fromkeys(f[1] for f in figures):
        cells = [f"{f[0]:,}: {f[2]:.2f} ({'same' if f[3] else 'DIFF'})"
                 for f in figures if f[1] == name]  # fmt: skip
        print(f"  {name:<55} " + "   ".join(cells))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("fill", "open", "stop"):
        _child_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries", type=lambda s: [int(n) for n in s.split(",")], default=[100_000, 1_000_000]
    )
    parser.add_argument("--batch", type=int, default=5_000, help="commands per batch")
    parser.add_argument("--settle-every", type=int, default=50_000,
                        help="journal entries between two instrument settlements")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=2, help="restarts per mode (best counts)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    scratch = Path(tempfile.mkdtemp(prefix="tokex-bench-recovery-"))
    try:
        if url is None:
            pg_dir = Path(args.data_dir) if args.data_dir else scratch
            os.chmod(pg_dir, 0o755)
            url = database_url(Settings(data_dir=str(pg_dir)))
        asyncio.run(_measure(url, scratch, args))
    finally:  # the embedded PostgreSQL (if it lives there) and the signing key
        remove_embedded(scratch)


def _child_main(argv: Sequence[str]) -> None:
    what, dsn, data_dir = argv[0], argv[1], Path(argv[2])
    if what == "fill":
        asyncio.run(fill(dsn, data_dir, int(argv[3]), int(argv[4]), int(argv[5])))
    else:
        asyncio.run(reopen(dsn, data_dir, json.loads(argv[3]), stop=what == "stop"))


if __name__ == "__main__":
    main()
