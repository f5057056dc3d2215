"""`GET /metrics`: the exchange's metrics in Prometheus' text format.

The counters and histograms are `market.metrics.REGISTRY`'s, moved where the work is
done (requests by `ops.observe`, batches, orders and fills by the sequencer, restarts of
the signature helper by `market.signatures`). The gauges of state the exchange holds
anyway are read here, at scrape time, from the app: the sequencer's queue depth and
state, the Merkle log's tree size and the time of its latest checkpoint; and the
gateway's meter's counts (this process's): receipt journal commits, and receipts by the
commits their call waited for at its end (1: its own; 2: every writer was busy). Public, like
/health (no signature): it says nothing about any account.
"""

from __future__ import annotations

from collections.abc import Iterator

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from market.auth import PUBLIC
from market.gateway.meter import Meter
from market.metrics import REGISTRY

#: Prometheus' content type without its charset: Litestar adds `; charset=utf-8` to a
#: text/* type itself (it would be there twice).
MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


def _state_registry(state: State) -> CollectorRegistry:
    """A registry of this scrape's gauges, read from the running exchange (absent ones
    are not reported: an app without the exchange has no queue)."""
    registry = CollectorRegistry(auto_describe=True)
    sequencer = state.get("sequencer")
    if sequencer is not None and hasattr(sequencer, "queue_depth"):  # not in a gateway process
        Gauge(
            "tokex_sequencer_queue_depth", "Ops queued, not yet in a batch", registry=registry
        ).set(sequencer.queue_depth)
        Gauge(
            "tokex_sequencer_healthy",
            "1 while the sequencer runs on a ledger that can write, else 0",
            registry=registry,
        ).set(1 if sequencer.healthy else 0)
    merkle_log = state.get("merkle_log")
    if merkle_log is not None:
        Gauge(
            "tokex_ledger_tree_size", "Entries in the ledger's Merkle log", registry=registry
        ).set(merkle_log.size)
        Gauge(
            "tokex_ledger_last_checkpoint_timestamp_seconds",
            "Unix time of the latest signed checkpoint (0: none yet)",
            registry=registry,
        ).set(merkle_log.checkpoint_time_ms / 1000)
    gateway = state.get("gateway")
    if gateway is not None:
        registry.register(_MeterCounts(gateway.meter))
    return registry


class _MeterCounts(Collector):
    """The gateway meter's counters, as they are at the scrape."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter

    def collect(self) -> Iterator[CounterMetricFamily]:
        commits = CounterMetricFamily(
            "tokex_gateway_journal_commits", "Receipt journal commits (market.gateway.journal)"
        )
        commits.add_metric([], self._meter.journaled)
        yield commits
        waited = CounterMetricFamily(
            "tokex_gateway_receipts_durable",
            "Receipts made durable, by the journal commits their call waited for at its end",
            labels=["commits_waited"],
        )
        for n, count in sorted(self._meter.waited.items()):
            waited.add_metric([str(n)], count)
        yield waited


@get(
    "/metrics",
    opt=PUBLIC,
    tags=["ops"],
    summary="Prometheus metrics (text exposition format)",
    media_type=MEDIA_TYPE,
)
async def metrics(state: State) -> Response[bytes]:
    body = generate_latest(REGISTRY) + generate_latest(_state_registry(state))
    return Response(body, media_type=MEDIA_TYPE)
