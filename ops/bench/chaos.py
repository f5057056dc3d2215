"""Chaos campaign: kill -9 the server and, separately, its PostgreSQL under load; after every
restart, nothing acknowledged is lost, changed or doubled.

    python -m ops.bench.chaos [--cycles 100] [--seed 1] [--traders 4] [--data-dir DIR]

A real `tokex serve` on its own embedded PostgreSQL (a temporary data dir), loopback only.
Clients (`ops.bench.chaos_load`: buyers and providers, and the operator) send orders,
cancels, amends, deliveries, withdrawals, deposits and withdrawal outcomes. Each cycle
runs the load for a seeded random 0.5-2.5 s, then SIGKILLs the server (odd cycles:
started again) or the postmaster (even cycles: the exchange's supervisor starts it
again, answering 503 meanwhile), lets the load run on until the exchange is back, stops
it, and checks (`ops.bench.chaos_check`):

- every acknowledged command has its acknowledged outcome (orders, fills at least as
  acknowledged, prices, cancels; deposits, withdrawals and their marks, deliveries);
- retries under the same ids (every command acknowledged this cycle, and a sample of the
  older ones) answer the first outcome;
- no fill doubled or lost, every asset sums to zero, no balance that may not go negative
  is, the writer's recovered balances equal the entries' sums and each trader's
  `GET /v1/balances` equals them;
- the latest checkpoint is signed by the key pinned at the start and is consistent with
  every earlier checkpoint seen (RFC 9162 consistency proofs from the exchange);
- the whole audit export verifies with the pinned key;
- no answer was a 5xx other than 503, no 503 lacked Retry-After, every command got an
  answer within 90 s.

Prints one row per cycle and last `violations=N`; exits 1 unless N is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import msgspec

from ledger.audit.export import export
from ledger.audit.verify import AuditFailure, verify_file
from ledger.checkpoint import verify_checkpoint
from ledger.note import NoteError, Verifier
from ledger.store import load_state, nonzero, recomputed_balances
from market.accounts import create_account
from market.client import TokexApiError, TokexClient
from ops.bench.chaos_check import (
    History,
    Observed,
    ObservedOrder,
    check_all,
    check_consistency,
    check_retry,
)
from ops.bench.chaos_load import LOT, SYM, NoAnswer, Operator, Retries, Trader, run_until, send
from ops.bench.process import ExchangeDown, ExchangeProcess
from schemas.accounts import Role
from schemas.ledger_proofs import ConsistencyProof
from schemas.market import Side
from schemas.trading import CreateInstrument

NO_RATE_LIMIT = {"TOKEX_RATE_LIMIT": "1000000", "TOKEX_RATE_BURST": "1000000"}
OLD_RETRIES_PER_CYCLE = 40


@dataclass(slots=True)
class Row:
    cycle: int
    fault: str
    load_s: float
    down_s: float
    acked: int
    retried: int
    ledger_size: int
    violations: int


@dataclass(slots=True)
class Campaign:
    proc: ExchangeProcess
    rng: random.Random
    history: History = field(default_factory=History)
    retries: Retries = field(default_factory=Retries)
    traders: list[Trader] = field(default_factory=list)
    operator: Operator | None = None
    pinned: Verifier | None = None
    origin: str = ""
    checkpoints: list[tuple[int, bytes]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    retried: int = 0  # commands sent again by the last check

    @property
    def db_url(self) -> str:
        return self.proc.database_url()


async def set_up(c: Campaign, traders: int) -> None:
    """An operator (made in the database), the instrument, buyers and providers."""
    conn = await asyncpg.connect(c.db_url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "chaos", None)
    finally:
        await conn.close()
    assert key is not None
    root = TokexClient(c.proc.base_url, created.key_id, key, timeout=10.0)
    await root.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=1000,
                         maker_fee_bps=5, taker_fee_bps=10, provider_fee_bps=10)
    )  # fmt: skip
    buyers: list[str] = []
    for i in range(traders):
        side = Side.SELL if i % 2 == 0 else Side.BUY
        role = Role.PROVIDER if side is Side.SELL else Role.BUYER
        account = await root.create_account(role, f"{role.value}-{i}")
        client = root.as_account(account)
        if side is Side.SELL:
            await client.list_capacity("cap", SYM, 10**9)
        else:
            await root.deposit(f"fund-{i}", account.account_id, 10**9)
            buyers.append(account.account_id)
        rng = random.Random(c.rng.random())
        c.traders.append(Trader(client, account.account_id, side, f"t{i}", c.history,
                                c.retries, rng))  # fmt: skip
    c.operator = Operator(root, buyers, c.history, c.retries, random.Random(c.rng.random()))
    keys = await root.request("GET", "/v1/ledger/public-keys")
    c.pinned = Verifier.parse(keys["keys"][0]["key"])
    c.origin = str(keys["origin"] or "")


async def cycle(c: Campaign, n: int) -> None:
    fault = "server" if n % 2 == 1 else "postgres"
    acked_before = c.history.commands
    stop = asyncio.Event()
    assert c.operator is not None
    clients: list[Trader | Operator] = [*c.traders, c.operator]
    workers = [asyncio.create_task(run_until(w.step, stop)) for w in clients]
    load_s = c.rng.uniform(0.5, 2.5)
    await asyncio.sleep(load_s)
    started = time.monotonic()
    if fault == "server":
        c.proc.kill_server()
        await asyncio.to_thread(c.proc.start)
    else:
        killed = c.proc.kill_postgres()
        await _wait_postgres_back(c.proc, killed)
    down_s = time.monotonic() - started
    await asyncio.sleep(c.rng.uniform(0.2, 0.8))  # load on the exchange that came back
    stop.set()
    await asyncio.gather(*workers)
    found = await check(c)
    c.violations += found
    size = c.checkpoints[-1][0] if c.checkpoints else 0
    c.rows.append(Row(n, fault, load_s, down_s, c.history.commands - acked_before,
                      c.retried, size, len(found)))  # fmt: skip
    row = c.rows[-1]
    print(f"cycle {n} {fault}: down {down_s:.1f} s, acked {row.acked}, retried {row.retried}, "
          f"violations {len(found)}", file=sys.stderr, flush=True)  # fmt: skip
    for v in found[:5]:
        print(f"  cycle {n}: {v}", file=sys.stderr, flush=True)


async def _wait_postgres_back(proc: ExchangeProcess, killed: int | None) -> None:
    """Until a new postmaster runs and the exchange answers GET /health with 200."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pid = proc.postmaster_pid()
        if pid is not None and pid != killed and await asyncio.to_thread(proc.healthy):
            return
        await asyncio.sleep(0.1)
    raise ExchangeDown(f"the exchange did not come back after PostgreSQL was killed: {proc.tail()}")


