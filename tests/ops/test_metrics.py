"""`/metrics` over HTTP: Prometheus' own parser reads it, and the counters move by exactly
what the test sends."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from market.client import TokexApiError
from schemas.market import Side
from tests.support.market import order, small_market
from tests.support.server import ServerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str) -> Samples:
    response = httpx.get(base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_counters_move_by_exactly_what_was_sent(
    db_url: str, server_process: ServerProcess
) -> None:
    base = server_process.base_url
    market = await small_market(db_url, base, cash=60_200)
    try:
        before = scrape(base)
        # 3 asks rest; 2 bids fill against them (one fill each); 4 bids are refused for
        # funds (the cash covers the two bids that fill, not a third).
        for i in range(3):
            await market.provider.place_order(order(f"ask-{i}", Side.SELL, 10_000, 3_000))
        for i in range(2):
            placed = await market.buyer.place_order(order(f"bid-{i}", Side.BUY, 10_000, 3_000))
            assert placed.status == "filled"
        for i in range(4):
            with pytest.raises(TokexApiError) as refused:
                await market.buyer.place_order(order(f"poor-{i}", Side.BUY, 10_000, 3_000))
            assert refused.value.code == "insufficient_funds"
        # a replay of a placed order is not a new order
        await market.provider.place_order(order("ask-0", Side.SELL, 10_000, 3_000))
        assert httpx.get(base + "/v1/nowhere").status_code == 404
        ws_url = base.replace("http://", "ws://") + "/v1/stream"
        async with websockets.connect(ws_url), websockets.connect(ws_url):
            assert value(scrape(base), "tokex_websocket_clients") == 2
        for _ in range(100):  # the server sees the closes a moment later
            after = scrape(base)
            if value(after, "tokex_websocket_clients") == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        await market.aclose()

    assert delta(before, after, "tokex_orders_total", outcome="open", reason="") == 3
    assert delta(before, after, "tokex_orders_total", outcome="filled", reason="") == 2
    refused_label = {"outcome": "rejected", "reason": "insufficient_funds"}
    assert delta(before, after, "tokex_orders_total", **refused_label) == 4
    assert delta(before, after, "tokex_fills_total") == 2
    route = {"method": "POST", "route": "/v1/orders"}
    assert delta(before, after, "tokex_http_requests_total", **route, status="201") == 6
    assert delta(before, after, "tokex_http_requests_total", **route, status="422") == 4
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    # (the scrapes while waiting for the websockets to close are requests too, of /metrics)
    assert delta(before, after, "tokex_http_requests_total", **unmatched) == 1
    # every op was in a committed batch: as many batches as commit timings, at least one
    # op per batch, the 10 new orders (the replay is an op too) among them
    batches = delta(before, after, "tokex_sequencer_batch_ops_count")
    assert batches == delta(before, after, "tokex_sequencer_commit_seconds_count") >= 1
    assert delta(before, after, "tokex_sequencer_batch_ops_sum") >= 10
    assert value(after, "tokex_sequencer_queue_depth") == 0
    assert value(after, "tokex_ledger_tree_size") > value(before, "tokex_ledger_tree_size")
    assert value(after, "tokex_ledger_last_checkpoint_timestamp_seconds") > 1.7e9
    assert value(after, "tokex_signature_helper_restarts_total") == 0
    assert value(after, "tokex_websocket_clients") == 0
