"""What the gateway reads of the sequencer's memory per call, without scanning it.

* `Catalog`: the instruments of each model as routing `Window`s, sorted by window end,
  kept as long as the sequencer's market is the same object with the same number of
  instruments and of unsettled instruments (a listing adds one to both, a settlement
  takes one from the second, a rebuild replaces the object); so a call reads the few
  instruments of its model, not a view of every instrument.
* `entitlement_left`: one buyer's entitlement with one provider on one instrument, by
  the ledger account's key (one dict lookup), less the gateway's reservations.

Read right after `Sequencer.committed()`, with no await in between (`views`' rule).
"""

from __future__ import annotations

from market.clearing import rules as settlement
from market.gateway.meter import Reservations
from market.gateway.routing import Window
from market.sequencer import Sequencer
from market.sequencer.state import MarketState


class Catalog:
    def __init__(self) -> None:
        self._market: MarketState | None = None
        self._sizes = (0, 0)
        self._by_model: dict[str, list[Window]] = {}

    def windows(self, market: MarketState, model: str) -> list[Window]:
        """The unsettled instruments of `model`, by window end then symbol."""
        sizes = (len(market.instruments), len(market.unsettled))
        if market is not self._market or sizes != self._sizes:
            self._rebuild(market)
            self._market, self._sizes = market, sizes
        return self._by_model.get(model, [])

    def models(self, market: MarketState) -> list[str]:
        self.windows(market, "")
        return sorted(self._by_model)

    def _rebuild(self, market: MarketState) -> None:
        by_model: dict[str, list[Window]] = {}
        for state in market.unsettled.values():
            i = state.instrument
            window = Window(state.symbol, i.window_start * 1000, state.window_end_ms)
            by_model.setdefault(i.model, []).append(window)
        for windows in by_model.values():
            windows.sort(key=lambda w: (w.end_ms, w.symbol))
        self._by_model = by_model


def entitlement_left(
    sequencer: Sequencer, reservations: Reservations, buyer: str, provider: str, symbol: str
) -> int:
    """The buyer's entitlement from `provider` on `symbol` less what the gateway holds of it."""
    account = settlement.entitlement(buyer, provider, symbol)
    held = sequencer.ledger.balance(account).available
    return reservations.left((buyer, provider, symbol), held) if held > 0 else 0
