"""Which instrument, provider and endpoint serve a call (pure: time is an argument).

The rule, for a buyer calling model M at time t:

1. instruments of M whose delivery window contains t (window start <= t < window end)
   and that are not settled;
2. of those, the (instrument, provider) pairs where the buyer has entitlement left
   (the ledger's balance less what the gateway has reserved or charged but not yet
   settled) and the provider has a healthy endpoint for M with room (calls in flight
   below its `max_concurrency`);
3. of those, the pairs with entitlement enough for the whole call (its prompt estimate
   and its `max_tokens`), if any; else those with enough for its prompt and one
   completion token (the call then gets a lower cap): a small leftover on the window
   that ends first neither refuses nor cuts short a call another pair covers;
4. the instrument whose window ends first (use the tokens that expire first), then the
   provider with the most entitlement left, then the smaller provider id; and that
   provider's endpoint with the fewest calls in flight, then the smaller endpoint id.

No pair with entitlement left: 402 `insufficient_entitlement`. Entitlement left but no
healthy endpoint: 503 `no_healthy_endpoint`; healthy endpoints but all full: 503
`endpoints_busy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class Window:
    """An unsettled instrument's delivery window (`catalog.Catalog` keeps them per model)."""

    symbol: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    provider: str
    endpoint_id: str
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class Route:
    instrument: str
    provider: str
    endpoint: Endpoint
    available: int


class NoRoute(Enum):
    NO_ENTITLEMENT = "no_entitlement"
    NO_ENDPOINT = "no_endpoint"
    BUSY = "busy"


def live(windows: Iterable[Window], now_ms: int) -> list[str]:
    """The symbols whose window contains `now_ms`, by window end then symbol."""
    found = [w for w in windows if w.start_ms <= now_ms < w.end_ms]
    return [w.symbol for w in sorted(found, key=lambda w: (w.end_ms, w.symbol))]


#: What a call needs of a pair on an instrument: (the whole call, its least).
Needs = Callable[[str], tuple[int, int]]


def _any(symbol: str) -> tuple[int, int]:
    return 1, 1


def choose(
    instruments: Sequence[str],
    providers_of: Callable[[str], Mapping[str, int]],
    endpoints: Sequence[Endpoint],
    in_flight: Mapping[tuple[str, str], int],
    needs: Needs = _any,
) -> Route | NoRoute:
    """Apply the rule to the live instruments' symbols (from `live`). `providers_of(symbol)` is the
    entitlement left per provider; `in_flight` counts calls per (provider, endpoint id);
    `needs(symbol)` what the call needs there, whole and at least (step 3)."""
    by_provider: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        by_provider.setdefault(e.provider, []).append(e)
    left = {symbol: providers_of(symbol) for symbol in instruments}
    whole = _choose(instruments, left, by_provider, in_flight, lambda s: needs(s)[0])
    if isinstance(whole, Route):
        return whole
    return _choose(instruments, left, by_provider, in_flight, lambda s: needs(s)[1])


def _choose(
    instruments: Sequence[str],
    lefts: Mapping[str, Mapping[str, int]],
    by_provider: Mapping[str, list[Endpoint]],
    in_flight: Mapping[tuple[str, str], int],
    least: Callable[[str], int],
) -> Route | NoRoute:
    outcome = NoRoute.NO_ENTITLEMENT
    for symbol in instruments:
        floor = max(1, least(symbol))
        left = sorted(
            ((p, n) for p, n in lefts[symbol].items() if n >= floor),
            key=lambda pn: (-pn[1], pn[0]),
        )
        for provider, available in left:
            mine = by_provider.get(provider, [])
            room = [
                e for e in mine if in_flight.get((provider, e.endpoint_id), 0) < e.max_concurrency
            ]
            if room:
                best = min(room, key=lambda e: (in_flight.get((provider, e.endpoint_id), 0),
                                                e.endpoint_id))  # fmt: skip
                return Route(symbol, provider, best, available)
            if mine:
                outcome = NoRoute.BUSY
            elif outcome is NoRoute.NO_ENTITLEMENT:
                outcome = NoRoute.NO_ENDPOINT
    return outcome
