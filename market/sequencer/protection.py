"""Market buys: what they can really spend, so that their hold is that and no more.

A market buy used to reserve cash at the instrument's band maximum, so a buyer with
10,000,000 was refused a 100,000-token buy while the asks sat at 610-620. Now, before
the engine (the risk-hold stage), the sequencer walks the asks the order would take,
best first, as the book stands at that moment in the batch (nothing can change it
between this walk and the match, which runs next):

- the order goes to the engine as an IOC/FOK with a protection price: the price of
  the last ask level the walk reached (or the client's own `price`, the cap, if
  lower), so it can never fill deeper than the book it was priced on;
- `max_notional` (optional): spend at most this much on the tokens (fees come on top),
  like Binance's `quoteOrderQty`; the quantity becomes what it buys at the asks, at
  most the order's `quantity`;
- the hold is what the walk costs plus the larger fee rate on it: every fill at or
  below the protection price, taken best first, costs at most that, because the
  engine fills the same levels in the same order. One exception: with self-trade
  prevention that keeps matching past the buyer's own asks (`cancel_oldest`,
  `decrement_and_cancel`) the fills may skip the buyer's cheaper asks for dearer ones,
  so those orders hold the protection price for the whole quantity instead;
- no ask to take (or none at or under the cap) refuses the order before the engine
  with `no_liquidity`; the order is never journaled.

Pure: a function of the levels and the order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from market.clearing import rules as settlement
from market.clearing.rules import Terms
from schemas.market import DepthLevel, StpMode

__all__ = ["BuyPlan", "plan_market_buy"]

#: Self-trade prevention modes under which a taker stops at its own resting order.
_STOPS_AT_OWN = frozenset({StpMode.CANCEL_NEWEST, StpMode.CANCEL_BOTH})


@dataclass(frozen=True, slots=True)
class BuyPlan:
    """What a market buy sends to the engine and holds."""

    quantity: int  # tokens, a multiple of the lot
    protection: int  # the worst price it may fill at
    hold: int  # cash on hold: the walk's cost and fees


def plan_market_buy(
    asks: Iterable[DepthLevel], quantity: int, terms: Terms, *, cap: int | None,
    max_notional: int | None, stp: StpMode,
) -> BuyPlan | None:  # fmt: skip
    """The plan of a market buy of `quantity` (a positive multiple of the lot), or None
    when nothing at all can be bought (no ask, none under `cap`, or `max_notional`
    too small for one lot)."""
    lot = terms.lot_size
    left, cost, worst = quantity, 0, 0
    for level in asks:
        if cap is not None and level.price > cap:
            break
        take = min(left, level.quantity)
        if max_notional is not None:
            take = min(take, (max_notional - cost) // level.price * lot)
        if take <= 0:
            break
        cost += settlement.notional(take, level.price, lot)
        left -= take
        worst = level.price
        if not left:
            break
    bought = quantity - left
    if not bought:
        return None
    if stp not in _STOPS_AT_OWN:
        cost = settlement.notional(bought, worst, lot)
    fee_bps = max(terms.maker_fee_bps, terms.taker_fee_bps)
    return BuyPlan(quantity=bought, protection=worst, hold=cost + settlement.fee(cost, fee_bps))