# -- checks ----------------------------------------------------------------------------


async def check(c: Campaign) -> list[str]:
    found = [*c.retries.bad_answers]
    c.retries.bad_answers.clear()
    found += await retry_sample(c)
    conn = await asyncpg.connect(c.db_url)
    try:
        found += check_all(c.history, await observe(conn, c.history))
        found += await check_balances(c, conn)
        found += await check_checkpoint(c)
        found += await check_export(c, conn)
    finally:
        await conn.close()
    return found


async def retry_sample(c: Campaign) -> list[str]:
    """Send again every command acknowledged this cycle and a sample of older ones."""
    recent = set(c.retries.recent)
    older = [name for name in c.retries.calls if name not in recent]
    names = [*c.retries.recent, *c.rng.sample(older, min(OLD_RETRIES_PER_CYCLE, len(older)))]
    c.retries.recent.clear()
    c.retried = len(names)
    found: list[str] = []
    for name in names:
        call, first = c.retries.calls[name]
        try:
            again = await send(call, c.retries, name)
        except NoAnswer:
            continue  # already a violation (bad_answers)
        found += check_retry(name, first, again)
    return found


_ORDERS = """SELECT account_id, client_order_id, order_id, status, price, quantity,
                    filled_quantity, reject_reason FROM market_orders"""
