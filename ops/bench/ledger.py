"""Durable ledger transfers per second, for batches of 1, 100 and 1,000.

    python -m ops.bench.ledger [--transfers 100000] [--accounts 10000] [--data-dir DIR]

Uses DATABASE_URL when set, else the embedded PostgreSQL (pgserver) in a
temporary data directory (or --data-dir). `--with-log` adds what `tokex serve`
does on top: Merkle nodes and one signed checkpoint per batch. Each batch is one database
transaction, committed (fsync on, synchronous_commit on) before the next
starts: every transfer counted here is durable. A transfer is a two-posting
transaction between two random user accounts, each checked against the
floor rule, encoded canonically and written with its entries and balances.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from ledger.log import MerkleLog
from ledger.note import Signer
from ledger.writer import Ledger
from ops.config import Settings
from ops.database import database_url, remove_embedded, with_database
from schemas.ledger import Account, Posting, Transaction


async def fresh_database(base_url: str) -> str:
    """A new, migrated database beside `base_url`'s; its DSN. Drop it with `drop_database`."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    from market.schema import migrate  # the exchange's migrations

    dsn = with_database(base_url, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def drop_database(base_url: str, dsn: str) -> None:
    """Drop a database made by `fresh_database` (a bench's is hundreds of MB or more)."""
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}"')
    finally:
        await conn.close()


async def run(base_url: str, transfers: int, accounts: int, *, with_log: bool = False) -> None:
    dsn = await fresh_database(base_url)
    try:
        await _measure(dsn, transfers, accounts, with_log=with_log)
    finally:
        await drop_database(base_url, dsn)


async def _measure(dsn: str, transfers: int, accounts: int, *, with_log: bool) -> None:
    hooks = [MerkleLog(Signer.generate("bench.tokex/ledger"))] if with_log else []
    ledger = await Ledger.open(dsn, hooks=hooks)
    rng = random.Random(7)
    bank = Account("exchange", "USD", "bank")
    users = [Account(f"user-{i}", "USD", "cash") for i in range(accounts)]
    funding = [
        Transaction(
            id=f"fund-{i}",
            code="deposit",
            time=1,
            postings=(Posting(bank, -(10**9)), Posting(user, 10**9)),
        )
        for i, user in enumerate(users)
    ]
    for start in range(0, len(funding), 1000):
        await ledger.apply_batch(funding[start : start + 1000])

    log_note = ", with the Merkle log and a signed checkpoint per batch" if with_log else ""
    print(f"ledger bench: {accounts} accounts, two-posting transfers, durable commits{log_note}")
    counter = 0
    for batch_size in (1, 100, 1000):
        count = min(transfers, 2_000) if batch_size == 1 else transfers
        txs = []
        for _ in range(count):
            a, b = rng.sample(users, 2)
            amount = rng.randint(1, 1000)
            counter += 1
            txs.append(
                Transaction(
                    id=f"t-{counter}",
                    code="transfer",
                    time=2,
                    postings=(Posting(a, -amount), Posting(b, amount)),
                )
            )
        started = time.perf_counter()
        committed = 0
        for start in range(0, count, batch_size):
            results = await ledger.apply_batch(txs[start : start + batch_size])
            committed += sum(r.committed for r in results)
        elapsed = time.perf_counter() - started
        print(
            f"  batch {batch_size:>5}: {count:>7} transfers in {elapsed:6.2f} s"
            f" = {count / elapsed:>9,.0f} transfers/s durable ({committed} committed)"
        )
    totals = ledger.asset_totals()
    assert all(v == 0 for v in totals.values()), totals
    await ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument(
        "--with-log",
        action="store_true",
        help="also write the Merkle log and sign a checkpoint per batch, as tokex serve does",
    )
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    scratch = None
    try:
        if url is None:
            data_dir = args.data_dir or tempfile.mkdtemp(prefix="tokex-bench-")
            scratch = None if args.data_dir else Path(data_dir)
            os.chmod(data_dir, 0o755)
            url = database_url(Settings(data_dir=data_dir))
        asyncio.run(run(url, args.transfers, args.accounts, with_log=args.with_log))
    finally:
        if scratch is not None:  # a scratch dir of ours: stop its PostgreSQL, delete it
            remove_embedded(scratch)


if __name__ == "__main__":
    main()
