"""What watching the exchange costs: an access line with its request counter, per
request, and the sequencer's metrics, per batch.

    python -m ops.bench.observe [--requests 50000] [--batches 10000]

The access line goes through the JSON formatter `tokex serve` uses (`ops.logs`) to
/dev/null; the best of three runs is printed (the machine is shared).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from market import metrics
from ops.logs import configure
from ops.observe import Observe

SCOPE: dict[str, Any] = {
    "type": "http", "method": "POST", "path": "/v1/orders", "path_template": "/v1/orders",
    "headers": [(b"x-tokex-key", b"key_0123456789abcdef"), (b"content-type", b"application/json")],
}  # fmt: skip


def _best_us(runs: int, count: int, work: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work(count)
        best = min(best, (time.perf_counter() - started) / count * 1e6)
    return best


def _requests(count: int) -> None:
    for _ in range(count):
        Observe._record(SCOPE, "req_0123456789abcdef", 201, 0.004)  # type: ignore[arg-type]


def _batches(count: int) -> None:
    placed = [("open", None)] * 40 + [("filled", None)] * 10 + [("rejected", "insufficient_funds")]
    for _ in range(count):
        metrics.batch_committed(51, 0.003, iter(placed), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=10_000)
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:
        configure(logging.INFO, sink)
        per_request = _best_us(3, args.requests, _requests)
        per_batch = _best_us(3, args.batches, _batches)
    print(f"access line + request counter: {per_request:.1f} µs per request")
    print(f"sequencer metrics of a batch of 51 ops: {per_batch:.1f} µs per batch")


if __name__ == "__main__":
    main()
