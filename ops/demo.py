"""`tokex demo`: the whole exchange, end to end, in under a minute.

On a fresh embedded database (a new temporary data dir, or `--data-dir` if it
is empty), it

1. starts a real `tokex serve` and creates an operator, two providers and
   three buyers (signed requests through `TokexClient`, like any user);
2. lists four instruments (two models x two delivery windows), credits the
   buyers' cash and the providers' capacity;
3. places a few thousand orders around a mid price (in batches of 50), so that
   many cross and fill;
4. has the providers report deliveries of most of what each buyer bought;
5. closes every window: open orders are cancelled, undelivered escrow goes
   back to the buyers, unsold capacity is burned;
6. delivery (ops/demo_delivery.py), on an instrument whose window runs now: a
   provider's endpoint on an OpenAI-compatible server (`--upstream URL`, or the
   tests' stand-in), a buyer's calls through `/openai/v1` with the `openai` SDK
   (entitlement down by the metered tokens, the provider paid pro rata), the
   receipts and a proof of one, a buyer's voucher, a disputed report refunded;
7. prints the instrument settlement report and the trial balance;
8. exports the signed audit file (with the gateway's receipts) and verifies it
   offline with the exchange's public key.

Progress goes to stderr; the reports to stdout. Exit 0 when every step held.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ledger.audit.export import export
from ledger.audit.verify import verify_file
from ledger.keys import load_signer
from market.accounts import create_account
from market.clearing.report_text import render_report
from market.client import TokexClient
from market.gateway.receipts import delivery_receipts
from market.money import Currency, format_count, format_money
from market.schema import migrate
from ops.config import Settings
from ops.database import database_url
from ops.demo_delivery import (
    DEFAULT_MODEL,
    Upstream,
    free_port,
    open_upstream,
    run_delivery,
    server_env,
    wait_answering,
)
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder

MODELS = ("llama-3.1-70b", "qwen-2.5-72b")
LOT = 1_000  # tokens per lot
MID = 600  # minor units (cents) per 1,000 tokens
CAPACITY = 5_000_000  # tokens each provider lists per instrument
FUNDING = 10_000_000  # minor units each buyer deposits ($100,000.00)


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _windows(now: float) -> list[str]:
    """Two one-hour windows starting tomorrow (so trading is open now)."""
    start = (int(now) // 3600 + 24) * 3600
    out = []
    for model in MODELS:
        for k in range(2):
            t = time.gmtime(start + k * 3600)
            out.append(f"{model}/{time.strftime('%Y-%m-%dT%HZ', t)}/1h")
    return out


class Server:
    """`tokex serve` as a child process, on the demo's database and data dir."""

    def __init__(self, url: str, data_dir: Path, settings: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": url, "TOKEX_RATE_LIMIT": "100000",
               "TOKEX_RATE_BURST": "100000", **settings}  # fmt: skip
        self.log = data_dir / "server.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ops", "serve", "--port", str(self.port),
                 "--data-dir", str(data_dir)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        outcome = wait_answering(self.base_url + "/health", self.proc, 60)
        if outcome == "exited":
            raise SystemExit(f"tokex serve exited; its log is {self.log}")
        if outcome == "timeout":
            self.stop()
            raise SystemExit(f"tokex serve did not become healthy; its log is {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _run(
    url: str, data_dir: Path, orders: int, seed: int, upstream_url: str | None, model: str
) -> int:
    began = time.monotonic()
    rng = random.Random(seed)
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            print("tokex demo: the database DATABASE_URL names has an exchange in it already; "
                  "the demo needs an empty one (unset DATABASE_URL for a fresh embedded one)",
                  file=sys.stderr)  # fmt: skip
            return 2
        await migrate(conn)
        created, key = await create_account(conn, Role.OPERATOR, "demo-operator", None)
    finally:
        await conn.close()
    assert key is not None
    with open_upstream(upstream_url, model, data_dir) as upstream:
        _say("starting tokex serve")
        server = Server(url, data_dir, server_env(upstream))
        try:
            async with TokexClient(server.base_url, created.key_id, key) as operator:
                await _session(operator, server.base_url, upstream, model, orders, rng)
                await _audit(url, data_dir)
        finally:
            server.stop()
    _say(f"done in {time.monotonic() - began:.1f} s")
    return 0


