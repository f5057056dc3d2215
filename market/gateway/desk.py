"""Where a call's reservation is decided: the `Desk`, in the process of the sequencer.

A call is routed and reserves on the sequencer's memory (`catalog`: the model's
instruments, the buyer's entitlement as of the last commit) less what the desk has
promised away (`meter.Reservations`: reserved by calls in flight, charged by finished
calls whose delivery has not committed yet), and on the calls in flight per endpoint
(its `max_concurrency`): the check and the reservation in one step of the event loop,
so concurrent calls can never together overdraw an entitlement or a key's budget. There
is one desk per exchange, next to its sequencer, for every gateway that serves calls:

* in one process (`tokex serve`), the gateway (`service.Gateway`) calls it directly,
  as before it had one (no message, no copy);
* with `tokex serve --workers N`, the sequencer process runs it and each gateway
  process asks it over NATS (`desk_wire`: one request to reserve; the end of a call
  rides with its receipt's charge, which goes to the desk rather than straight to the
  sequencer; `desk_server` and `desk_remote`).

`DeskPort` is what the gateway needs of either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg

from market.gateway import metering, receipts, routing
from market.gateway.catalog import Catalog, CommittedView, StaleView
from market.gateway.errors import InsufficientEntitlement, NoEndpoint
from market.gateway.meter import Group, Reservations, SequencerSource, current
from market.sequencer import Sequencer
from market.sequencer.batch import nothing_delivering, nothing_reserved
from market.signing import now_ms
from schemas.errors import DomainError

log = logging.getLogger(__name__)

Slot = tuple[str, str]  # (provider, endpoint id)
Reserved = tuple[routing.Route, metering.Plan]


class DeskPort(Protocol):
    """What a gateway needs of the desk, here or in the sequencer process."""

    async def models(self, buyer: str, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        """The models `buyer` may call now (of `allowed`; None: any)."""

    async def reserve(
        self, receipt_id: str, buyer: str, key_id: str, budget: int | None, model: str,
        wants: metering.Demand, endpoints: list[routing.Endpoint],
    ) -> Reserved:  # fmt: skip
        """Route the call and reserve for it (or raise 402 / 503)."""

    def ended(
        self, receipt_id: str, group: Group, key_id: str, slot: Slot, reserved: int,
        charged: int, *, served: bool,
    ) -> None:  # fmt: skip
        """The call ended (its receipt, if served, is filed with the meter)."""


def no_route(route: routing.NoRoute, model: str) -> DomainError:
    if route is routing.NoRoute.NO_ENTITLEMENT:
        return InsufficientEntitlement(f"no entitlement left for model {model!r} now")
    if route is routing.NoRoute.NO_ENDPOINT:
        return NoEndpoint(f"no healthy endpoint serves model {model!r} for your entitlement")
    return NoEndpoint(f"every endpoint of {model!r} is at its concurrency", code="endpoints_busy")


class Desk:
    """The reservations of every gateway of one exchange (see the module)."""

    def __init__(self, sequencer: SequencerSource, pool: asyncpg.Pool) -> None:
        self._sequencer = sequencer
        self.pool = pool
        self.reservations = Reservations()
        self.catalog = Catalog()
        self.view = CommittedView()
        #: calls in flight per (provider, endpoint id) (entries only while there are)
        self.in_flight: dict[Slot, int] = {}
        #: calls routed on the committed view without waiting, and after waiting for the
        #: batch in flight (ops/bench)
        self.routed_at_once = 0
        self.routed_after_commit = 0
        self._refreshing: set[asyncio.Task[None]] = set()

    @property
    def sequencer(self) -> Sequencer:
        """The exchange's sequencer now (a new one after a reopen)."""
        return current(self._sequencer)

    def close(self) -> None:
        log.info("gateway: %d calls routed at once, %d after the batch in flight",
                 self.routed_at_once, self.routed_after_commit)  # fmt: skip

    async def models(self, buyer: str, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        """The models of `allowed` (None: any) live now that the buyer holds entitlement on."""
        await self.sequencer.committed()
        sequencer, now = self.sequencer, now_ms()
        held = self._held(buyer)
        seen: dict[str, int] = {}
        for model in self.catalog.models(sequencer.market):
            if allowed is not None and model not in allowed:
                continue
            for w in self.catalog.windows(sequencer.market, model):
                live = w.start_ms <= now < w.end_ms
                if live and any(n > 0 for n in held.get(w.symbol, {}).values()):
                    seen.setdefault(model, w.start_ms // 1000)
        return [{"id": m, "object": "model", "created": c, "owned_by": "tokex"}
                for m, c in sorted(seen.items())]  # fmt: skip

    async def _load_key_used(self, key_id: str, budget: int | None) -> None:
        """What a budgeted key has used so far, read once; what is left is computed after
        the last await before the reservation (`Reservations.key_left`)."""
        if budget is not None and key_id not in self.reservations.key_used:
            async with self.pool.acquire() as conn:
                used = await receipts.tokens_used(conn, [key_id])
            self.reservations.key_used.setdefault(key_id, used.get(key_id, 0))

    def refresh(self, groups: set[Group]) -> None:
        """A charge committed: read these balances again as of the commit, so that the
        next calls of these buyers route at once rather than wait for the next batch."""
        task = asyncio.create_task(self._refresh(groups), name="gateway-view")
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, groups: set[Group]) -> None:
        sequencer = self._sequencer()
        if sequencer is None:
            return
        try:
            await sequencer.committed()
        except DomainError:
            return  # the ledger is rebuilding: calls wait for it themselves
        for group in groups:  # no await from here: memory holds only committed state
            self.view.left(sequencer, self.reservations, group, fresh=True)

    def _held(self, buyer: str) -> dict[str, dict[str, int]]:
        """Entitlement left per instrument and provider, from every balance of the buyer."""
        out: dict[str, dict[str, int]] = {}
        for e in self.sequencer.entitlements_of(buyer):
            if e.buyer == buyer and e.entitlement > 0:
                left = self.reservations.left((buyer, e.provider, e.instrument), e.entitlement)
                out.setdefault(e.instrument, {})[e.provider] = left
        return out

    async def reserve(
        self, receipt_id: str, buyer: str, key_id: str, budget: int | None, model: str,
        wants: metering.Demand, endpoints: list[routing.Endpoint],
    ) -> Reserved:  # fmt: skip
        """Route the call and reserve for it (or raise 402/503)."""
        await self._load_key_used(key_id, budget)
        sequencer = self.sequencer
        if not sequencer.healthy:
            await sequencer.committed()  # 503 while memory may hold a failed batch
        # From here to the reservation: no await, so no other call sees the same balance
        # (of the entitlement or of the key's budget). The balances as of the last commit
        # (`CommittedView`), without waiting for a batch in flight; else after it.
        try:
            reserved = self._reserve(buyer, key_id, budget, model, wants, endpoints, fresh=False)
        except StaleView:
            pass
        else:
            self.routed_at_once += 1
            return reserved
        await self.sequencer.committed()
        self.routed_after_commit += 1
        return self._reserve(buyer, key_id, budget, model, wants, endpoints, fresh=True)

    def _reserve(
        self, buyer: str, key_id: str, budget: int | None, model: str, wants: metering.Demand,
        endpoints: Sequence[routing.Endpoint], *, fresh: bool,
    ) -> Reserved:  # fmt: skip
        sequencer, now = self.sequencer, now_ms()
        key_left = self.reservations.key_left(key_id, budget)
        providers = {e.provider for e in endpoints}
        live = routing.live(self.catalog.windows(sequencer.market, model), now)

        def providers_of(symbol: str) -> dict[str, int]:
            return {
                p: self.view.left(sequencer, self.reservations, (buyer, p, symbol), fresh=fresh)
                for p in providers
            }

        market = sequencer.market

        def needs(symbol: str) -> tuple[int, int]:
            weight = market.instrument(symbol).terms.completion_weight
            wanted = metering.DEFAULT_MAX_TOKENS if wants.max_tokens is None else wants.max_tokens
            return wants.prompt_estimate + weight * wanted, wants.prompt_estimate + weight

        route = routing.choose(live, providers_of, endpoints, self.in_flight, needs)
        if route is routing.NoRoute.NO_ENTITLEMENT and live:
            if not fresh:
                raise StaleView  # decide 402 or 503 on the committed state
            # None with an endpoint: is it 402, or entitlement with providers that have
            # no healthy endpoint (503)? Only failures take this scan of the balances.
            held = self._held(buyer)
            route = routing.choose(live, lambda s: held.get(s, {}), endpoints, self.in_flight)
        if isinstance(route, routing.NoRoute):
            raise no_route(route, model)
        available = route.available if key_left is None else min(route.available, key_left)
        weight = sequencer.market.instrument(route.instrument).terms.completion_weight
        plan = metering.plan_of(wants, available, weight)
        if plan is None:
            if not fresh:
                raise StaleView
            left = (
                "this key's budget"
                if key_left is not None and key_left < route.available
                else "entitlement"
            )
            raise InsufficientEntitlement(
                f"{available} tokens of {left} left: not enough for this prompt and a completion"
            )
        self.reservations.reserve((buyer, route.provider, route.instrument), key_id, plan.reserved)
        slot = (route.provider, route.endpoint.endpoint_id)
        self.in_flight[slot] = self.in_flight.get(slot, 0) + 1
        return route, plan

    def ended(
        self, receipt_id: str, group: Group, key_id: str, slot: Slot, reserved: int,
        charged: int, *, served: bool,
    ) -> None:  # fmt: skip
        """Release what the call reserved beyond its charge (held until it commits) and
        its endpoint's place."""
        drop(self.in_flight, slot)
        self.reservations.finish(group, key_id, reserved, charged)


def desk_starting(instrument: str) -> bool:
    """What the sequencer asks until this process's desk is attached (`watch_deliveries`):
    its gateway may owe charges (calls a crash cut, filed at start-up), so every
    settlement waits (at most `settle_wait_ms`)."""
    return True


def watch_deliveries(state: Any, desk: Desk | None) -> None:
    """Let the sequencer's settlement of an instrument wait for this desk's calls on it
    (`Sequencer.delivering`), and keep reports and vouchers off what its calls reserved
    (`Sequencer.reserved`): the sequencer running now, and each one a reopen after an
    outage opens (`ops.exchange` reads `state.delivering` and `state.reserved`). None:
    the desk is gone."""
    delivering = nothing_delivering if desk is None else desk.reservations.delivering
    reserved = nothing_reserved if desk is None else desk.reservations.reserved
    state.delivering, state.reserved = delivering, reserved
    sequencer = state.get("sequencer")
    if sequencer is not None:
        sequencer.delivering, sequencer.reserved = delivering, reserved


def drop(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