_WRONG_FILL_SUMS = """SELECT count(*) FROM market_orders o
     WHERE o.filled_quantity <> coalesce((SELECT sum(quantity) FROM market_fills f
            WHERE f.maker_order_id = o.order_id OR f.taker_order_id = o.order_id), 0)"""
_ASSET_SUMS = """SELECT a.asset, sum(e.amount)::bigint AS total FROM ledger_entries e
                   JOIN ledger_accounts a ON a.id = e.account_id GROUP BY a.asset"""
_NEGATIVE = """SELECT a.owner, a.asset, a.kind, e.bucket, sum(e.amount)::bigint AS total
                 FROM ledger_entries e JOIN ledger_accounts a ON a.id = e.account_id
                WHERE NOT a.may_go_negative GROUP BY 1, 2, 3, 4 HAVING sum(e.amount) < 0"""


async def observe(conn: asyncpg.Connection, history: History) -> Observed:
    """What the database holds, in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        orders = {
            (r["account_id"], r["client_order_id"]): ObservedOrder(
                r["order_id"], r["status"], r["price"], r["quantity"], r["filled_quantity"],
                r["reject_reason"],
            )
            for r in await conn.fetch(_ORDERS)
        }  # fmt: skip
        indices = [i for _, i in history.deposits.values() if isinstance(i, int)]
        ledger_ids = {
            r["idx"]: r["tx_id"]
            for r in await conn.fetch(
                "SELECT idx, tx_id FROM ledger_transactions WHERE idx = ANY($1)", indices
            )
        }
        rows = await conn.fetch("SELECT account_id, withdrawal_id, amount, status "
                                "FROM market_withdrawals")  # fmt: skip
        withdrawals = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        # providers' reports, pending or settled (market_deliveries has only settled ones)
        rows = await conn.fetch("SELECT provider, report_id, tokens FROM market_reports")
        deliveries = {(r[0], r[1]): (r[2], r[1]) for r in rows}
        fills = await conn.fetchval("SELECT count(*) FROM market_fills")
        fill_txs = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE code = 'fill'"
        )
        wrong = await conn.fetchval(_WRONG_FILL_SUMS)
        sums = {r["asset"]: r["total"] for r in await conn.fetch(_ASSET_SUMS)}
        rows = await conn.fetch(_NEGATIVE)
        negative = [f"{r[0]}|{r[1]}|{r[2]} bucket {r[3]}: {r[4]}" for r in rows]
    return Observed(orders, ledger_ids, withdrawals, deliveries, fills, fill_txs, wrong, sums,
                    negative)  # fmt: skip


async def check_balances(c: Campaign, conn: asyncpg.Connection) -> list[str]:
    """The writer's recovered balances equal the entries' sums; so does each trader's
    `GET /v1/balances` (the exchange's memory after its restart)."""
    state, _, _ = await load_state(conn)
    recomputed = nonzero((await recomputed_balances(conn)).items())
    found = []
    recovered = nonzero((b.account, (b.available, b.held)) for b in state.all_balances())
    if recovered != recomputed:
        found.append("the writer's recovered balances differ from the entries' sums")
    by_key = {(a.owner, a.asset, a.kind): v for a, v in recomputed.items()}
    for t in c.traders:
        try:
            views = await t.client.balances()
        except (TokexApiError, httpx.HTTPError) as exc:
            found.append(f"balances of {t.account_id}: {exc}")
            continue
        served = {(v.account, v.asset, v.kind): (v.available, v.held) for v in views
                  if v.available or v.held}  # fmt: skip
        own = {k: v for k, v in by_key.items() if k[0] == t.account_id}
        expected = {k: by_key.get(k) for k in served} | own
        if served != expected:
            found.append(f"balances of {t.account_id}: served {served}, entries {expected}")
    return found


async def check_checkpoint(c: Campaign) -> list[str]:
    """The latest checkpoint: signed by the pinned key, consistent with each earlier one."""
    assert c.pinned is not None
    async with httpx.AsyncClient(base_url=c.proc.base_url, timeout=30) as http:
        note = (await http.get("/v1/ledger/checkpoint")).text
        try:
            cp = verify_checkpoint(note, [c.pinned], c.origin)
        except (NoteError, ValueError) as exc:
            return [f"latest checkpoint does not verify with the pinned key: {exc}"]
        proofs: dict[int, list[bytes]] = {}
        for first, _ in c.checkpoints:
            if 0 < first < cp.size:
                answer = await http.get("/v1/ledger/proof/consistency",
                                        params={"first": first, "second": cp.size})  # fmt: skip
                proof = msgspec.json.decode(answer.content, type=ConsistencyProof)
                proofs[first] = list(proof.hashes)
    found = check_consistency(c.checkpoints, cp.size, cp.root_hash, proofs)
    c.checkpoints.append((cp.size, cp.root_hash))
    return found


async def check_export(c: Campaign, conn: asyncpg.Connection) -> list[str]:
    out = io.BytesIO()
    await export(conn, out)
    out.seek(0)
    try:
        verify_file(out, c.pinned)
    except AuditFailure as exc:
        return [f"the audit export does not verify with the pinned key: {exc}"]
    return []


# -- running ---------------------------------------------------------------------------


def print_table(c: Campaign, minutes: float) -> None:
    print(f"{'cycle':>5} {'fault':>8} {'load s':>6} {'down s':>6} {'acked':>6} "
          f"{'retried':>7} {'ledger':>7} {'violations':>10}")  # fmt: skip
    for r in c.rows:
        print(f"{r.cycle:>5} {r.fault:>8} {r.load_s:>6.2f} {r.down_s:>6.2f} {r.acked:>6} "
              f"{r.retried:>7} {r.ledger_size:>7} {r.violations:>10}")  # fmt: skip
    kills = {f: sum(1 for r in c.rows if r.fault == f) for f in ("server", "postgres")}
    print(
        f"cycles={len(c.rows)} (server kills {kills['server']}, postgres kills "
        f"{kills['postgres']}) commands acknowledged={c.history.commands} "
        f"answers retried after no answer={c.retries.doubts} minutes={minutes:.1f}"
    )
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(c.history.by_kind.items()))
    print(f"acknowledged by kind: {kinds}")
    print(f"violations={len(c.violations)}")


async def campaign(data_dir: Path, cycles: int, seed: int, traders: int) -> Campaign:
    c = Campaign(ExchangeProcess(data_dir, env=NO_RATE_LIMIT), random.Random(seed))
    await asyncio.to_thread(c.proc.start)
    try:
        await set_up(c, traders)
        for n in range(1, cycles + 1):
            await cycle(c, n)
    except ExchangeDown as exc:
        c.violations.append(f"the exchange did not come back: {exc}")
    finally:
        if c.operator is not None:
            await c.operator.client.aclose()  # the traders' clients share its connections
        await asyncio.to_thread(c.proc.stop)
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--traders", type=int, default=4, help="buyers and providers, half each")
    parser.add_argument("--data-dir", default=None, help="kept afterwards (default: a temp dir)")
    args = parser.parse_args(argv)
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="tokex-chaos-"))
    started = time.monotonic()
    c = asyncio.run(campaign(root / "data", args.cycles, args.seed, args.traders))
    print_table(c, (time.monotonic() - started) / 60)
    for v in c.violations[:20]:
        print(f"violation: {v}")
    if args.data_dir is None and not c.violations:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not c.violations else 1


if __name__ == "__main__":
    sys.exit(main())
