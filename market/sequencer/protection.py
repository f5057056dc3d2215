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
- the walk prices what the engine will fill, so the buyer's own asks count as the
  engine treats them under the order's self-trade prevention: `cancel_oldest` cancels
  them and matches on past them, so they are not liquidity and the walk skips them
  (counted, the engine would fill the same quantity deeper, past `max_notional`);
  `cancel_newest` and `cancel_both` stop at the first one and `decrement_and_cancel`
  takes the order's quantity off against them, so there they are counted at their
  price: the engine then spends at most what the walk did, never deeper;
- the hold is what the walk costs plus the larger fee rate on it: the engine takes the
  same asks in the same order up to the protection price (or, as above, fewer), so
  its fills cost at most that. One exception: under `decrement_and_cancel` each
  decrement of the order releases its hold at the order's price, the protection
  (`settle`), so those orders hold the protection price for the whole quantity;
- no ask to take (or none at or under the cap; under `cancel_oldest`, none but the
  buyer's own) refuses the order before the engine with `no_liquidity`; the order is
  never journaled.

Pure: a function of the levels and the order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from market.book_state import skips_own
from market.clearing import rules as settlement
from market.clearing.rules import Terms
from schemas.market import DepthLevel, StpMode

__all__ = ["BuyPlan", "plan_market_buy"]

#: Self-trade prevention under which the engine decrements the order against the
#: buyer's own asks, releasing its hold at the protection price for each decrement.
_RELEASES_AT_PROTECTION = frozenset({StpMode.DECREMENT_AND_CANCEL})


@dataclass(frozen=True, slots=True)
class BuyPlan:
    """What a market buy sends to the engine and holds."""

    quantity: int  # tokens, a multiple of the lot
    protection: int  # the worst price it may fill at
    hold: int  # cash on hold: the walk's cost and fees


def plan_market_buy(
    asks: Iterable[DepthLevel], quantity: int, terms: Terms, *, cap: int | None,
    max_notional: int | None, stp: StpMode, own: Mapping[int, int],
) -> BuyPlan | None:  # fmt: skip
    """The plan of a market buy of `quantity` (a positive multiple of the lot), or None
    when nothing at all can be bought (no ask, none under `cap`, or `max_notional`
    too small for one lot). `own`: the buyer's open ask quantity by price (only read
    when `skips_own(stp)`)."""
    lot = terms.lot_size
    skip = skips_own(stp)
    left, cost, worst = quantity, 0, 0
    for level in asks:
        if cap is not None and level.price > cap:
            break
        offered = level.quantity - own.get(level.price, 0) if skip else level.quantity
        if offered <= 0:
            continue  # only the buyer's own asks: cancelled, not taken
        take = min(left, offered)
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
    if stp in _RELEASES_AT_PROTECTION:
        cost = settlement.notional(bought, worst, lot)
    fee_bps = max(terms.maker_fee_bps, terms.taker_fee_bps)
    return BuyPlan(quantity=bought, protection=worst, hold=cost + settlement.fee(cost, fee_bps))
