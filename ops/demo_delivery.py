"""`tokex demo`, its delivery part: tokens bought, then consumed and settled.

After the trading part, on an instrument whose window runs now:

1. a provider (`gpu-provider`) registers an endpoint (`POST /v1/endpoints`) pointing at an
   OpenAI-compatible server, and sells tokens to a buyer (`app-buyer`);
2. the buyer gets an inference key (`POST /v1/inference-keys`) and calls `/openai/v1`
   with the official `openai` SDK: `models.list()`, a chat completion, a streamed one.
   After each call the demo checks that the buyer's entitlement fell by exactly the
   metered tokens of its receipt and that the provider's cash rose by the escrow released
   pro rata, less its fee (`market.clearing.rules.delivery_split`, on the pair's totals);
3. it lists the receipts (`GET /v1/receipts`) and proves one offline, up to the ledger's
   signed checkpoint (`TokexClient.prove_receipt`);
4. the buyer signs a voucher (`TokexClient.sign_voucher`, as `tokex voucher sign` does),
   which the provider submits: escrow released at once;
5. the provider reports a delivery of its own (`POST /v1/deliveries`): pending; the buyer
   disputes it (`POST /v1/disputes`) and the operator refunds it;
6. the operator closes the window: what is left is burned and refunded.

The upstream: `--upstream URL --model NAME`, a provider's own server (vLLM, llama.cpp
server, Ollama: its base URL ending in `/v1`). Without it, the demo starts the stand-in
of the tests (`tests/support/upstream.py`, present in a clone of the repository) and says
so; if that is absent too (an installed package), the gateway's calls (steps 1-3) are
skipped with a message, and vouchers and disputes still run. The demo's server allows
endpoints on the upstream's host (`TOKEX_ENDPOINT_ALLOW_HOSTS`), which the SSRF check
would refuse otherwise when it is a loopback or private address.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from ledger.note import Verifier
from market.clearing.rules import Delivered, delivery_split
from market.client import TokexApiError, TokexClient
from market.errors import InvalidSymbol
from market.instruments import format_symbol
from market.money import Currency, format_count, format_money
from schemas.accounts import Role
from schemas.gateway import ReceiptView
from schemas.market import Side
from schemas.trading import CreateInstrument, EntitlementView, PlaceOrder

DEFAULT_MODEL = "llama-3.1-70b"
LOT = 1_000  # tokens per lot
PRICE = 600  # minor units per lot
LOTS = 20  # the buyer buys 20,000 tokens ($120.00 of escrow)
FEE_BPS = 250  # the provider's fee: 2.5% of what is released
DISPUTE_S = 3_600  # a provider's own report is pending (disputable) this long
FUNDING = 1_000_000  # the buyer's deposit ($10,000.00)
VOUCHER_TOKENS = 5_000
REPORT_TOKENS = 2_000
CHAT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say hello to the tokex exchange."}
]
MAX_TOKENS = 12
STAND_IN = Path(__file__).resolve().parents[1] / "tests" / "support" / "upstream.py"


class DemoFailed(SystemExit):
    """A step did not hold: the demo stops with this message (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"tokex demo: {message}")


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


@dataclass
class Upstream:
    """The OpenAI-compatible server the provider's endpoint points at."""

    base_url: str  # ends in /v1
    model: str
    stand_in: bool
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""


def server_env(upstream: Upstream | None) -> dict[str, str]:
    """The settings of the demo's `tokex serve` for the gateway part (and says the one
    that matters for security)."""
    env = {"TOKEX_GATEWAY_FLUSH_MS": "100"}  # charges reach the ledger within 0.1 s
    if upstream is not None:
        env["TOKEX_ENDPOINT_ALLOW_HOSTS"] = upstream.host
        say(
            f"the server allows endpoints on {upstream.host} (TOKEX_ENDPOINT_ALLOW_HOSTS="
            f"{upstream.host}); its SSRF check refuses loopback and private addresses otherwise"
        )
    return env


