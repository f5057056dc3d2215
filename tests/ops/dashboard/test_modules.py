"""The dashboard's pure modules in the real browser, with no server: the page's own files
are served to Chromium by request interception at http://127.0.0.1 (a secure context,
so WebCrypto is there), and their functions are called as the pages call them.

verify.js is held to the transparency-dev RFC 6962 inclusion vectors that hold
ledger.merkle to them (tests/vectors/rfc6962), and to a checkpoint signed by the
ledger's own code; format.js and api.js to exact integer formatting and parsing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import Browser, Page, Route

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.merkle import MemoryNodeStore, leaf_hash
from ledger.note import Signer
from market.auth import Authenticator, KeyLoader, KeyRecord, now_ms
from market.signing import STREAM_PATH, subscribe_body
from ops.dashboard.routes import STATIC_DIR
from schemas.accounts import Role
from schemas.stream import Subscribe

ORIGIN = "http://127.0.0.1"
VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "rfc6962" / "inclusion"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}


@pytest.fixture
async def modules(browser: Browser) -> Any:
    context = await browser.new_context()
    page = await context.new_page()

    async def serve(route: Route) -> None:
        url = route.request.url
        path = STATIC_DIR / url.removeprefix(f"{ORIGIN}/dashboard/")
        if url == f"{ORIGIN}/blank":
            await route.fulfill(
                body="<!doctype html><title>modules</title>", content_type="text/html"
            )
        elif path.is_file() and path.parent == STATIC_DIR:
            await route.fulfill(body=path.read_bytes(), content_type=_TYPES[path.suffix])
        else:
            await route.fulfill(status=404, body="")

    await page.route(f"{ORIGIN}/**", serve)
    await page.goto(f"{ORIGIN}/blank")
    yield page
    await context.close()


async def call(page: Page, module: str, body: str, arg: Any = None) -> Any:
    """Run `body` (an async function body with `m`, the module, and `arg`) in the page."""
    script = f"async (arg) => {{ const m = await import('/dashboard/{module}'); {body} }}"
    return await page.evaluate(script, arg)


async def test_inclusion_proofs_are_judged_as_the_rfc_6962_vectors_say(modules: Page) -> None:
    vectors = [json.loads(p.read_text()) for p in sorted(VECTORS.glob("**/*.json"))]
    assert len(vectors) > 30
    results = await call(
        modules,
        "verify.js",
        """
        const { b64decode } = await import('/dashboard/bytes.js');
        const bytes = (s) => (s ? b64decode(s) : new Uint8Array());
        const out = [];
        for (const v of arg) {
          try {
            await m.verifyInclusion(bytes(v.leafHash), BigInt(v.leafIdx), BigInt(v.treeSize),
                                    (v.proof ?? []).map(bytes), bytes(v.root));
            out.push(null);
          } catch (err) {
            if (!(err instanceof m.VerifyError)) throw err;
            out.push(err.reason);
          }
        }
        return out;
        """,
        vectors,
    )
    for v, reason in zip(vectors, results, strict=True):
        assert (reason is not None) == v["wantErr"], (v["desc"], reason)


async def test_a_checkpoint_signed_by_the_ledger_opens_and_an_altered_one_does_not(
    modules: Page,
) -> None:
    store = MemoryNodeStore([leaf_hash(bytes([i])) for i in range(7)])
    signer = Signer.generate("tokex.test/ledger")
    note = sign_checkpoint(
        Checkpoint(origin="tokex.test/ledger", size=7, root_hash=store.root(), time_ms=1_700),
        signer,
    )
    other = Signer.generate("tokex.test/ledger")
    verdicts = await call(
        modules,
        "verify.js",
        """
        const outcome = async (note, key) => {
          try {
            const cp = m.parseCheckpoint(await m.openNote(note, await m.parseVerifierKey(key)));
            return ['ok', cp.origin, String(cp.size), String(cp.timeMs)];
          } catch (err) {
            return [err.reason ?? err.message];
          }
        };
        return [
          await outcome(arg.note, arg.key),
          await outcome(arg.note.replace('\\n7\\n', '\\n8\\n'), arg.key),
          await outcome(arg.note, arg.other),
          await outcome(arg.note, arg.key.slice(0, -2) + 'AA'),
        ];
        """,
        {"note": note, "key": signer.verifier().encode(), "other": other.verifier().encode()},
    )
    assert verdicts[0] == ["ok", "tokex.test/ledger", "7", "1700"]
    assert verdicts[1] == ["note_signature_invalid"]  # the size changed after signing
    assert verdicts[2] == ["note_unverified"]  # signed by another key of the same name
    assert verdicts[3] == ["key_invalid"]  # the key id no longer matches the key


async def test_money_is_formatted_in_units_exactly(modules: Page) -> None:
    shown = await call(
        modules,
        "format.js",
        """
        const { parseJson } = await import('/dashboard/api.js');
        const big = parseJson('{"amount": 9007199254740993}').amount;  // 2**53 + 1
        return [
          m.formatMoney(2109875, 'USD'), m.formatMoney(-30000000, 'USD'), m.formatMoney(5, 'USD'),
          m.formatMoney(0, 'USD'), m.formatMoney(big, 'USD'), typeof big,
          m.formatMoney(1234, 'XYZ'), m.formatAsset(30000, 'tok:llama/x/1h'),
          m.currencyScale('USD'),
        ];
        """,
    )
    assert shown == [
        "$21,098.75",
        "-$300,000.00",
        "$0.05",
        "$0.00",
        "$90,071,992,547,409.93",
        "bigint",
        "1,234 XYZ",
        "30,000 tokens",
        2,
    ]


async def test_chart_labels_are_the_exact_integers_past_two_to_the_53(modules: Page) -> None:
    """Prices and depth past 2**53 are placed as floats but labelled exactly: a float
    label would read 9007199254740992 for 9007199254740993."""
    labels = await call(
        modules,
        "charts.js",
        """
        const { parseJson } = await import('/dashboard/api.js');
        const book = parseJson(
          '{"bids": [[9007199254740993, 9007199254740993], [9007199254740991, 2]],' +
          ' "asks": [[9007199254740997, 1]]}');
        const trades = parseJson(
          '[{"time_ms": 1, "price": 9007199254740993}, {"time_ms": 2, "price": 9007199254740995}]');
        const text = (el) => [...el.querySelectorAll('text')].map((t) => t.textContent);
        return [text(m.depthChart(book, String)), text(m.priceChart(trades, String, String))];
        """,
    )
    depth, prices = labels
    assert depth[:3] == ["9007199254740991", "9007199254740997", "9,007,199,254,740,995"]
    assert prices[:2] == ["9007199254740995", "9007199254740993"]


async def test_the_orders_subscribe_the_page_signs_is_one_the_server_takes(
    modules: Page,
) -> None:
    """api.js signs the subscribe's parameters as market.signing does: the same body
    bytes, and a signature the server's check accepts, for either cancel_on_disconnect."""
    made = await call(
        modules,
        "api.js",
        """
        const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign']);
        const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
        const session = new m.Session('key_' + 'a'.repeat(16), pair.privateKey);
        return {
          publicKey: Array.from(raw),
          body: new TextDecoder().decode(m.subscribeBody({ channel: 'orders' })),
          messages: [await session.ordersSubscription(), await session.ordersSubscription(true)],
        };
        """,
    )
    assert made["body"].encode() == subscribe_body("orders", None, False)
    authenticator = Authenticator(_one_key(bytes(made["publicKey"])), started_ms=0)
    for message in made["messages"]:
        sub = msgspec.convert(message, Subscribe)
        body = subscribe_body(sub.channel, sub.instrument, sub.cancel_on_disconnect)
        await authenticator.authenticate(
            sub.key_id, str(sub.timestamp_ms), sub.signature, "GET", STREAM_PATH, body, now_ms()
        )
    assert [m["cancel_on_disconnect"] for m in made["messages"]] == [False, True]


def _one_key(public_key: bytes) -> KeyLoader:
    async def load(key_id: str) -> KeyRecord | None:
        return KeyRecord(key_id, "alice", Role.BUYER, public_key)

    return load
