"""The chaos campaign's clients (see `ops.bench.chaos`): traders and an operator sending
orders, cancels, amends, deliveries, withdrawals, deposits and withdrawal outcomes, and
writing what they were told into the campaign's `History`.

Every command with an id is sent until it gets a definitive answer (`send`): a transport
error or a 503 is retried under the same id, as a client of the exchange must. Each is
also kept (`Retries`) so that the campaign can send it once more after a restart and
compare the answer with the first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from market.client import TokexApiError, TokexClient
from ops.bench.chaos_check import History, OrderRecord
from schemas.market import Side
from schemas.trading import OrderView, PlaceOrder

SYM = "chaos-model/2031-01-01T00Z/1h"  # far ahead: its window never closes during a run
LOT = 1000

#: A normalised outcome: what must be the same for the first answer and every retry.
Outcome = tuple[Any, ...]
Call = Callable[[], Awaitable[Outcome]]


class NoAnswer(Exception):
    """No definitive answer (transport errors or 503s) within the deadline."""


@dataclass(slots=True)
class Retries:
    """Acknowledged commands with an id: name -> (the call, its first outcome)."""

    calls: dict[str, tuple[Call, Outcome]] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)  # acknowledged since the last check
    #: 5xx other than 503, and 503s without Retry-After: each is a violation.
    bad_answers: list[str] = field(default_factory=list)
    doubts: int = 0  # answers that were no answer (retried)


def refused(exc: TokexApiError) -> Outcome:
    return ("refused", exc.status, exc.code)


async def send(call: Call, retries: Retries, what: str, deadline_s: float = 90.0) -> Outcome:
    """`call()` until a definitive answer: its outcome, or `refused(...)` for a 4xx. A
    transport error or a 503 is retried (same id) every 0.1 s; after `deadline_s` without
    an answer it raises NoAnswer (the exchange did not come back: a violation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            return await call()
        except TokexApiError as exc:
            if exc.status < 500:
                return refused(exc)
            if exc.status != 503 or exc.retry_after is None:
                retries.bad_answers.append(f"{what}: {exc.status} {exc.code} {exc.message}")
        except (httpx.HTTPError, OSError):
            pass
        retries.doubts += 1
        if loop.time() > deadline:
            retries.bad_answers.append(f"{what}: no answer within {deadline_s} s")
            raise NoAnswer(what)
        await asyncio.sleep(0.1)


def order_outcome(view: OrderView) -> Outcome:
    return ("order", view.order_id, view.quantity, view.side.value)


@dataclass(slots=True)
class Trader:
    """A buyer or a provider: orders on one side, cancels and amends of its own."""

    client: TokexClient
    account_id: str
    side: Side
    tag: str
    history: History
    retries: Retries
    rng: random.Random
    n: int = 0
    open: list[int] = field(default_factory=list)  # acknowledged open order ids
    by_id: dict[int, OrderRecord] = field(default_factory=dict)

    async def place(self) -> None:
        self.n += 1
        order = PlaceOrder(
            client_order_id=f"{self.tag}-{self.n}", instrument=SYM, side=self.side,
            quantity=LOT * self.rng.randint(1, 5), price=self.rng.randint(95, 105),
        )  # fmt: skip
        seen: list[OrderView] = []

        async def call() -> Outcome:
            view = await self.client.place_order(order)
            seen.append(view)
            return order_outcome(view)

        outcome = await send(call, self.retries, f"order {order.client_order_id}")
        rec = OrderRecord(self.account_id, order.client_order_id, self.side.value, order.quantity)
        if outcome[0] == "refused":
            if outcome[1] != 422:
                return  # not an outcome the exchange pins (e.g. 409): nothing to hold it to
            rec.refused = str(outcome[2])
        else:
            view = seen[-1]
            rec.order_id, rec.filled_at_least = view.order_id, view.filled_quantity
            rec.prices = {order.price or 0}
            if view.status == "open":
                self.open.append(view.order_id)
            self.by_id[view.order_id] = rec
        self._acknowledged(f"order {self.account_id} {order.client_order_id}", call, outcome)
        self.history.orders[(self.account_id, order.client_order_id)] = rec

    def _acknowledged(self, name: str, call: Call, outcome: Outcome) -> None:
        self.retries.calls[name] = (call, outcome)
        self.retries.recent.append(name)
        self.history.acknowledged(name.split()[0])

    async def cancel(self) -> None:
        if not self.open:
            return
        order_id = self.open.pop(self.rng.randrange(len(self.open)))
        try:
            view = await self.client.cancel_order(order_id)
        except (TokexApiError, httpx.HTTPError, OSError):
            return  # refused (filled meanwhile), or no answer: it may have happened
        rec = self.by_id[order_id]
        rec.cancelled_filled = view.filled_quantity
        rec.filled_at_least = max(rec.filled_at_least, view.filled_quantity)
        self.history.acknowledged("cancel")

    async def amend(self) -> None:
        if not self.open:
            return
        order_id = self.rng.choice(self.open)
        rec = self.by_id[order_id]
        price = self.rng.randint(95, 105)
        before = set(rec.prices)
        rec.prices.add(price)  # possible from now on, unless it is refused
        try:
            view = await self.client.amend_order(order_id, price=price)
        except TokexApiError as exc:
            if exc.status < 500:
                rec.prices = before  # refused: it did not happen
            return
        except (httpx.HTTPError, OSError):
            return
        rec.prices = {view.price or 0}
        rec.filled_at_least = max(rec.filled_at_least, view.filled_quantity)
        if view.status != "open":
            self.open.remove(order_id)
        self.history.acknowledged("amend")

    async def withdraw(self) -> None:
        self.n += 1
        withdrawal_id = f"{self.tag}-w{self.n}"
        amount = self.rng.randint(1, 1000)

        async def call() -> Outcome:
            view = await self.client.withdraw(withdrawal_id, amount)
            return ("withdrawal", view.amount, view.created_at_ms)

        outcome = await send(call, self.retries, f"withdrawal {withdrawal_id}")
        key = (self.account_id, withdrawal_id)
        if outcome[0] == "refused":
            if outcome[1] != 422:
                return
            self.history.withdrawal_refusals[key] = str(outcome[2])
        else:
            self.history.withdrawals[key] = amount
        self._acknowledged(f"withdrawal {self.account_id} {withdrawal_id}", call, outcome)

    async def deliver(self) -> None:
        """A provider reports tokens served to one of its buyers (what is still owed)."""
        try:
            owed = [e for e in await self.client.entitlements()
                    if e.provider == self.account_id and e.entitlement > 0]  # fmt: skip
        except (TokexApiError, httpx.HTTPError, OSError):
            return
        if not owed:
            return
        e = self.rng.choice(owed)
        self.n += 1
        report_id = f"{self.tag}-d{self.n}"
        tokens = self.rng.randint(1, min(e.entitlement, 3 * LOT))

        async def call() -> Outcome:
            view = await self.client.report_delivery(report_id, SYM, e.buyer, tokens)
            # a report is pending, then settled (its transaction id moves from the hold's
            # to the delivery's): what stays is the report itself and its tokens
            return ("delivery", view.tokens, view.report_id)

        outcome = await send(call, self.retries, f"delivery {report_id}")
        if outcome[0] == "refused":
            return  # a refused report records nothing (its id stays free)
        self.history.deliveries[(self.account_id, report_id)] = (
            tokens,
            str(outcome[2]),
        )  # tokens, report id
        self._acknowledged(f"delivery {self.account_id} {report_id}", call, outcome)

    async def step(self) -> None:
        r = self.rng.random()
        if r < 0.5:
            await self.place()
        elif r < 0.65:
            await self.cancel()
        elif r < 0.8:
            await self.amend()
        elif self.side is Side.BUY:
            await self.withdraw()
        else:
            await self.deliver()


@dataclass(slots=True)
class Operator:
    """Deposits to the buyers; marks pending withdrawals paid or failed."""

    client: TokexClient
    buyers: list[str]
    history: History
    retries: Retries
    rng: random.Random
    n: int = 0

    async def deposit(self, account_id: str, amount: int) -> None:
        self.n += 1
        deposit_id = f"dep-{self.n}"

        async def call() -> Outcome:
            receipt = await self.client.deposit(deposit_id, account_id, amount)
            return ("deposit", receipt.transaction_id, receipt.ledger_index)

        outcome = await send(call, self.retries, f"deposit {deposit_id}")
        if outcome[0] == "refused":
            if outcome[1] != 422:
                return
            self.history.deposits[deposit_id] = ("refused", str(outcome[2]))
        else:
            self.history.deposits[deposit_id] = (str(outcome[1]), int(outcome[2]))
        self.retries.calls[f"deposit {deposit_id}"] = (call, outcome)
        self.retries.recent.append(f"deposit {deposit_id}")
        self.history.acknowledged("deposit")

    async def mark(self) -> None:
        pending = [k for k in self.history.withdrawals if k not in self.history.marks]
        if not pending:
            return
        account_id, withdrawal_id = key = self.rng.choice(pending)
        paid = self.rng.random() < 0.7

        async def call() -> Outcome:
            view = await self.client.mark_withdrawal(account_id, withdrawal_id, paid)
            return ("marked", view.status)

        outcome = await send(call, self.retries, f"mark {withdrawal_id}")
        if outcome[0] == "refused":
            return
        self.history.marks[key] = str(outcome[1])
        self.retries.calls[f"mark {account_id} {withdrawal_id}"] = (call, outcome)
        self.history.acknowledged("mark")

    async def step(self) -> None:
        if self.rng.random() < 0.6:
            amount = self.rng.randint(10**6, 10**7)
            await self.deposit(self.rng.choice(self.buyers), amount)
        else:
            await self.mark()
        await asyncio.sleep(0.02)


async def run_until(step: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Steps until `stop` (a command under way is sent until it has its answer)."""
    while not stop.is_set():
        try:
            await step()
        except NoAnswer:
            return