async def _session(
    operator: TokexClient, base_url: str, upstream: Upstream | None, model: str, orders: int,
    rng: random.Random,
) -> None:  # fmt: skip
    """Trading, the providers' reports and window close; delivery; the reports."""
    cast = await _open_market(operator)
    await _trade(cast, orders, rng)
    await _deliver(cast, rng)
    for symbol in cast.symbols:
        await operator.close_instrument(symbol)
    _say("every window closed: open orders cancelled, escrow refunded, unsold capacity burned")
    live = await run_delivery(operator, base_url, upstream, model, cast.money)
    cast.symbols.append(live.symbol)
    cast.names.update(live.names)
    await _print_reports(operator, cast)


@dataclass
class _Cast:
    """The trading part's market: its instruments and accounts."""

    symbols: list[str]
    providers: list[tuple[str, TokexClient]]
    buyers: list[tuple[str, TokexClient]]
    names: dict[str, str]
    money: Currency


async def _open_market(operator: TokexClient) -> _Cast:
    symbols = _windows(time.time())
    _say(f"listing {len(symbols)} instruments: {', '.join(symbols)}")
    for symbol in symbols:
        await operator.create_instrument(
            CreateInstrument(
                symbol=symbol, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
                maker_fee_bps=10, taker_fee_bps=20, provider_fee_bps=50,
            )
        )  # fmt: skip
    providers: list[tuple[str, TokexClient]] = []
    buyers: list[tuple[str, TokexClient]] = []
    for i in range(2):
        account = await operator.create_account(Role.PROVIDER, f"provider-{i}")
        client = operator.as_account(account)
        for j, symbol in enumerate(symbols):
            await client.list_capacity(f"capacity-{j}", symbol, CAPACITY)
        providers.append((account.account_id, client))
    for i in range(3):
        account = await operator.create_account(Role.BUYER, f"buyer-{i}")
        await operator.deposit(f"funding-{i}", account.account_id, FUNDING)
        buyers.append((account.account_id, operator.as_account(account)))
    names = {pid: f"provider-{i}" for i, (pid, _) in enumerate(providers)}
    names.update({bid: f"buyer-{i}" for i, (bid, _) in enumerate(buyers)})
    (shown,) = await operator.currencies()
    money = Currency(shown.code, shown.scale, shown.symbol)
    _say(
        f"2 providers listed {format_count(CAPACITY)} tokens per instrument; 3 buyers "
        f"deposited {format_money(FUNDING, money)} each"
    )
    return _Cast(symbols, providers, buyers, names, money)


