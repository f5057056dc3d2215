"""Audit export and offline verification at scale.

    python -m ops.bench.audit [--transactions 1000000] [--accounts 10000] [--batch 1000]
                              [--data-dir DIR] [--keep FILE]

1. Writes ``--transactions`` two-posting transfers through the single writer with the
   Merkle log installed (durable batches of ``--batch``, one signed checkpoint per batch)
   and reports that write rate (compare with ``python -m ops.bench.ledger``, which runs
   without the log).
2. Runs ``tokex audit export`` in a subprocess and reports its time, size and peak
   resident memory (``ru_maxrss`` of that process; target < 200 MB).
3. Verifies the file in process and reports entries/s (target >= 300,000/s).

Uses DATABASE_URL when set, else an embedded PostgreSQL in a temporary data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ledger.audit.verify import verify_file
from ledger.log import open_ledger
from ledger.note import Signer
from ops.bench.ledger import drop_database, fresh_database
from ops.database import open_embedded
from schemas.ledger import Account, Posting, Transaction

ORIGIN = "bench.tokex/ledger"


async def fill(dsn: str, signer: Signer, transactions: int, accounts: int, batch: int) -> float:
    """Write the transfers; return transfers/s (durable, with the Merkle log)."""
    ledger, _ = await open_ledger(dsn, signer)
    rng = random.Random(7)
    bank = Account("exchange", "USD", "bank")
    users = [Account(f"user-{i}", "USD", "cash") for i in range(accounts)]
    try:
        funding = [
            Transaction(
                id=f"fund-{i}",
                code="deposit",
                time=1,
                postings=(Posting(bank, -(10**9)), Posting(user, 10**9)),
            )
            for i, user in enumerate(users)
        ]
        for start in range(0, len(funding), batch):
            await ledger.apply_batch(funding[start : start + batch])
        elapsed = 0.0
        done = 0
        while done < transactions:
            txs = []
            for _ in range(min(batch, transactions - done)):
                a, b = rng.sample(users, 2)
                amount = rng.randint(1, 1000)
                done += 1
                txs.append(
                    Transaction(
                        id=f"t-{done}",
                        code="transfer",
                        time=2 + done // batch,
                        postings=(Posting(a, -amount), Posting(b, amount)),
                    )
                )
            started = time.perf_counter()
            await ledger.apply_batch(txs)
            elapsed += time.perf_counter() - started
            if sys.stderr.isatty():
                print(f"\rwritten {done:,}", end="", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return transactions / elapsed
    finally:
        await ledger.close()


def export_in_subprocess(dsn: str, out: Path) -> tuple[float, float]:
    """Run `tokex audit export`; return (seconds, peak RSS in MB) of that process."""
    env = {**os.environ, "DATABASE_URL": dsn}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops", "audit", "export", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"export failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", default=None, help="keep the export at this path")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    if url is None:
        data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tokex-bench-"))
        server = open_embedded(data_dir, cleanup_mode="stop" if args.data_dir else "delete")
        url = server.url()
    dsn = asyncio.run(fresh_database(url))
    try:
        _measure(dsn, args)
    finally:
        asyncio.run(drop_database(url, dsn))


def _measure(dsn: str, args: argparse.Namespace) -> None:
    signer = Signer.generate(ORIGIN)
    rate = asyncio.run(fill(dsn, signer, args.transactions, args.accounts, args.batch))
    total = args.transactions + args.accounts
    print(f"audit bench: {total:,} transactions ({args.accounts:,} deposits + transfers)")
    print(f"  write with Merkle log, batch {args.batch}: {rate:,.0f} transfers/s durable")

    with tempfile.TemporaryDirectory(prefix="tokex-audit-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "audit.tokex"
        seconds, peak_mb = export_in_subprocess(dsn, out)
        size_mb = out.stat().st_size / 1e6
        print(
            f"  export: {seconds:.1f} s, {size_mb:,.1f} MB, peak memory {peak_mb:,.0f} MB "
            f"(process RSS, target < 200 MB)"
        )
        started = time.perf_counter()
        with open(out, "rb") as f:
            report = verify_file(f, signer.verifier())
        elapsed = time.perf_counter() - started
        print(
            f"  verify: {report.entries:,} entries, {report.checkpoints:,} checkpoints in "
            f"{elapsed:.2f} s = {report.entries / elapsed:,.0f} entries/s (target >= 300,000/s)"
        )


if __name__ == "__main__":
    main()
