"""The life of an instrument: listing it, the close of trading at its window's end,
and its settlement after the delivery grace (or at once, by the operator).

Both steps are checked at the start of every batch against the batch's time (`due`),
and woken by the sequencer's clock:

- window end (window_start + duration): trading closes — the engine's
  `SetTradingState(CLOSED)`, journaled like any command, cancels every open order
  and `settle.apply_events` voids their holds. Deliveries are still accepted.
- a provider's own report is pending for `dispute_period_s` after it is made
  (`disputes`): at the start of every batch the reports whose period has ended are
  settled first (`disputes.mature_due`). Reports are accepted until window end +
  grace; vouchers and gateway charges until the instrument settles.
- window end + `delivery_grace_s`, once no report is pending and no call of the gateway
  is in flight on it (waited for at most `settle_wait_ms`, `_waits_for_calls`): settlement
  (`settle_instrument`): for each (buyer, provider) the remaining free entitlement is
  burned and the remaining free escrow refunded to the buyer; unsold capacity is
  burned. What disputed reports hold stays held, across the settlement, until the
  operator resolves them. The operator's close refuses (409 `reports_pending`) while
  reports are pending. The instrument is then settled
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

from ledger.accounts import valid_account
from market.clearing import rules as settlement
from market.clearing.rules import Terms
from market.errors import InvalidInstrument
from market.instruments import make_instrument
from market.sequencer import disputes
from market.sequencer.batch import Batch, must
from market.sequencer.errors import DuplicateInstrument, ReportsPending, WindowOver, WindowStarted
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
    _check_account_names(instrument.symbol, batch.currency)
    _check_window(instrument.window_start, instrument.duration, batch.time_ms, req)
    batch.record(
        ListInstrument(
            instrument=instrument, maker_fee_bps=req.maker_fee_bps,
            taker_fee_bps=req.taker_fee_bps, provider_fee_bps=req.provider_fee_bps,
            currency=batch.currency, time=batch.time_ms,
            completion_weight=req.completion_weight,
        )
    )  # fmt: skip
    terms = Terms(
        symbol=instrument.symbol, lot_size=instrument.lot_size, currency=batch.currency,
        maker_fee_bps=req.maker_fee_bps, taker_fee_bps=req.taker_fee_bps,
        provider_fee_bps=req.provider_fee_bps, completion_weight=req.completion_weight,
    )  # fmt: skip
    state = InstrumentState.build(  # no dispute period given: the delivery grace
        market.engine.add_instrument(instrument), terms, req.delivery_grace_s,
        dispute_period_s=req.dispute_period_s,
    )  # fmt: skip
    market.add(state)
    batch.instruments.append(
        (
            instrument.symbol, instrument.model, instrument.window_start,
            instrument.duration, instrument.lot_size, instrument.tick_size,
            instrument.price_min, instrument.price_max, req.maker_fee_bps,
            req.taker_fee_bps, req.provider_fee_bps, batch.currency, batch.time_ms,
            req.delivery_grace_s, req.completion_weight, state.dispute_period_s,
        )
    )  # fmt: skip
    return state


def _check_account_names(symbol: str, currency: str) -> None:
    """Refuse a symbol too long for the names of the ledger accounts it makes (its token
    asset, its escrows' kind): listed, its first fill would be refused by the ledger,
    and each batch with one answered 503."""
    escrow = Account("buyer@provider", currency, f"escrow:{symbol}")
    if not (valid_account(settlement.issuance(symbol)) and valid_account(escrow)):
        raise InvalidInstrument(
            f"symbol {symbol!r} is too long: the names of its ledger accounts would pass "
            "96 characters (a shorter model name or duration)"
        )


def _check_window(start_s: int, duration_s: int, now_ms: int, req: CreateInstrument) -> None:
    """Refuse a window that has ended, and one that has started unless asked for."""
    end_ms = (start_s + duration_s) * 1_000
    if end_ms <= now_ms:
        raise WindowOver(
            f"the delivery window of {req.symbol!r} ended at {end_ms} ms (now {now_ms} ms)"
        )
    if start_s * 1_000 <= now_ms and not req.allow_started:
        raise WindowStarted(
            f"the delivery window of {req.symbol!r} has started; list it into a running "
            "window only with allow_started: true"
        )


#: How often an instrument whose settlement waits for the gateway's calls looks again.
SETTLE_CHECK_MS = 1_000


def due(batch: Batch) -> None:
    """Settle the reports whose dispute period has ended; close trading on instruments
    whose window has ended; settle those past grace with no report pending and no
    gateway call in flight on them (or that waited `settle_wait_ms` for those)."""
    market = batch.market
    if market.next_window_event_ms() > batch.time_ms:
        return
    for symbol in sorted(market.unsettled):
        state = market.unsettled[symbol]
        disputes.mature_due(batch, state)
        if state.settle_at_ms <= batch.time_ms and not state.pending:
            if _waits_for_calls(batch, state):
                _close_trading(batch, state)
                state.settle_check_ms = min(
                    batch.time_ms + SETTLE_CHECK_MS, state.settle_at_ms + batch.settle_wait_ms
                )
            else:
                settle_instrument(batch, state, "window")
        elif state.window_end_ms <= batch.time_ms:
            _close_trading(batch, state)


def _waits_for_calls(batch: Batch, state: InstrumentState) -> bool:
    """A call routed to the instrument before its window ended may still stream, and a
    call ended has its charge on the way: settling now would refuse those charges
    (`instrument_settled`), and the provider would go unpaid for tokens delivered. The
    settlement waits for them, at most `settle_wait_ms` past its time."""
    waited_ms = batch.time_ms - state.settle_at_ms
    return waited_ms < batch.settle_wait_ms and batch.delivering(state.symbol)


def _close_trading(batch: Batch, state: InstrumentState) -> None:
    """The engine closes the book (final): open orders are cancelled, holds voided."""
    if state.trading_closed:
        return
    command = SetTradingState(
        instrument=state.symbol, state=TradingState.CLOSED, time=batch.time_ms
    )
    apply_events(batch, batch.run_engine(command))


def settle_instrument(batch: Batch, state: InstrumentState, reason: str) -> SettlementView:
    """Close trading if still open, then burn and refund what is left; idempotent.
    Refused while reports are pending (the clock's settlement waits for them)."""
    if state.settlement is not None:
        return state.settlement
    if state.pending:
        last = max(r.due_ms for r in state.pending.values())
        raise ReportsPending(
            f"{len(state.pending)} delivery reports on {state.symbol} are in their dispute "
            f"period until {last}; the instrument can be settled after that"
        )
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
    # Retired: every account of the instrument at zero now; what a disputed report still
    # holds keeps its accounts (and the token's issuance) live until it is resolved.
    state_now = batch.ledger.state
    batch.ledger.retire(
        [a for a in accounts if not (b := state_now.balance(a)).available and not b.held]
    )
    view = SettlementView(
        instrument=terms.symbol, reason=reason, time_ms=batch.time_ms, entitlement_burned=burned,
        refunded=refunded, capacity_burned=capacity_burned,
    )  # fmt: skip
    batch.settlements.append(view)
    batch.market.settled(state, view)  # taken back by the rebuild if the batch fails
    return view


def _leftovers(
    batch: Batch, terms: Terms
) -> tuple[dict[str, list[int]], list[tuple[str, int]], list[Account]]:
    """What is left of an instrument once trading is closed: per "buyer@provider" pair
    [entitlement, escrow] free (what disputed reports hold stays held), per provider its
    unsold capacity; and every account of the instrument (its token's and its escrows)."""
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
        if not available + held:
            continue
        if is_token and account.kind == "entitlement":
            if available:
                pairs.setdefault(account.owner, [0, 0])[0] = available
        elif is_escrow:
            if available:
                pairs.setdefault(account.owner, [0, 0])[1] = available
        elif is_token and account.kind == "capacity":
            if held:  # every order was cancelled and released just above
                raise RuntimeError(f"{account} still holds {held} after the close")
            capacities.append((account.owner, available))
    return pairs, capacities, accounts
