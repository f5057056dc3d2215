"""What the chaos campaign (`ops.bench.chaos`) checks after every restart: pure functions
of what the clients were told (`History`) and what the exchange holds afterwards
(`Observed`), each returning the violations it finds as sentences (empty: all held).

A command is *acknowledged* when it got a definitive answer: a 2xx (its outcome) or a
pinned 4xx refusal (an order's or withdrawal's or deposit's 422: it stays refused). A
transport error or a 503 is no answer: the client retries it under the same id, and the
first definitive answer is its outcome. Cancels and amends carry no id: one that got no
answer may or may not have happened (`OrderRecord.prices` keeps an amend's price as
possible), and is not retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ledger.merkle import InvalidProof, verify_consistency

Key = tuple[str, str]  # (account, the caller's id)


@dataclass(slots=True)
class OrderRecord:
    """One order as its owner was told: placed (or refused), amended, cancelled."""

    account: str
    client_order_id: str
    side: str
    quantity: int
    order_id: int | None = None  # None: refused
    refused: str | None = None  # the refusal's code
    filled_at_least: int = 0
    #: The prices the order may have now: the last acknowledged one, and those of
    #: amends sent since that got no answer.
    prices: set[int] = field(default_factory=set)
    #: The filled quantity a cancel was acknowledged with: it may never grow after.
    cancelled_filled: int | None = None


@dataclass(frozen=True, slots=True)
class ObservedOrder:
    order_id: int
    status: str
    price: int | None
    quantity: int
    filled: int
    reject_reason: str | None


@dataclass(slots=True)
class History:
    """Everything acknowledged so far, by idempotency key."""

    orders: dict[Key, OrderRecord] = field(default_factory=dict)
    #: deposit id -> (transaction id, ledger index), or ("refused", code).
    deposits: dict[str, tuple[str, int | str]] = field(default_factory=dict)
    #: (account, withdrawal id) -> amount; marks: -> "paid" | "failed".
    withdrawals: dict[Key, int] = field(default_factory=dict)
    withdrawal_refusals: dict[Key, str] = field(default_factory=dict)
    marks: dict[Key, str] = field(default_factory=dict)
    #: (provider, report id) -> (tokens, transaction id).
    deliveries: dict[Key, tuple[int, str]] = field(default_factory=dict)
    commands: int = 0  # acknowledged commands, all kinds
    by_kind: dict[str, int] = field(default_factory=dict)

    def acknowledged(self, kind: str) -> None:
        self.commands += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


@dataclass(slots=True)
class Observed:
    """What the database holds after a restart (read once everything is quiet)."""

    orders: dict[Key, ObservedOrder]
    ledger_ids: dict[int, str]  # ledger index -> transaction id (of the deposits asked for)
    withdrawals: dict[Key, tuple[int, str]]  # -> (amount, status)
    deliveries: dict[Key, tuple[int, str]]  # -> (tokens, transaction id)
    fills: int
    fill_transactions: int
    orders_with_wrong_fill_sum: int
    asset_sums: dict[str, int]
    negative_balances: list[str]


def check_orders(history: History, observed: Mapping[Key, ObservedOrder]) -> list[str]:
    out: list[str] = []
    for key, rec in history.orders.items():
        got = observed.get(key)
        if got is None:
            out.append(f"order {key}: acknowledged, but the exchange has no such order")
            continue
        if rec.refused is not None:
            if got.status != "rejected" or got.reject_reason != rec.refused:
                out.append(f"order {key}: refused with {rec.refused}, now {got.status}")
            continue
        out.extend(_order_violations(key, rec, got))
    return out


def _order_violations(key: Key, rec: OrderRecord, got: ObservedOrder) -> list[str]:
    out = []
    if got.order_id != rec.order_id or got.quantity != rec.quantity:
        out.append(f"order {key}: acknowledged as {rec.order_id}, now {got.order_id}")
    if got.filled < rec.filled_at_least or got.filled > got.quantity:
        out.append(
            f"order {key}: filled {got.filled}, acknowledged with {rec.filled_at_least} "
            f"of {rec.quantity}"
        )
    if got.price not in rec.prices:
        out.append(f"order {key}: price {got.price}, acknowledged {sorted(rec.prices)}")
    if rec.cancelled_filled is not None and (
        got.status != "cancelled" or got.filled != rec.cancelled_filled
    ):
        out.append(
            f"order {key}: cancel acknowledged at {rec.cancelled_filled} filled, now "
            f"{got.status} with {got.filled}"
        )
    return out


def check_treasury(history: History, observed: Observed) -> list[str]:
    """Deposits, withdrawals (and their paid/failed marks) and deliveries as acknowledged."""
    out: list[str] = []
    for deposit_id, (tx_id, index) in history.deposits.items():
        if tx_id == "refused":
            continue
        assert isinstance(index, int)
        if observed.ledger_ids.get(index) != tx_id:
            out.append(f"deposit {deposit_id}: acknowledged as {tx_id} at {index}, not there")
    for key, amount in history.withdrawals.items():
        got = observed.withdrawals.get(key)
        if got is None or got[0] != amount:
            out.append(f"withdrawal {key}: acknowledged for {amount}, now {got}")
            continue
        mark = history.marks.get(key)
        if mark is not None and got[1] != mark:
            out.append(f"withdrawal {key}: marked {mark}, now {got[1]}")
    for key in history.withdrawal_refusals:
        if key in observed.withdrawals:
            out.append(f"withdrawal {key}: refused, yet the exchange holds it")
    for key, delivery in history.deliveries.items():
        got = observed.deliveries.get(key)
        if got != delivery:
            out.append(f"delivery {key}: acknowledged {delivery}, now {got}")
    return out


def check_ledger(observed: Observed) -> list[str]:
    """No fill doubled or lost, every asset sums to zero, no user balance negative."""
    out: list[str] = []
    if observed.fills != observed.fill_transactions:
        out.append(
            f"{observed.fills} fills but {observed.fill_transactions} fill transactions "
            "(a fill doubled or lost)"
        )
    if observed.orders_with_wrong_fill_sum:
        out.append(f"{observed.orders_with_wrong_fill_sum} orders whose fills do not sum")
    out += [f"asset {a} sums to {s}, not 0" for a, s in observed.asset_sums.items() if s]
    out += [f"negative balance: {b}" for b in observed.negative_balances]
    return out


def check_all(history: History, observed: Observed) -> list[str]:
    return [
        *check_orders(history, observed.orders),
        *check_treasury(history, observed),
        *check_ledger(observed),
    ]


def check_retry(what: str, first: object, retry: object) -> list[str]:
    """A retry under the same id must answer the first outcome (both normalised)."""
    return [] if first == retry else [f"retry of {what}: first {first!r}, retry {retry!r}"]


def check_consistency(
    earlier: Iterable[tuple[int, bytes]], size: int, root: bytes, proofs: Mapping[int, list[bytes]]
) -> list[str]:
    """The new checkpoint (size, root) extends every earlier one: `proofs[m]` is the
    consistency proof from size m to `size`, as the exchange served it."""
    out: list[str] = []
    for first, first_root in earlier:
        if first > size:
            out.append(f"checkpoint shrank from {first} to {size}")
            continue
        if first == 0:
            continue
        try:
            verify_consistency(first, size, first_root, root, proofs.get(first, []))
        except InvalidProof as exc:
            out.append(f"checkpoint {size} inconsistent with {first}: {exc}")
    return out
