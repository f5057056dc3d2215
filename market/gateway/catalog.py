"""What the gateway reads of the sequencer's memory per call, without scanning it.

* `Catalog`: the instruments of each model as routing `Window`s, sorted by window end,
  kept as long as the sequencer's market is the same object with the same number of
  instruments and of unsettled instruments (a listing adds one to both, a settlement
  takes one from the second, a rebuild replaces the object); so a call reads the few
  instruments of its model, not a view of every instrument.
* `CommittedView`: one buyer's entitlement with one provider on one instrument, by the
  ledger account's key (one dict lookup), less the gateway's reservations; as committed,
  also while a batch is in flight (see the class).
"""

from __future__ import annotations

from market.clearing import rules as settlement
from market.gateway.meter import Group, Reservations
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


class StaleView(Exception):
    """The committed view has no value for a balance since the last commit: wait for
    `Sequencer.committed()` and read again (`CommittedView.left(..., fresh=True)`)."""


class CommittedView:
    """Entitlement balances as of the sequencer's last commit, readable while a batch is in
    flight (without waiting for it, so a call's first byte does not wait for a commit).

    Memory holds a batch's effects from its staging on, before its commit. A value read
    while the sequencer was idle (after `committed()`) is the committed balance of commit
    N; while commit N+1 is in flight, `min(that value, memory)` is never more than what is
    committed: the batch in flight can only add to memory what is not committed yet, and
    what it takes away only makes the value smaller. Values are kept for one commit count
    of one sequencer (a reopened exchange has a new one): at most the balances read
    since the last commit."""

    def __init__(self) -> None:
        self._owner: Sequencer | None = None
        self._at = -1
        self._values: dict[Group, int] = {}

    def left(
        self, sequencer: Sequencer, reservations: Reservations, group: Group, *, fresh: bool
    ) -> int:
        """The buyer's entitlement on `group` less what the gateway holds of it. `fresh`:
        the sequencer is idle now (right after `committed()`); else `StaleView` if no
        value of the last commit is known."""
        buyer, provider, symbol = group
        memory = sequencer.ledger.balance(settlement.entitlement(buyer, provider, symbol))
        held = memory.available
        if fresh:
            if sequencer is not self._owner or sequencer.commits != self._at:
                self._owner, self._at, self._values = sequencer, sequencer.commits, {}
            self._values[group] = held
        else:
            if sequencer is not self._owner or sequencer.commits != self._at:
                raise StaleView
            known = self._values.get(group)
            if known is None:
                raise StaleView
            held = min(known, held)
        return reservations.left(group, held) if held > 0 else 0
