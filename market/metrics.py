"""The exchange's Prometheus metrics (prometheus-client), kept in one registry.

Counters and histograms live here and are updated where the work happens, once per
batch where that is possible (`batch_committed`): the sequencer's loop pays a handful
of increments per batch, not per op. Gauges of state that already exists somewhere
(queue depth, ledger tree size, last checkpoint) are read at scrape time instead, by
`ops.metrics`, which also renders `REGISTRY` at `/metrics`.

Names: `tokex_<area>_<what>_<unit>`; counters end in `_total`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

#: Every metric of the process (plus the process's own CPU, memory and open files).
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "tokex_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
ORDERS = Counter(
    "tokex_orders",
    "Orders placed (not idempotent replays), by the state the batch left them in "
    "(open, filled, cancelled, expired, rejected) and the reject reason ('' if none)",
    ["outcome", "reason"],
    registry=REGISTRY,
)
FILLS = Counter("tokex_fills", "Fills (trades) committed", registry=REGISTRY)
BATCH_OPS = Histogram(
    "tokex_sequencer_batch_ops",
    "Ops per sequencer batch",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "tokex_sequencer_commit_seconds",
    "Time to stage and commit one batch (the group commit), seconds",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
BATCHES_FAILED = Counter(
    "tokex_sequencer_batches_failed",
    "Batches that did not commit (every op answered 503)",
    registry=REGISTRY,
)
WEBSOCKET_CLIENTS = Gauge(
    "tokex_websocket_clients", "Open websocket connections", registry=REGISTRY
)
SIGNATURE_HELPER_RESTARTS = Counter(
    "tokex_signature_helper_restarts",
    "Times the signature helper process was started again after it was lost",
    registry=REGISTRY,
)


def batch_committed(
    ops: int, commit_s: float, placed: Iterable[tuple[str, str | None]], fills: int
) -> None:
    """Record one committed batch: its size, how long its commit took, the orders it
    placed as (status, reject reason) and how many fills it made."""
    BATCH_OPS.observe(ops)
    COMMIT_SECONDS.observe(commit_s)
    if fills:
        FILLS.inc(fills)
    for (outcome, reason), count in Tally(placed).items():
        ORDERS.labels(outcome, reason or "").inc(count)