def free_port() -> int:
    """A free TCP port on loopback, for a child process of the demo."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(
    url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float
) -> Literal["ok", "exited", "timeout"]:
    """Poll GET `url` until it answers 200, `proc` (the server's process) exits, or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return "exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return "ok"
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return "timeout"


def _wait_models(upstream: Upstream, log: Path | None) -> None:
    outcome = wait_answering(upstream.base_url + "/models", upstream.proc, 30)
    if outcome == "exited":
        raise DemoFailed(f"the stand-in upstream exited; its log is {log}")
    if outcome == "timeout":
        raise DemoFailed(f"no answer from GET {upstream.base_url}/models")


def _start_stand_in(model: str, data_dir: Path) -> Upstream:
    port = free_port()
    root = STAND_IN.parents[2]
    log = data_dir / "upstream.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upstream", "--port", str(port),
             "--model", model],
            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Upstream(f"http://127.0.0.1:{port}/v1", model, stand_in=True, proc=proc)


@contextmanager
def open_upstream(url: str | None, model: str, data_dir: Path) -> Iterator[Upstream | None]:
    """The upstream given (`--upstream`), else the tests' stand-in in a process of its
    own (stopped on exit), else None (no stand-in here: the gateway's calls are skipped)."""
    live_symbol(model, time.time())  # a model name tokex can list, before anything starts
    if url is not None:
        upstream = Upstream(url.rstrip("/"), model, stand_in=False)
        say(f"upstream: {upstream.base_url} (model {model}), the provider's own server")
        yield upstream
        return
    if not STAND_IN.exists():
        say(
            f"no upstream: {STAND_IN} is not here (an installed package, not a clone of the "
            "repository), so the gateway's calls are skipped; give --upstream URL --model "
            "NAME to run them against an OpenAI-compatible server (vLLM, llama.cpp, Ollama)"
        )
        yield None
        return
    upstream = _start_stand_in(model, data_dir)
    say(
        f"upstream: a STAND-IN for a provider's own inference server ({STAND_IN}, on "
        f"{upstream.base_url}; it answers w0 w1 w2 ...). In production the endpoint points "
        "at the provider's vLLM / llama.cpp / Ollama server (--upstream URL --model NAME)."
    )
    try:
        _wait_models(upstream, data_dir / "upstream.log")
        yield upstream
    finally:
        if upstream.proc is not None and upstream.proc.poll() is None:
            upstream.proc.send_signal(signal.SIGTERM)
            try:
                upstream.proc.wait(10)
            except subprocess.TimeoutExpired:
                upstream.proc.kill()


def live_symbol(model: str, now_s: float) -> str:
    """A one-day window that began at the top of this hour: it runs now."""
    hour = int(now_s) // 3600 * 3600
    try:
        return format_symbol(model, hour, 86_400)
    except InvalidSymbol:
        raise DemoFailed(
            f"model {model!r} is not a tokex model name (letters, digits, '.', '_', '-'); "
            "serve it under such a name (vLLM --served-model-name, `ollama cp`)"
        ) from None


@dataclass
class Live:
    """The delivery part's market: one live instrument, its provider and buyer."""

    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    provider_id: str
    buyer_id: str
    symbol: str
    money: Currency
    names: dict[str, str] = field(default_factory=dict)

    def cash(self, amount: int) -> str:
        return format_money(amount, self.money)

    async def entitlement(self) -> EntitlementView:
        for e in await self.buyer.entitlements():
            if e.instrument == self.symbol and e.provider == self.provider_id:
                return e
        raise DemoFailed(f"the buyer holds nothing on {self.symbol}")

    async def delivered(self) -> Delivered:
        """What the provider delivered to the buyer so far (the delivery rule rounds on
        these totals); none is pending here: the gateway's calls come before any report."""
        found = await self.provider.deliveries(self.symbol)
        mine = [d for d in found if d.buyer == self.buyer_id]
        return Delivered(
            tokens=sum(d.tokens for d in mine),
            released=sum(d.released for d in mine),
            fee=sum(d.fee for d in mine),
        )

    async def cash_of(self, client: TokexClient) -> int:
        return sum(b.total for b in await client.balances() if b.kind == "cash")


