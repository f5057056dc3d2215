"""The market's posting rules: what each market event does to the ledger. Pure.

(The ledger's own rules, `ledger.rules`, say how any transaction applies; these say
which transaction each event of the market is.)

Accounts (owner | asset | kind), with `C` the currency and `tok:<symbol>`
the token asset of an instrument:

    cash(a)               a       | C          | cash          buyer's money; holds reserve it
    capacity(p, i)        p       | tok:i      | capacity      provider's listed tokens
    issuance(i)           exchange| tok:i      | issuance      where tokens are minted (system)
    entitlement(b, p, i)  b@p     | tok:i      | entitlement   tokens b bought from p
    escrow(b, p, i)       b@p     | C          | escrow:i      what b paid for them, until delivery
    fees                  exchange| C          | fees          fee revenue
    bank                  exchange| C          | bank          the operator's bank (system)

Rules (each one balanced transaction; ids derived from the market's own ids,
so a replay or a retry cannot apply one twice):

- deposit: bank -> cash(a).
- listing: issuance(i) -> capacity(p, i).
- buy order: hold on cash(b) of `buy_reservation` = notional at the limit price
  plus the larger of the maker and taker fee on it. sell order: hold on
  capacity(p, i) of the quantity.
- fill of q tokens at p (delivery versus payment, one transaction): post
  notional + buyer fee from the buy hold to escrow(b, p, i) and fees; post q
  from the sell hold to entitlement(b, p, i).
- release: whatever an order's hold still reserves when the order is done
  (filled, cancelled, expired), or the reservation of a cancelled part, is voided;
  and when a command leaves a buy open after fills or a partial cancel, whatever its
  hold has over `buy_reservation` of its open quantity at its limit (the price
  improvement, the fee rate it did not pay, rounding) is voided too, so an open buy
  holds exactly its reservation.
- amend: the order's hold is voided and a new one made for the new open
  quantity and price, in one transaction (it fails whole if funds fall short).
- delivery of t tokens by p to b (`delivery`): burn t of entitlement(b, p, i)
  into issuance(i); release escrow(b, p, i) pro rata (`delivery_split`: floored
  on the pair's totals so far, not per delivery, so small deliveries add up to
  what one large one would release; the last delivery of an entitlement releases
  exactly what is left) to cash(p) less the provider fee (also on the totals),
  which goes to fees.
- a provider's own report of t tokens (`report_hold`): pending for the
  instrument's dispute period; the split is fixed when it is made (on the
  available balances) and held: t of entitlement(b, p, i) and the released
  escrow of escrow(b, p, i) go to their held buckets. When the period ends
  undisputed, or the operator resolves a dispute to pay, the holds are posted
  as a delivery (`report_paid`, code `delivery`); a dispute resolved to refund
  posts the tokens to issuance (burned) and the escrow to cash(b)
  (`report_refunded`, code `dispute_refund`). Both carry the dispute id.
- a buyer's voucher: a delivery (`delivery`, code `delivery`) of what the
  voucher acknowledges beyond the buyer's last accepted voucher.
- settlement of an instrument (window close): per (b, p), the remaining
  entitlement is burned and the remaining escrow refunded to cash(b)
  (`close_entitlement`); unsold capacity is burned (`close_capacity`).
- withdrawal: a hold on cash(a) (`withdrawal_request`); paid: the hold is
  posted to bank (`withdrawal_paid`); failed: the hold is voided (`withdrawal_failed`).

Integer rules: notional = quantity / lot * price (quantities are whole lots);
fee = floor(amount * bps / 10,000), in the payer's favour (the provider fee on
the pair's total released so far, less what it already paid). Because
floor(x) + floor(y) <= floor(x + y), a buy hold always covers the fills, fees
and partial releases that can come out of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.ledger import Account, HoldCreate, HoldPost, HoldVoid, Posting, Transaction
from schemas.market import Fill, Side

EXCHANGE = "exchange"
BPS = 10_000


@dataclass(frozen=True, slots=True)
class Terms:
    """What settlement needs to know of an instrument."""

    symbol: str
    lot_size: int
    currency: str
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    provider_fee_bps: int = 0
    #: Tokens charged for a call = prompt + completion_weight * completion.
    completion_weight: int = 1

    @property
    def token_asset(self) -> str:
        return token_asset(self.symbol)


def token_asset(symbol: str) -> str:
    return f"tok:{symbol}"


def cash(owner: str, currency: str) -> Account:
    return Account(owner, currency, "cash")


def capacity(provider: str, symbol: str) -> Account:
    return Account(provider, token_asset(symbol), "capacity")


def issuance(symbol: str) -> Account:
    return Account(EXCHANGE, token_asset(symbol), "issuance")


def entitlement(buyer: str, provider: str, symbol: str) -> Account:
    return Account(f"{buyer}@{provider}", token_asset(symbol), "entitlement")


def escrow(buyer: str, provider: str, terms: Terms) -> Account:
    return Account(f"{buyer}@{provider}", terms.currency, f"escrow:{terms.symbol}")


def fees(currency: str) -> Account:
    return Account(EXCHANGE, currency, "fees")


def bank(currency: str) -> Account:
    return Account(EXCHANGE, currency, "bank")


def notional(quantity: int, price: int, lot_size: int) -> int:
    return quantity // lot_size * price


def fee(amount: int, bps: int) -> int:
    return amount * bps // BPS


def buy_reservation(quantity: int, price: int, terms: Terms) -> int:
    """Cash a buy order of `quantity` at limit `price` must have on hold."""
    amount = notional(quantity, price, terms.lot_size)
    return amount + fee(amount, max(terms.maker_fee_bps, terms.taker_fee_bps))


def reservation(side: Side, quantity: int, price: int, terms: Terms) -> int:
    """What an order of `side` needs on hold: cash for a buy, tokens for a sell."""
    return buy_reservation(quantity, price, terms) if side is Side.BUY else quantity


def hold_account(side: Side, owner: str, terms: Terms) -> Account:
    return cash(owner, terms.currency) if side is Side.BUY else capacity(owner, terms.symbol)


def order_hold_id(order_id: int, generation: int = 0) -> str:
    """The hold of an order; an amend makes the next generation."""
    return f"order:{order_id}" if generation == 0 else f"order:{order_id}:{generation}"


def hold_generation(hold_id: str) -> int:
    """Inverse of `order_hold_id` for the generation: 0 for `order:<id>`."""
    parts = hold_id.split(":")
    return int(parts[2]) if len(parts) == 3 else 0


def deposit_tx_id(deposit_id: str) -> str:
    return f"deposit:{deposit_id}"


def listing_tx_id(listing_id: str) -> str:
    return f"listing:{listing_id}"


def listing_key(provider: str, listing_id: str) -> str:
    """A provider's listing id made unique across providers (the `listing_id` of `listing`)."""
    return f"{provider}:{listing_id}"