async def _trade(cast: _Cast, orders: int, rng: random.Random) -> None:
    symbols, providers, buyers = cast.symbols, cast.providers, cast.buyers
    placed = filled = 0
    traders = [(c, Side.SELL) for _, c in providers] + [(c, Side.BUY) for _, c in buyers]
    per_batch = 50
    for n in range(0, orders, per_batch):
        client, side = traders[(n // per_batch) % len(traders)]
        batch = []
        for k in range(min(per_batch, orders - n)):
            # Bids a little under the mid, asks a little over: the overlap trades.
            price = MID + rng.randint(-12, 6) if side is Side.BUY else MID + rng.randint(-6, 12)
            batch.append(
                PlaceOrder(
                    client_order_id=f"demo-{n + k}", instrument=rng.choice(symbols), side=side,
                    quantity=LOT * rng.randint(1, 20), price=price,
                )
            )  # fmt: skip
        for result in await client.place_orders(batch):
            placed += result.order is not None
            filled += result.order is not None and result.order.filled_quantity > 0
        if (n // per_batch) % 20 == 0:
            _say(f"orders: {n + len(batch):,}/{orders:,} placed")
    _say(f"{placed:,} orders accepted, {filled:,} traded on arrival")


async def _deliver(cast: _Cast, rng: random.Random) -> None:
    providers, buyers = cast.providers, cast.buyers
    delivered = 0
    for buyer_id, buyer in buyers:
        for ent in await buyer.entitlements():
            if ent.entitlement <= 0:
                continue
            provider = next(c for pid, c in providers if pid == ent.provider)
            # Serve most of it, in two reports; the rest stays undelivered (refunded at close).
            share = ent.entitlement * rng.randint(60, 100) // 100
            first = share // 2
            for part, tokens in (("a", first), ("b", share - first)):
                if tokens > 0:
                    await provider.report_delivery(
                        f"{ent.instrument}:{buyer_id}:{part}", ent.instrument, buyer_id, tokens
                    )
                    delivered += tokens
    _say(f"providers reported {delivered:,} tokens delivered")


async def _print_reports(operator: TokexClient, cast: _Cast) -> None:
    symbols, money, names = cast.symbols, cast.money, cast.names
    print("\n== Instrument settlement ==")
    for symbol in symbols:
        doc = await operator.request(
            "GET", "/v1/reports/instrument", params={"instrument": symbol, "format": "json"}
        )
        print(f"\n{symbol}")
        print(render_report(doc, money, names))
    print("\n== Trial balance (accounts with a balance; each asset totals zero) ==\n")
    trial = await operator.request("GET", "/v1/reports/trial-balance", params={"format": "json"})
    print(
        render_report(
            trial, money, names, skip=lambda row: row["row"] == "account" and row["total"] == 0
        )
    )


async def _audit(url: str, data_dir: Path) -> None:
    audit_file = data_dir / "audit.tokex"
    conn = await asyncpg.connect(url)
    try:
        with open(audit_file, "wb") as out:
            summary = await export(conn, out, receipts=delivery_receipts)
    finally:
        await conn.close()
    _say(
        f"audit export: {summary.entries:,} entries, {summary.checkpoints:,} checkpoints, "
        f"{summary.receipts:,} receipts"
    )
    key_file = data_dir / "ledger-signing.key"
    verifier = load_signer(key_file).verifier()
    with open(audit_file, "rb") as f:
        report = verify_file(f, verifier)
    print(
        f"\n== Audit ==\n{audit_file}: verified offline with {verifier.encode()}\n"
        f"{report.entries:,} transactions, {report.checkpoints:,} signed checkpoints, "
        f"{report.accounts} accounts; every transaction sums to zero and the balances "
        "follow from the entries."
    )
    print(
        f"{report.gateway_deliveries} gateway deliveries, each backed by the receipts it "
        f"commits to ({report.receipts} receipts)."
    )
    pub_file = data_dir / "exchange.pub"
    pub_file.write_text(verifier.encode() + "\n", encoding="ascii")
    print(f"\nTo check it yourself: tokex audit verify {audit_file} --public-key {pub_file}")


def _demo(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # (the openai SDK's httpx)
    if args.data_dir:
        data_dir = Path(args.data_dir).expanduser().resolve()
        if data_dir.exists() and any(data_dir.iterdir()):
            print(f"tokex demo: {data_dir} is not empty; the demo needs a fresh one",
                  file=sys.stderr)  # fmt: skip
            return 2
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="tokex-demo-"))
    os.chmod(data_dir, 0o755)
    _say(f"fresh exchange in {data_dir}")
    url = os.environ.get("DATABASE_URL") or database_url(Settings(data_dir=str(data_dir)))
    if os.environ.get("DATABASE_URL"):
        _say("DATABASE_URL is set: using that database (it must be empty)")
    return asyncio.run(_run(url, data_dir, args.orders, args.seed, args.upstream, args.model))


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="run the whole exchange end to end on a fresh database (under a minute)"
    )
    demo.add_argument(
        "--data-dir", default=None, help="an empty directory (default: a new temp dir)"
    )
    demo.add_argument("--orders", type=int, default=3_000, help="(default: 3000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--upstream", default=None, metavar="URL",
        help="an OpenAI-compatible server for the gateway part, its base URL ending in /v1 "
        "(vLLM, llama.cpp server, Ollama); default: the tests' stand-in, in a clone",
    )  # fmt: skip
    demo.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"the model the upstream serves (default: {DEFAULT_MODEL})",
    )  # fmt: skip
    demo.set_defaults(handler=_demo)