async def open_live(operator: TokexClient, model: str, money: Currency) -> Live:
    """A live instrument, a provider and a buyer who bought LOTS lots from it."""
    symbol = live_symbol(model, time.time())
    await operator.create_instrument(
        CreateInstrument(
            symbol=symbol, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
            provider_fee_bps=FEE_BPS, dispute_period_seconds=DISPUTE_S, allow_started=True,
        )
    )  # fmt: skip
    p = await operator.create_account(Role.PROVIDER, "gpu-provider")
    b = await operator.create_account(Role.BUYER, "app-buyer")
    live = Live(operator, operator.as_account(p), operator.as_account(b), p.account_id,
                b.account_id, symbol, money)  # fmt: skip
    live.names = {p.account_id: "gpu-provider", b.account_id: "app-buyer"}
    await live.provider.list_capacity("gpu-capacity", symbol, LOTS * LOT)
    await operator.deposit("app-funding", b.account_id, FUNDING)
    for client, side, order_id in ((live.provider, Side.SELL, "gpu-ask"),
                                   (live.buyer, Side.BUY, "app-bid")):  # fmt: skip
        await client.place_order(PlaceOrder(
            client_order_id=order_id, instrument=symbol, side=side, quantity=LOTS * LOT,
            price=PRICE,
        ))  # fmt: skip
    held = await live.entitlement()
    print(f"\n== Delivery: {symbol} (its window runs now) ==\n")
    print(
        f"app-buyer bought {format_count(held.entitlement)} tokens from gpu-provider at "
        f"{live.cash(PRICE)} per {format_count(LOT)}: {live.cash(held.escrow)} in escrow "
        f"(provider fee {FEE_BPS / 100}%)"
    )
    return live