# -- transactions ---------------------------------------------------------------------


def deposit(deposit_id: str, account_id: str, amount: int, currency: str, time: int) -> Transaction:
    return Transaction(
        id=deposit_tx_id(deposit_id),
        code="deposit",
        time=time,
        postings=(Posting(bank(currency), -amount), Posting(cash(account_id, currency), amount)),
        metadata={"account": account_id},
    )


def listing(listing_id: str, provider: str, symbol: str, quantity: int, time: int) -> Transaction:
    return Transaction(
        id=listing_tx_id(listing_id),
        code="listing",
        time=time,
        postings=(
            Posting(issuance(symbol), -quantity),
            Posting(capacity(provider, symbol), quantity),
        ),
        metadata={"account": provider, "instrument": symbol},
    )


def order_hold(
    order_id: int,
    owner: str,
    side: Side,
    quantity: int,
    price: int,
    terms: Terms,
    time: int,
    amount: int | None = None,
) -> Transaction:
    """The hold an accepted order takes: its `reservation`, or `amount` when the
    sequencer priced it otherwise (a market buy holds what it can really spend)."""
    return Transaction(
        id=f"order:{order_id}",
        code="order_hold",
        time=time,
        holds=(
            HoldCreate(
                hold_id=order_hold_id(order_id),
                account=hold_account(side, owner, terms),
                amount=reservation(side, quantity, price, terms) if amount is None else amount,
            ),
        ),
        metadata={"order": str(order_id), "instrument": terms.symbol},
    )


