"""Reads of the sequencer's memory: instruments, balances, entitlements, settlements.

Call them right after `Sequencer.committed()`, with no await in between: then memory
holds only committed state.
"""

from __future__ import annotations

from collections.abc import Iterable

from market.clearing import rules as settlement
from market.sequencer.state import InstrumentState, MarketState
from schemas.ledger import Balance
from schemas.trading import EntitlementView, InstrumentView, SettlementView


def instrument_view(state: InstrumentState) -> InstrumentView:
    i = state.instrument
    terms = state.terms
    return InstrumentView(
        symbol=i.symbol, model=i.model, window_start_s=i.window_start, duration_s=i.duration,
        lot_size=i.lot_size, tick_size=i.tick_size, price_min=i.price_min,
        price_max=i.price_max, maker_fee_bps=terms.maker_fee_bps,
        taker_fee_bps=terms.taker_fee_bps, provider_fee_bps=terms.provider_fee_bps,
        currency=terms.currency,
        state="settled" if state.settlement is not None else state.book.trading_state.value,
        delivery_grace_s=state.delivery_grace_s, completion_weight=terms.completion_weight,
        dispute_period_s=state.dispute_period_s,
    )  # fmt: skip


def instruments(market: MarketState) -> list[InstrumentView]:
    return [instrument_view(market.instruments[symbol]) for symbol in sorted(market.instruments)]


def settlements(market: MarketState) -> list[SettlementView]:
    return [s.settlement for _, s in sorted(market.instruments.items()) if s.settlement is not None]


def _party_to(balances: Iterable[Balance], account_id: str) -> Iterable[Balance]:
    """The balances of escrows and entitlements between `account_id` and another."""
    prefix, suffix = f"{account_id}@", f"@{account_id}"
    for balance in balances:
        owner = balance.account.owner
        if owner.startswith(prefix) or owner.endswith(suffix):
            yield balance


def balances_of(balances: Iterable[Balance], account_id: str) -> list[Balance]:
    """Every ledger account of this owner (and the escrows and entitlements it is party to)."""
    prefix, suffix = f"{account_id}@", f"@{account_id}"
    out = [
        b
        for b in balances
        if (owner := b.account.owner) == account_id
        or owner.startswith(prefix)
        or owner.endswith(suffix)
    ]
    out.sort(key=lambda b: (b.account.asset, b.account.kind, b.account.owner))
    return out


def entitlements_of(balances: Iterable[Balance], account_id: str) -> list[EntitlementView]:
    """Entitlement and escrow of every (instrument, buyer, provider) the account is
    party to, from the in-memory balances (delivered and released are left at 0: the
    API adds them from `market_deliveries`). What providers' pending or disputed reports
    hold is apart (`pending_tokens`, `pending_escrow`): `entitlement` is what is free."""
    # (symbol, "b@p") -> [tokens, escrow, held tokens, held escrow]
    found: dict[tuple[str, str], list[int]] = {}
    for balance in _party_to(balances, account_id):
        a = balance.account
        if a.kind == "entitlement" and a.asset.startswith("tok:"):
            item = found.setdefault((a.asset[4:], a.owner), [0, 0, 0, 0])
            item[0], item[2] = balance.available, balance.held
        elif a.kind.startswith("escrow:"):
            item = found.setdefault((a.kind[7:], a.owner), [0, 0, 0, 0])
            item[1], item[3] = balance.available, balance.held
    out: list[EntitlementView] = []
    for (symbol, owner), (tokens, escrowed, held_tokens, held_escrow) in sorted(found.items()):
        buyer, provider = settlement.parse_pair(owner)
        out.append(
            EntitlementView(
                instrument=symbol, buyer=buyer, provider=provider, entitlement=tokens,
                escrow=escrowed, delivered=0, released=0, pending_tokens=held_tokens,
                pending_escrow=held_escrow,
            )
        )  # fmt: skip
    return out
