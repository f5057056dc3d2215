"""The life of an instrument: listing it, the close of trading at its window's end,
and its settlement after the delivery grace (or at once, by the operator).

Both steps are checked at the start of every batch against the batch's time (`due`),
and woken by the sequencer's clock:

- window end (window_start + duration): trading closes — the engine's
  `SetTradingState(CLOSED)`, journaled like any command, cancels every open order
  and `settle.apply_events` voids their holds. Deliveries are still accepted.
- window end + `delivery_grace_seconds`: settlement (`settle_instrument`): for each
  (buyer, provider) the remaining entitlement is burned and the remaining escrow
  refunded to the buyer; unsold capacity is burned. The instrument is then settled
  (a row of `market_settlements`, which is what recovery reads): orders, listings
  and deliveries on it are refused with `instrument_settled`. Its accounts — every
  account of its token (entitlements, capacities, its issuance) and its escrows, all
  at zero now — are retired in the same batch (`LedgerBatch.retire`): a restart does
  not load them, and nothing is ever posted to them again.

To find what to settle, settlement scans the ledger's in-memory balances for the
instrument's token and escrow accounts: one pass per settled instrument, which is
cheap beside the batch it runs in at this scale (an index by instrument would be the
next step).
"""

from __future__ import annotations

from market.clearing import rules as settlement
from market.clearing.rules import Terms
from market.instruments import make_instrument
from market.sequencer.batch import Batch, must
from market.sequencer.errors import DuplicateInstrument
from market.sequencer.settle import apply_events
from market.sequencer.state import InstrumentState
from market.store import ListInstrument
from schemas.ledger import Account
from schemas.market import SetTradingState, TradingState
from schemas.trading import CreateInstrument, SettlementView


def create_instrument(batch: Batch, req: CreateInstrument) -> InstrumentState:
    """List a new instrument: journaled, so that recovery lists it again."""
    instrument = make_instrument(
        req.symbol,
        lot_size=req.lot_size,
        tick_size=req.tick_size,
        price_min=req.price_min,
        price_max=req.price_max,
    )
    market = batch.market
    if instrument.symbol in market.engine:
        raise DuplicateInstrument(f"instrument {req.symbol!r} already exists")
    batch.record(
        ListInstrument(
            instrument=instrument, maker_fee_bps=req.maker_fee_bps,
            taker_fee_bps=req.taker_fee_bps, provider_fee_bps=req.provider_fee_bps,
            currency=batch.currency, time=batch.time_ms,
        )
    )  # fmt: skip
    terms = Terms(
        symbol=instrument.symbol, lot_size=instrument.lot_size, currency=batch.currency,
        maker_fee_bps=req.maker_fee_bps, taker_fee_bps=req.taker_fee_bps,
        provider_fee_bps=req.provider_fee_bps,
    )  # fmt: skip
    state = InstrumentState.build(
        market.engine.add_instrument(instrument), terms, req.delivery_grace_seconds
    )
    market.add(state)
    batch.instruments.append(
        (
            instrument.symbol, instrument.model, instrument.window_start,
            instrument.duration, instrument.lot_size, instrument.tick_size,
            instrument.price_min, instrument.price_max, req.maker_fee_bps,
            req.taker_fee_bps, req.provider_fee_bps, batch.currency, batch.time_ms,
            req.delivery_grace_seconds,
        )
    )  # fmt: skip
    return state


def due(batch: Batch) -> None:
    """Close trading on instruments whose window has ended; settle those past grace."""
    market = batch.market
    if market.next_window_event_ms() > batch.time_ms:
        return
    for symbol in sorted(market.unsettled):
        state = market.unsettled[symbol]
        if state.settle_at_ms <= batch.time_ms:
            settle_instrument(batch, state, "window")
        elif state.window_end_ms <= batch.time_ms:
            _close_trading(batch, state)


def _close_trading(batch: Batch, state: InstrumentState) -> None:
    """The engine closes the book (final): open orders are cancelled, holds voided."""
    if state.trading_closed:
        return
    command = SetTradingState(
        instrument=state.symbol, state=TradingState.CLOSED, time=batch.time_ms
    )
    apply_events(batch, batch.run_engine(command))


def settle_instrument(batch: Batch, state: InstrumentState, reason: str) -> SettlementView:
    """Close trading if still open, then burn and refund what is left; idempotent."""
    if state.settlement is not None:
        return state.settlement
    _close_trading(batch, state)
    terms = state.terms
    pairs, capacities, accounts = _leftovers(batch, terms)
    n = burned = refunded = capacity_burned = 0
    for owner in sorted(pairs):
        buyer, provider = settlement.parse_pair(owner)
        tokens, cash = pairs[owner]
        tx = settlement.close_entitlement(
            f"close:{terms.symbol}:{n}", buyer, provider, terms, tokens, cash, batch.time_ms
        )
        must(batch.ledger.apply(tx))
        n += 1
        burned += tokens
        refunded += cash
    for provider, amount in sorted(capacities):
        tx = settlement.close_capacity(
            f"close:{terms.symbol}:{n}", provider, terms.symbol, amount, batch.time_ms
        )
        must(batch.ledger.apply(tx))
        n += 1
        capacity_burned += amount
    batch.ledger.retire(accounts)  # all at zero now (else AccountNotEmpty: a bug)
    view = SettlementView(
        instrument=terms.symbol, reason=reason, time=batch.time_ms, entitlement_burned=burned,
        refunded=refunded, capacity_burned=capacity_burned,
    )  # fmt: skip
    batch.settlements.append(view)
    batch.market.settled(state, view)  # taken back by the rebuild if the batch fails
    return view


def _leftovers(
    batch: Batch, terms: Terms
) -> tuple[dict[str, list[int]], list[tuple[str, int]], list[Account]]:
    """What is left of an instrument once trading is closed: per "buyer@provider" pair
    [entitlement, escrow], per provider its unsold capacity; and every account of the
    instrument (its token's and its escrows, at zero or not)."""
    token, escrow_kind = terms.token_asset, f"escrow:{terms.symbol}"
    pairs: dict[str, list[int]] = {}
    capacities: list[tuple[str, int]] = []
    accounts: list[Account] = []
    for account, (available, held) in batch.ledger.state.balances.items():
        is_token = account.asset == token
        is_escrow = account.kind == escrow_kind and account.asset == terms.currency
        if not (is_token or is_escrow):
            continue
        accounts.append(account)
        total = available + held
        if not total:
            continue
        if is_token and account.kind == "entitlement":
            pairs.setdefault(account.owner, [0, 0])[0] = total
        elif is_escrow:
            pairs.setdefault(account.owner, [0, 0])[1] = total
        elif is_token and account.kind == "capacity":
            if held:  # every order was cancelled and released just above
                raise RuntimeError(f"{account} still holds {held} after the close")
            capacities.append((account.owner, available))
    return pairs, capacities, accounts
