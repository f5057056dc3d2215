"""The chaos campaign: its checker flags what it must (lost, changed or doubled outcomes,
a history rewritten under a checkpoint), and a short campaign of kill -9s of the server
and of PostgreSQL under load finds nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx

from ledger.merkle import MemoryNodeStore
from market.client import TokexApiError
from ops.bench.chaos import campaign
from ops.bench.chaos_check import (
    History,
    Observed,
    ObservedOrder,
    OrderRecord,
    check_all,
    check_consistency,
    check_retry,
)
from ops.bench.chaos_load import Retries, send


def _sound() -> tuple[History, Observed]:
    """A history and the state that honours it: an order acknowledged with 2,000 filled
    and then cancelled, a deposit, a withdrawal marked paid, a delivery."""
    h = History()
    h.orders[("b1", "o-1")] = OrderRecord(
        "b1", "o-1", "buy", 5000, order_id=7, filled_at_least=2000, prices={100},
        cancelled_filled=2000,
    )  # fmt: skip
    h.orders[("b1", "o-2")] = OrderRecord("b1", "o-2", "buy", 1000, refused="insufficient_funds")
    h.deposits["dep-1"] = ("deposit:dep-1", 3)
    h.withdrawals[("b1", "w-1")] = 500
    h.marks[("b1", "w-1")] = "paid"
    h.deliveries[("p1", "d-1")] = (1200, "delivery:p1:d-1")
    observed = Observed(
        orders={
            ("b1", "o-1"): ObservedOrder(7, "cancelled", 100, 5000, 2000, None),
            ("b1", "o-2"): ObservedOrder(8, "rejected", 100, 1000, 0, "insufficient_funds"),
        },
        ledger_ids={3: "deposit:dep-1"},
        withdrawals={("b1", "w-1"): (500, "paid")},
        deliveries={("p1", "d-1"): (1200, "delivery:p1:d-1")},
        fills=4, fill_transactions=4, orders_with_wrong_fill_sum=0,
        asset_sums={"USD": 0, "tok": 0}, negative_balances=[],
    )  # fmt: skip
    return h, observed


def test_the_checker_passes_a_state_that_honours_every_acknowledgement() -> None:
    h, observed = _sound()
    assert check_all(h, observed) == []


def test_the_checker_flags_a_lost_acknowledged_order() -> None:
    h, observed = _sound()
    del observed.orders[("b1", "o-1")]
    assert any("no such order" in v for v in check_all(h, observed))


def test_the_checker_flags_changed_outcomes() -> None:
    cases: dict[str, Callable[[Observed], object]] = {
        "fill lost": lambda o: o.orders.update(
            {("b1", "o-1"): ObservedOrder(7, "cancelled", 100, 5000, 1000, None)}
        ),
        "filled after its cancel": lambda o: o.orders.update(
            {("b1", "o-1"): ObservedOrder(7, "cancelled", 100, 5000, 3000, None)}
        ),
        "price never acknowledged": lambda o: o.orders.update(
            {("b1", "o-1"): ObservedOrder(7, "cancelled", 101, 5000, 2000, None)}
        ),
        "late yes to a refused order": lambda o: o.orders.update(
            {("b1", "o-2"): ObservedOrder(8, "open", 100, 1000, 0, None)}
        ),
        "deposit lost": lambda o: o.ledger_ids.clear(),
        "withdrawal mark undone": lambda o: o.withdrawals.update({("b1", "w-1"): (500, "pending")}),
        "delivery changed": lambda o: o.deliveries.update({("p1", "d-1"): (1300, "x")}),
        "fill doubled": lambda o: setattr(o, "fills", 5),
        "value created": lambda o: o.asset_sums.update({"USD": 1}),
        "negative balance": lambda o: o.negative_balances.append("b1|USD|cash bucket 0: -1"),
    }
    for name, tamper in cases.items():
        h, observed = _sound()
        tamper(observed)
        assert check_all(h, observed), f"not flagged: {name}"


def test_a_retry_must_answer_the_first_outcome() -> None:
    assert check_retry("order o-1", ("order", 7, 5000, "buy"), ("order", 7, 5000, "buy")) == []
    assert check_retry("order o-1", ("order", 7, 5000, "buy"), ("order", 9, 5000, "buy"))


def test_a_checkpoint_over_a_rewritten_history_is_flagged() -> None:
    log = MemoryNodeStore()
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(20)]
    for leaf in leaves[:8]:
        log.append(leaf)
    first = (8, log.root())
    for leaf in leaves[8:]:
        log.append(leaf)
    proofs = {8: log.consistency_proof(8, 20)}
    assert check_consistency([first], 20, log.root(), proofs) == []
    forked = MemoryNodeStore()
    for leaf in [leaves[0], hashlib.sha256(b"forged").digest(), *leaves[2:]]:
        forked.append(leaf)
    assert check_consistency([first], 20, forked.root(), {8: forked.consistency_proof(8, 20)})
    assert check_consistency([(21, first[1])], 20, log.root(), proofs)  # shrank


async def test_a_short_campaign_of_kill_9s_under_load_finds_nothing(pg_data_dir: Path) -> None:
    c = await campaign(pg_data_dir, cycles=4, seed=7, traders=4)
    assert c.violations == []
    assert [r.fault for r in c.rows] == ["server", "postgres", "server", "postgres"]
    assert c.history.commands >= 100, "too little load to mean anything"
    assert c.history.orders and c.history.deposits and c.history.withdrawals
    assert sum(r.retried for r in c.rows) >= 100
    assert len(c.checkpoints) == 4 and c.checkpoints[-1][0] > c.checkpoints[0][0]


async def test_a_command_is_sent_until_it_gets_an_answer_and_a_500_is_a_violation() -> None:
    answers: list[Exception | tuple[str, int]] = [
        httpx.ConnectError("down"),
        TokexApiError(503, "database_unavailable", "later", retry_after=1.0),
        TokexApiError(500, "internal_error", "oops"),
        TokexApiError(503, "exchange_busy", "no Retry-After"),
        ("deposit", 7),
    ]

    async def call() -> tuple[str, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retries = Retries()
    assert await send(call, retries, "deposit d-1") == ("deposit", 7)
    assert retries.doubts == 4
    assert [b.split(":")[1].split()[0] for b in retries.bad_answers] == ["500", "503"]

    async def refused() -> tuple[str, int]:
        raise TokexApiError(422, "insufficient_funds", "no")

    assert await send(refused, retries, "w-1") == ("refused", 422, "insufficient_funds")