def fill(
    event: Fill, *, buy_hold: str, sell_hold: str, buyer: str, provider: str, terms: Terms
) -> tuple[Transaction, int]:
    """The delivery-versus-payment transaction of one fill, and the buyer's fee."""
    amount = notional(event.quantity, event.price, terms.lot_size)
    buyer_is_taker = event.aggressor_side is Side.BUY
    buyer_fee = fee(amount, terms.taker_fee_bps if buyer_is_taker else terms.maker_fee_bps)
    postings = [Posting(escrow(buyer, provider, terms), amount)]
    if buyer_fee:
        postings.append(Posting(fees(terms.currency), buyer_fee))
    postings.append(Posting(entitlement(buyer, provider, terms.symbol), event.quantity))
    tx = Transaction(
        id=f"fill:{terms.symbol}:{event.seq}",
        code="fill",
        time=event.time,
        postings=tuple(postings),
        holds=(
            HoldPost(hold_id=buy_hold, amount=amount + buyer_fee),
            HoldPost(hold_id=sell_hold, amount=event.quantity),
        ),
        metadata={
            "instrument": terms.symbol,
            "seq": str(event.seq),
            "maker_order": str(event.maker_order_id),
            "taker_order": str(event.taker_order_id),
            "price": str(event.price),
            "quantity": str(event.quantity),
        },
    )
    return tx, buyer_fee


def release(tx_id: str, hold_id: str, amount: int | None, time: int, reason: str) -> Transaction:
    """Void `amount` (None: all that remains) of an order's hold."""
    return Transaction(
        id=tx_id,
        code="order_release",
        time=time,
        holds=(HoldVoid(hold_id=hold_id, amount=amount),),
        metadata={"reason": reason},
    )


def rehold(
    tx_id: str,
    old_hold: str,
    new_hold: str,
    account: Account,
    amount: int,
    time: int,
) -> Transaction:
    """Replace an order's hold with one of `amount` (an amend), atomically."""
    return Transaction(
        id=tx_id,
        code="order_amend",
        time=time,
        holds=(
            HoldVoid(hold_id=old_hold),
            HoldCreate(hold_id=new_hold, account=account, amount=amount),
        ),
    )


