"""The dashboard in a real headless Chromium against a real `tokex serve`.

Each test drives the page as a person would and checks what it shows against the API:
the market page's ladder is GET /v1/book, live; the account page signs in with the
account's key (which never leaves the browser), shows a fill as it happens and cancels
an order; the ledger page verifies a real entry's inclusion proof against the signed
checkpoint and refuses a tampered one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Page, Request, Route, expect

from market.client import TokexClient
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import BookView, CreateInstrument, PlaceOrder
from tests.ops.dashboard.conftest import Screenshot
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"
LIVE_TIMEOUT_MS = 5_000


@dataclass
class Market:
    base_url: str
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    buyer_id: str
    buyer_key_id: str
    buyer_pem: str


@pytest.fixture
async def market(db_url: str, server_process: ServerProcess) -> AsyncIterator[Market]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=100_000)
    )
    provider_created = await operator.create_account(Role.PROVIDER, "provider")
    provider = operator.as_account(provider_created)
    await provider.list_capacity("cap-1", SYM, 100_000)
    buyer_created = await operator.create_account(Role.BUYER, "buyer")
    await operator.deposit("dep-1", buyer_created.account_id, 10_000_000)
    assert buyer_created.private_key is not None
    yield Market(
        server_process.base_url,
        operator,
        provider,
        operator.as_account(buyer_created),
        buyer_created.account_id,
        buyer_created.key_id,
        buyer_created.private_key,
    )
    await operator.aclose()


def order(coid: str, side: Side, qty: int, price: int) -> PlaceOrder:
    return PlaceOrder(client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price)


async def ladder(page: Page) -> list[tuple[str, int, int, int]]:
    rows = await page.eval_on_selector_all(
        "#ladder tr[data-side]",
        "rows => rows.map(r => [r.dataset.side, r.dataset.price, r.dataset.quantity,"
        " r.dataset.orders])",
    )
    return [(side, int(p), int(q), int(n)) for side, p, q, n in rows]


def expected_ladder(book: BookView) -> list[tuple[str, int, int, int]]:
    """The ladder as drawn: asks worst to best above the spread, then bids best first."""
    asks = [("sell", lv.price, lv.quantity, lv.orders) for lv in reversed(book.asks)]
    return asks + [("buy", lv.price, lv.quantity, lv.orders) for lv in book.bids]


async def wait_ladder_is_book(page: Page, client: TokexClient) -> BookView:
    """The ladder equals GET /v1/book and shows the same seq (waits for the stream)."""
    deadline = time.monotonic() + LIVE_TIMEOUT_MS / 1000
    while True:
        book = await client.book(SYM)
        shown = await ladder(page)
        seq = await page.get_attribute("#stream-status", "data-seq")
        if shown == expected_ladder(book) and seq == str(book.seq):
            return book
        if time.monotonic() > deadline:
            assert (shown, seq) == (expected_ladder(book), str(book.seq))
        await asyncio.sleep(0.05)


async def test_market_page_ladder_is_the_book_and_follows_it_live(
    market: Market, page: Page, screenshots: Screenshot
) -> None:
    await market.provider.place_order(order("s1", Side.SELL, 3_000, 5_000))
    await market.provider.place_order(order("s2", Side.SELL, 2_000, 5_500))
    await market.provider.place_order(order("s3", Side.SELL, 1_000, 5_500))
    await market.buyer.place_order(order("b1", Side.BUY, 4_000, 4_800))

    await page.goto(f"{market.base_url}/")  # the instruments list, then the instrument's page
    await page.click(f'#instruments tr[data-symbol="{SYM}"] a')
    await expect(page).to_have_url(f"{market.base_url}/#/market/{quote(SYM, safe='')}")
    book = await wait_ladder_is_book(page, market.buyer)
    assert [lv.price for lv in book.asks] == [5_000, 5_500]  # the book is what was placed
    assert [(lv.quantity, lv.orders) for lv in book.asks] == [(3_000, 1), (3_000, 2)]
    # amounts in the currency's units: 5,000 minor units per lot is $50.00
    await expect(page.locator('#ladder tr[data-price="5000"] td.price')).to_have_text("$50.00")
    await screenshots(page, "market-initial")

    # A new resting order shows up without a reload.
    await market.buyer.place_order(order("b2", Side.BUY, 1_000, 4_950))
    await expect(page.locator('#ladder tr[data-side="buy"][data-price="4950"]')).to_have_count(
        1, timeout=LIVE_TIMEOUT_MS
    )
    await wait_ladder_is_book(page, market.buyer)

    # A crossing order: the level shrinks, the trade appears with the price chart's point.
    await market.buyer.place_order(order("b3", Side.BUY, 1_000, 5_000))
    await expect(page.locator('#ladder tr[data-side="sell"][data-price="5000"]')).to_have_attribute(
        "data-quantity", "2000", timeout=LIVE_TIMEOUT_MS
    )
    book = await wait_ladder_is_book(page, market.buyer)
    trades = await market.buyer.trades(SYM)
    assert [(t.price, t.quantity) for t in trades] == [(5_000, 1_000)]
    trade_row = page.locator(f'#trades tr[data-seq="{trades[0].seq}"]')
    await expect(trade_row).to_contain_text("$50.00", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator("#price-chart circle")).to_have_count(1)
    await expect(page.locator("#depth-chart path.depth-asks")).to_have_count(1)
    await screenshots(page, "market-after-trade")


async def test_account_page_signs_in_shows_a_fill_live_and_cancels(
    market: Market, page: Page, screenshots: Screenshot
) -> None:
    bid = await market.buyer.place_order(order("b1", Side.BUY, 1_000, 4_900))
    other = await market.buyer.place_order(order("b2", Side.BUY, 2_000, 4_800))
    sent: list[str] = []

    def record(request: Request) -> None:
        sent.append(json.dumps([request.url, request.headers, request.post_data]))

    page.on("request", record)
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(str(frame))))

    await page.goto(f"{market.base_url}/#/account")
    await page.fill("#key-id", market.buyer_key_id)
    await page.fill("#private-key", market.buyer_pem)
    await page.click("#sign-in-button")
    await expect(page.locator("#account-id")).to_have_text(market.buyer_id)
    await expect(page.locator("#open-orders tr[data-order-id]")).to_have_count(2)
    await expect(page.locator("#orders-status")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator('#balances tr[data-kind="cash"]')).to_contain_text("$100,000.00")
    await screenshots(page, "account-signed-in")

    # The provider sells into the bid: the fill appears on the page as it happens.
    await market.provider.place_order(order("s1", Side.SELL, 1_000, 4_900))
    fill_row = page.locator(f'#fills tr[data-order-id="{bid.order_id}"]')
    await expect(fill_row).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    await expect(fill_row).to_contain_text("$49.00")
    await expect(page.locator(f'#open-orders tr[data-order-id="{bid.order_id}"]')).to_have_count(
        0, timeout=LIVE_TIMEOUT_MS
    )
    entitlement = page.locator(f'#entitlements tr[data-instrument="{SYM}"]')
    await expect(entitlement).to_contain_text("1,000", timeout=LIVE_TIMEOUT_MS)
    await expect(entitlement).to_contain_text("$49.00")  # the escrow paid for it
    await screenshots(page, "account-after-fill")

    # Cancel the other order from the page.
    await page.click(f'button.cancel[data-order-id="{other.order_id}"]')
    await expect(page.locator(f'#open-orders tr[data-order-id="{other.order_id}"]')).to_have_count(
        0, timeout=LIVE_TIMEOUT_MS
    )
    assert (await market.buyer.order(other.order_id)).status == "cancelled"
    await screenshots(page, "account-after-cancel")

    # The private key never left the browser: no request, header or frame carries it.
    seed_lines = [line for line in market.buyer_pem.splitlines() if "-----" not in line]
    assert len(sent) > 5
    assert not [s for s in sent for line in seed_lines if line in s]
    assert any("X-Tokex-Signature" in s or "x-tokex-signature" in s for s in sent)


async def test_ledger_page_verifies_a_real_entry_and_refuses_a_tampered_proof(
    market: Market, page: Page, screenshots: Screenshot
) -> None:
    await market.buyer.place_order(order("b1", Side.BUY, 1_000, 4_900))
    await market.provider.place_order(order("s1", Side.SELL, 1_000, 4_900))
    async with httpx.AsyncClient(base_url=market.base_url) as http:
        note = (await http.get("/v1/ledger/checkpoint")).text
    size = int(note.split("\n")[1])
    assert size >= 4  # deposit, listing, orders and their trade were committed

    await page.goto(f"{market.base_url}/#/ledger")
    status = page.locator("#checkpoint-status")
    await expect(status).to_have_attribute("data-state", "verified")
    await expect(page.locator("#tree-size")).to_have_attribute("data-size", str(size))
    result = page.locator("#proof-result")
    for index in (1, size - 1):
        await page.fill("#entry-index", str(index))
        await page.click("#verify-button")
        await expect(result).to_have_attribute("data-state", "verified")
        verdict = f"verified: entry {index} is in the signed tree of {size}"
        await expect(result).to_have_text(verdict)
    await screenshots(page, "ledger-verified")

    # The proof altered on its way: one hash of the path with one bit flipped.
    async def flip_a_bit(route: Route) -> None:
        response = await route.fetch()
        proof = await response.json()
        first = bytearray(base64.b64decode(proof["hashes"][0]))
        first[0] ^= 1
        proof["hashes"][0] = base64.b64encode(first).decode()
        await route.fulfill(response=response, json=proof)

    await page.route("**/v1/ledger/proof/inclusion*", flip_a_bit)
    await page.fill("#entry-index", "1")
    await page.click("#verify-button")
    await expect(result).to_have_attribute("data-state", "failed")
    await expect(result).to_contain_text("root_mismatch")
    await screenshots(page, "ledger-tampered-proof")

    # A proof shortened by one hash.
    async def drop_a_hash(route: Route) -> None:
        response = await route.fetch()
        proof = await response.json()
        proof["hashes"] = proof["hashes"][:-1]
        await route.fulfill(response=response, json=proof)

    await page.unroute("**/v1/ledger/proof/inclusion*")
    await page.route("**/v1/ledger/proof/inclusion*", drop_a_hash)
    await page.click("#verify-button")
    await expect(result).to_contain_text("wrong_length")

    # A checkpoint whose tree size was changed after signing: its signature fails.
    async def forge_size(route: Route) -> None:
        response = await route.fetch()
        lines = (await response.text()).split("\n")
        lines[1] = str(size + 1)
        await route.fulfill(response=response, body="\n".join(lines))

    await page.unroute("**/v1/ledger/proof/inclusion*")
    await page.route("**/v1/ledger/checkpoint", forge_size)
    await page.click("#verify-button")
    await expect(result).to_have_attribute("data-state", "failed")
    await expect(result).to_contain_text("note_signature_invalid")
    await screenshots(page, "ledger-forged-checkpoint")


async def test_market_page_catches_up_after_the_server_restarts(
    market: Market,
    server_process: ServerProcess,
    page: Page,
    screenshots: Screenshot,
    expected_console_errors: list[str],
) -> None:
    expected_console_errors.append(r"WebSocket connection to .* failed")  # while it is down
    await market.provider.place_order(order("s1", Side.SELL, 2_000, 5_000))
    await page.goto(f"{market.base_url}/#/market/{quote(SYM, safe='')}")
    await wait_ladder_is_book(page, market.buyer)

    server_process.stop()
    await expect(page.locator("#stream-status")).to_have_text("reconnecting")
    server_process.start()
    # Orders and a trade while the page reconnects: it shows them without a reload.
    await market.provider.place_order(order("s2", Side.SELL, 1_000, 5_500))
    await market.buyer.place_order(order("b1", Side.BUY, 1_000, 5_000))
    await wait_ladder_is_book(page, market.buyer)
    trades = await market.buyer.trades(SYM)
    await expect(page.locator(f'#trades tr[data-seq="{trades[0].seq}"]')).to_have_count(
        1, timeout=LIVE_TIMEOUT_MS
    )
    await screenshots(page, "market-after-restart")


async def test_a_market_link_that_names_no_instrument_says_so(
    market: Market, page: Page, expected_console_errors: list[str]
) -> None:
    """A link is the instrument's symbol, whatever it holds: `..` segments in it are not
    a way to another of the exchange's paths, and bad percent-encoding is an error on
    the page, not a script that died."""
    expected_console_errors.append(r"404")  # the instrument asked for is not there
    await page.goto(f"{market.base_url}/#/market/..%2F..%2Fhealth")
    await expect(page.locator("#page-error")).to_contain_text("unknown instrument '../../health'")
    await page.goto(f"{market.base_url}/#/market/%E0%A4%A")
    await expect(page.locator("#page-error")).to_have_text("this link names no instrument")