async def _wait_charged(live: Live, calls: int, timeout_s: float = 20.0) -> list[ReceiptView]:
    """The buyer's receipts once `calls` of them are listed and charged (the gateway's
    flush turned them into a delivery transaction)."""
    deadline = time.monotonic() + timeout_s
    while True:
        items = (await live.buyer.receipts()).items
        if len(items) >= calls and all(
            r.transaction_id is not None for r in items if r.receipt.tokens > 0
        ):
            return items
        if time.monotonic() > deadline:
            raise DemoFailed(f"{calls} receipts not charged after {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


async def _metered(
    live: Live, calls: int, label: str, call: Callable[[], Awaitable[tuple[str, int | None]]]
) -> int:
    """Run one SDK call; check what it did to the entitlement and the provider's cash.
    Returns the call's metered tokens."""
    before, cash_before = await live.entitlement(), await live.cash_of(live.provider)
    so_far = await live.delivered()
    text, usage = await call()
    newest = (await _wait_charged(live, calls))[0]
    after, cash_after = await live.entitlement(), await live.cash_of(live.provider)
    tokens = newest.receipt.tokens
    print(f"\n{label}: {text!r}")
    print(
        f"  usage in the answer: {usage} tokens; receipt {newest.receipt.receipt_id}: "
        f"{newest.receipt.prompt_tokens} prompt + {newest.receipt.completion_tokens} "
        f"completion = {tokens} tokens metered"
    )
    print(
        f"  entitlement {format_count(before.entitlement)} -> "
        f"{format_count(after.entitlement)} tokens (-{before.entitlement - after.entitlement})"
    )
    if before.entitlement - after.entitlement != tokens:
        raise DemoFailed(f"the entitlement fell by {before.entitlement - after.entitlement}, "
                         f"not by the {tokens} tokens metered")  # fmt: skip
    if tokens == 0:  # no usage from the upstream and nothing streamed: charged nothing
        print("  charged nothing (the metering rule: market/gateway/metering.py)")
        return 0
    split = delivery_split(tokens, before.entitlement, before.escrow, FEE_BPS, so_far)
    funded, bought = before.escrow + so_far.released, before.entitlement + so_far.tokens
    print(
        f"  escrow released pro rata: {live.cash(split.released)} (in all "
        f"{live.cash(so_far.released + split.released)} = {live.cash(funded)} x "
        f"{format_count(so_far.tokens + tokens)}/{format_count(bought)}), less the fee "
        f"{live.cash(split.fee)}; provider cash +{live.cash(cash_after - cash_before)}"
    )
    if cash_after - cash_before != split.paid:
        raise DemoFailed(f"the provider was paid {cash_after - cash_before}, not {split.paid}")
    return tokens


async def gateway_calls(live: Live, base_url: str, upstream: Upstream) -> None:
    """The endpoint, the key, and the buyer's calls through `/openai/v1` with the SDK."""
    endpoint = {"endpoint_id": "gpu-1", "model": upstream.model,
                "base_url": upstream.base_url, "max_concurrency": 8}  # fmt: skip
    try:
        made = await live.provider.request("POST", "/v1/endpoints", json=endpoint)
    except TokexApiError as exc:
        raise DemoFailed(f"endpoint {upstream.base_url} refused: {exc.code}: {exc}") from None
    where = "the stand-in upstream" if upstream.stand_in else "the provider's own server"
    print(f"\ngpu-provider registered endpoint gpu-1 -> {made['base_url']} ({where}), "
          f"health {made['health']}")  # fmt: skip
    key = (await live.buyer.request("POST", "/v1/inference-keys", json={}))["secret"]
    print(f"app-buyer got an inference key {key[:8]}... (shown once, stored as a hash)")
    sdk = openai.AsyncOpenAI(base_url=base_url + "/openai/v1", api_key=key, max_retries=0)
    async with sdk:
        models = [m.id for m in (await sdk.models.list()).data]
        print(f"openai SDK, base_url {base_url}/openai/v1: models.list() -> {models}")
        before = (await live.entitlement()).entitlement

        async def chat() -> tuple[str, int | None]:
            answer = await sdk.chat.completions.create(
                model=upstream.model, messages=CHAT, max_tokens=MAX_TOKENS
            )
            usage = answer.usage.total_tokens if answer.usage else None
            return answer.choices[0].message.content or "", usage

        async def streamed() -> tuple[str, int | None]:
            stream = await sdk.chat.completions.create(
                model=upstream.model, messages=CHAT, max_tokens=MAX_TOKENS, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            text: list[str] = []
            usage: int | None = None
            async for chunk in stream:
                text.extend(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage.total_tokens if chunk.usage else usage
            return "".join(text), usage

        charged = await _metered(live, 1, "chat.completions.create", chat)
        charged += await _metered(live, 2, "chat.completions.create(stream=True)", streamed)
    left = (await live.entitlement()).entitlement
    print(f"\nentitlement fell by {before - left} tokens = the metered tokens of the 2 calls "
          f"({charged}): exact")  # fmt: skip


async def show_receipts(live: Live) -> None:
    """The buyer's receipts, and one proved offline up to the signed checkpoint."""
    page = await live.buyer.receipts()
    print("\nGET /v1/receipts (app-buyer's, newest first):")
    for r in page.items:
        rc = r.receipt
        print(
            f"  {rc.receipt_id}  {rc.model}  {rc.prompt_tokens}+{rc.completion_tokens} = "
            f"{rc.tokens} tokens  {rc.ended_ms - rc.started_ms} ms  "
            f"response sha256 {rc.response_sha256.hex()[:16]}...  in {r.transaction_id}"
        )
    charged = [r for r in page.items if r.transaction_id is not None]
    if not charged:
        raise DemoFailed("no receipt was charged: nothing to prove")
    first = charged[-1].receipt.receipt_id  # the oldest charged one
    keys = await live.buyer.request("GET", "/v1/ledger/public-keys")
    exchange_key = Verifier.parse(keys["keys"][0]["key"])
    proof = await live.buyer.receipt_proof(first)  # checked offline before it returns
    checkpoint = await live.buyer.prove_receipt(first, exchange_key)
    print(
        f"receipt {first}: leaf {proof.proof.leaf_index} of {proof.proof.tree_size} in its "
        f"delivery's receipts root, that delivery entry #{proof.delivery.index} of the "
        f"ledger, under the checkpoint of size {checkpoint.size} signed by the exchange: "
        "proof verified offline"
    )


async def voucher(live: Live) -> None:
    """The buyer signs a voucher; the provider submits it; escrow is released at once."""
    signed = live.buyer.sign_voucher(
        live.buyer_id, live.provider_id, live.symbol, VOUCHER_TOKENS, version=1
    )
    cash_before = await live.cash_of(live.provider)
    view = await live.provider.submit_voucher(signed)
    gained = await live.cash_of(live.provider) - cash_before
    print(
        f'\nvoucher: app-buyer signed, with its own key, "{format_count(view.tokens)} tokens '
        f'delivered by gpu-provider" (version {view.version}; `tokex voucher sign` makes '
        f"the same); gpu-provider submitted it: {live.cash(view.released)} of escrow "
        f"released at once, fee {live.cash(view.fee)}, provider cash +{live.cash(gained)}"
    )
    if gained != view.paid:
        raise DemoFailed(f"the voucher paid {gained}, not {view.paid}")


async def dispute(live: Live) -> None:
    """A provider's own report: pending, disputed by the buyer, refunded by the operator."""
    report = await live.provider.report_delivery(
        "offline-batch-1", live.symbol, live.buyer_id, REPORT_TOKENS
    )
    seen = [d.report_id for d in await live.buyer.delivery_reports("pending")]
    print(
        f"\ngpu-provider reported {format_count(report.tokens)} tokens served outside the "
        f"gateway (POST /v1/deliveries): {report.status}, {live.cash(report.released)} of "
        f"escrow held for the dispute period ({DISPUTE_S // 60} min); app-buyer sees {seen}"
    )
    opened = await live.buyer.dispute(live.provider_id, report.report_id, "no such calls")
    print(f"app-buyer disputed it (POST /v1/disputes): {opened.dispute_id} {opened.status}")
    cash_before = await live.cash_of(live.buyer)
    resolved = await live.operator.resolve_dispute(opened.dispute_id, "refund")
    back = await live.cash_of(live.buyer) - cash_before
    print(
        f"the operator resolved {resolved.dispute_id}: {resolved.status}; app-buyer cash "
        f"+{live.cash(back)} (the report's escrow), gpu-provider paid nothing for it"
    )
    if resolved.status != "refunded" or back != report.released:
        raise DemoFailed(f"the dispute ended {resolved.status}, the buyer got {back} back")


async def close(live: Live) -> None:
    done = await live.operator.close_instrument(live.symbol)
    print(
        f"\nthe operator closed {live.symbol}: {format_count(done.entitlement_burned)} "
        f"undelivered tokens burned, {live.cash(done.refunded)} escrow refunded to app-buyer"
    )


async def run_delivery(
    operator: TokexClient, base_url: str, upstream: Upstream | None, model: str,
    money: Currency,
) -> Live:  # fmt: skip
    """The whole delivery part; returns its market (its symbol and names for the reports)."""
    live = await open_live(operator, upstream.model if upstream else model, money)
    if upstream is not None:
        await gateway_calls(live, base_url, upstream)
        await show_receipts(live)
    else:
        print("\n(no upstream: the gateway's calls are skipped; see the message above)")
    await voucher(live)
    await dispute(live)
    await close(live)
    return live