# -- delivery, window close, withdrawals ------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliverySplit:
    """What one delivery report moves: tokens burned, escrow released, the fee on it."""

    tokens: int
    released: int
    fee: int

    @property
    def paid(self) -> int:
        """What the provider receives: the released escrow less the provider fee."""
        return self.released - self.fee


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one (buyer, provider, instrument) has delivered so far: tokens, the escrow
    released for them and the provider fee taken on it, summed over every delivery whose
    split is fixed (gateway charges, vouchers, providers' reports from when they are made;
    a report refunded by a dispute no longer counts). The sequencer keeps one per pair
    (`InstrumentState.delivered`); `delivery_split` needs it to round cumulatively."""

    tokens: int = 0
    released: int = 0
    fee: int = 0

    def plus(self, split: DeliverySplit) -> Delivered:
        return Delivered(self.tokens + split.tokens, self.released + split.released,
                         self.fee + split.fee)  # fmt: skip

    def minus(self, split: DeliverySplit) -> Delivered:
        return Delivered(self.tokens - split.tokens, self.released - split.released,
                         self.fee - split.fee)  # fmt: skip


NOTHING_DELIVERED = Delivered()


def delivery_split(
    tokens: int,
    entitlement_balance: int,
    escrow_balance: int,
    fee_bps: int,
    before: Delivered = NOTHING_DELIVERED,
) -> DeliverySplit:
    """The integer rule of a delivery of `tokens` out of `entitlement_balance`, after
    the pair delivered `before`.

    Rounded on the pair's totals, not per delivery: with D, R, F delivered, released
    and fee so far, the pair's funding is E_in = escrow + R for N_in = entitlement + D
    tokens, and this delivery releases

        released = floor(E_in * (D + tokens) / N_in) - R    (never below 0)
        fee      = floor((R + released) * bps / 10,000) - F  (within 0..released)

    so any split of a delivery into smaller ones releases and charges exactly what the
    one delivery would (the sums telescope), and the settlement refunds exactly the
    rest. Floored per delivery, a call worth less than one unit of escrow released 0,
    and so did every small call after it (the ratio barely moved) until the window
    closed and refunded it all to the buyer. Delivering the whole remaining
    entitlement releases the whole remaining escrow (the formula gives it), so no dust
    is left; tokens < entitlement makes released < escrow, so escrow stays positive
    while entitlement is. The clamps only matter when the funding moved: a fill at a
    lower price after deliveries can leave R above the new pro rata (later deliveries
    release 0 until it is caught up), and F below floor(R * bps / 10,000) (tallies from
    before this rule, or a refunded report) is caught up, never beyond the release.
    Flooring favours the buyer, and the fee the provider (payer's favour, like every fee).
    """
    if not 0 < tokens <= entitlement_balance:
        raise ValueError(f"cannot deliver {tokens} of an entitlement of {entitlement_balance}")
    if escrow_balance < 0:
        raise ValueError("escrow cannot be negative")
    if tokens == entitlement_balance:
        released = escrow_balance
    else:
        funded = escrow_balance + before.released
        delivered = before.tokens + tokens
        released = max(0, funded * delivered // (entitlement_balance + before.tokens)
                       - before.released)  # fmt: skip
    charged = fee(before.released + released, fee_bps) - before.fee
    return DeliverySplit(tokens=tokens, released=released, fee=min(max(charged, 0), released))


def delivery_id(provider: str, report_id: str) -> str:
    return f"delivery:{provider}:{report_id}"


def delivery(
    report_id: str,
    buyer: str,
    provider: str,
    terms: Terms,
    tokens: int,
    entitlement_balance: int,
    escrow_balance: int,
    time: int,
    before: Delivered = NOTHING_DELIVERED,
) -> tuple[Transaction, DeliverySplit]:
    """The provider served `tokens` to `buyer`: burn them, pay the provider pro rata.

    entitlement(b, p, i) -> issuance(i) (`tokens`, the burn: delivered tokens
    leave the ledger the way they came in); escrow(b, p, i) -> cash(p)
    (released - fee) and -> fees (fee). See `delivery_split` for the rounding (on the
    pair's totals, `before`: what it delivered until now).
    """
    split = delivery_split(
        tokens, entitlement_balance, escrow_balance, terms.provider_fee_bps, before
    )
    postings = [
        Posting(entitlement(buyer, provider, terms.symbol), -tokens),
        Posting(issuance(terms.symbol), tokens),
    ]
    if split.released:
        postings.append(Posting(escrow(buyer, provider, terms), -split.released))
    if split.paid:
        postings.append(Posting(cash(provider, terms.currency), split.paid))
    if split.fee:
        postings.append(Posting(fees(terms.currency), split.fee))
    tx = Transaction(
        id=delivery_id(provider, report_id),
        code="delivery",
        time=time,
        postings=tuple(postings),
        metadata={
            "instrument": terms.symbol,
            "buyer": buyer,
            "provider": provider,
            "report": report_id,
            "tokens": str(tokens),
            "released": str(split.released),
            "fee": str(split.fee),
        },
    )
    return tx, split


def close_entitlement(
    tx_id: str,
    buyer: str,
    provider: str,
    terms: Terms,
    entitlement_balance: int,
    escrow_balance: int,
    time: int,
) -> Transaction:
    """At settlement: burn what b still holds of p's tokens and refund its escrow.

    entitlement(b, p, i) -> issuance(i); escrow(b, p, i) -> cash(b). Both
    balances are taken whole (the caller passes the current ones).
    """
    postings: list[Posting] = []
    if entitlement_balance:
        postings += [
            Posting(entitlement(buyer, provider, terms.symbol), -entitlement_balance),
            Posting(issuance(terms.symbol), entitlement_balance),
        ]
    if escrow_balance:
        postings += [
            Posting(escrow(buyer, provider, terms), -escrow_balance),
            Posting(cash(buyer, terms.currency), escrow_balance),
        ]
    if not postings:
        raise ValueError("nothing to settle")
    return Transaction(
        id=tx_id,
        code="close_refund",
        time=time,
        postings=tuple(postings),
        metadata={
            "instrument": terms.symbol,
            "buyer": buyer,
            "provider": provider,
            "burned": str(entitlement_balance),
            "refunded": str(escrow_balance),
        },
    )


def close_capacity(tx_id: str, provider: str, symbol: str, amount: int, time: int) -> Transaction:
    """At settlement: unsold capacity is burned, capacity(p, i) -> issuance(i)."""
    return Transaction(
        id=tx_id,
        code="close_capacity",
        time=time,
        postings=(Posting(capacity(provider, symbol), -amount), Posting(issuance(symbol), amount)),
        metadata={"instrument": symbol, "account": provider, "burned": str(amount)},
    )


def withdrawal_hold_id(account_id: str, withdrawal_id: str) -> str:
    """The hold (and request transaction) of a withdrawal.

    Each kind of withdrawal transaction has its own prefix, and the user's id comes
    last: a suffix on the id (`w:paid`) can never spell another transaction's id.
    """
    return f"withdrawal:{account_id}:{withdrawal_id}"


def withdrawal_outcome_id(account_id: str, withdrawal_id: str, *, paid: bool) -> str:
    """The transaction that pays a withdrawal out, or voids it."""
    outcome = "paid" if paid else "failed"
    return f"withdrawal-{outcome}:{account_id}:{withdrawal_id}"


def withdrawal_request(
    account_id: str, withdrawal_id: str, amount: int, currency: str, time: int
) -> Transaction:
    """An account asks to withdraw: its cash available -> held (a hold of the same id)."""
    hold_id = withdrawal_hold_id(account_id, withdrawal_id)
    return Transaction(
        id=hold_id,
        code="withdrawal",
        time=time,
        holds=(HoldCreate(hold_id=hold_id, account=cash(account_id, currency), amount=amount),),
        metadata={"account": account_id, "withdrawal": withdrawal_id},
    )


def withdrawal_paid(
    account_id: str, withdrawal_id: str, amount: int, currency: str, time: int
) -> Transaction:
    """The operator paid it out: the hold is posted to the operator's bank."""
    hold_id = withdrawal_hold_id(account_id, withdrawal_id)
    return Transaction(
        id=withdrawal_outcome_id(account_id, withdrawal_id, paid=True),
        code="withdrawal_paid",
        time=time,
        postings=(Posting(bank(currency), amount),),
        holds=(HoldPost(hold_id=hold_id, amount=amount),),
        metadata={"account": account_id, "withdrawal": withdrawal_id},
    )


def withdrawal_failed(account_id: str, withdrawal_id: str, time: int) -> Transaction:
    """The payout failed: the hold is voided, the cash is available again."""
    hold_id = withdrawal_hold_id(account_id, withdrawal_id)
    return Transaction(
        id=withdrawal_outcome_id(account_id, withdrawal_id, paid=False),
        code="withdrawal_failed",
        time=time,
        holds=(HoldVoid(hold_id=hold_id),),
        metadata={"account": account_id, "withdrawal": withdrawal_id},
    )


def parse_pair(owner: str) -> tuple[str, str]:
    """`b@p` (the owner of an entitlement or escrow) -> (b, p). Account ids hold no `@`."""
    buyer, _, provider = owner.partition("@")
    return buyer, provider


# -- pending reports and disputes ---------------------------------------------------------


def report_key(provider: str, report_id: str) -> str:
    return f"{provider}:{report_id}"


def report_hold_id(provider: str, report_id: str) -> str:
    """The pending report's transaction, and the prefix of its two holds."""
    return f"report:{report_key(provider, report_id)}"


def dispute_pay_id(dispute_id: str) -> str:
    return f"dispute-pay:{dispute_id}"


def dispute_refund_id(dispute_id: str) -> str:
    return f"dispute-refund:{dispute_id}"


def _report_holds(provider: str, report_id: str) -> tuple[str, str]:
    base = report_hold_id(provider, report_id)
    return f"{base}:tokens", f"{base}:escrow"


def report_hold(
    report_id: str, buyer: str, provider: str, terms: Terms, split: DeliverySplit, time: int
) -> Transaction:
    """A provider's report made pending: its tokens and its share of the escrow held."""
    tokens_hold, escrow_hold = _report_holds(provider, report_id)
    holds = [HoldCreate(hold_id=tokens_hold, account=entitlement(buyer, provider, terms.symbol),
                        amount=split.tokens)]  # fmt: skip
    if split.released:
        holds.append(
            HoldCreate(hold_id=escrow_hold, account=escrow(buyer, provider, terms),
                       amount=split.released)
        )  # fmt: skip
    return Transaction(
        id=report_hold_id(provider, report_id),
        code="delivery_report",
        time=time,
        holds=tuple(holds),
        metadata={
            "instrument": terms.symbol, "buyer": buyer, "provider": provider,
            "report": report_id, "tokens": str(split.tokens), "released": str(split.released),
            "fee": str(split.fee),
        },
    )  # fmt: skip


def _posted_holds(provider: str, report_id: str, split: DeliverySplit) -> tuple[HoldPost, ...]:
    tokens_hold, escrow_hold = _report_holds(provider, report_id)
    posts = [HoldPost(hold_id=tokens_hold, amount=split.tokens)]
    if split.released:
        posts.append(HoldPost(hold_id=escrow_hold, amount=split.released))
    return tuple(posts)


def report_paid(
    report_id: str, buyer: str, provider: str, terms: Terms, split: DeliverySplit, time: int,
    dispute_id: str | None = None,
) -> Transaction:  # fmt: skip
    """A pending report settles as a delivery: its held tokens burned, its held escrow
    paid to the provider less the fee. Without a dispute its id is the delivery's
    (`delivery_id`); a dispute resolved to pay has `dispute_pay_id`."""
    postings = [Posting(issuance(terms.symbol), split.tokens)]
    if split.paid:
        postings.append(Posting(cash(provider, terms.currency), split.paid))
    if split.fee:
        postings.append(Posting(fees(terms.currency), split.fee))
    metadata = {
        "instrument": terms.symbol, "buyer": buyer, "provider": provider, "report": report_id,
        "tokens": str(split.tokens), "released": str(split.released), "fee": str(split.fee),
    }  # fmt: skip
    if dispute_id is not None:
        metadata["dispute"] = dispute_id
    return Transaction(
        id=delivery_id(provider, report_id) if dispute_id is None else dispute_pay_id(dispute_id),
        code="delivery",
        time=time,
        postings=tuple(postings),
        holds=_posted_holds(provider, report_id, split),
        metadata=metadata,
    )


def report_refunded(
    report_id: str, buyer: str, provider: str, terms: Terms, split: DeliverySplit, time: int,
    dispute_id: str,
) -> Transaction:  # fmt: skip
    """A dispute resolved to refund: the report's held tokens are burned undelivered and
    its held escrow goes back to the buyer's cash."""
    postings = [Posting(issuance(terms.symbol), split.tokens)]
    if split.released:
        postings.append(Posting(cash(buyer, terms.currency), split.released))
    return Transaction(
        id=dispute_refund_id(dispute_id),
        code="dispute_refund",
        time=time,
        postings=tuple(postings),
        holds=_posted_holds(provider, report_id, split),
        metadata={
            "instrument": terms.symbol, "buyer": buyer, "provider": provider,
            "report": report_id, "dispute": dispute_id, "burned": str(split.tokens),
            "refunded": str(split.released),
        },
    )  # fmt: skip
