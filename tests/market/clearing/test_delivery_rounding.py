"""The delivery rule rounds on a pair's totals (`rules.delivery_split` with `Delivered`):
however a delivery is split into smaller ones, the provider gets exactly what the one
delivery would have released, less exactly its fee, and the settlement refunds exactly
the rest. Floored per delivery, small deliveries released nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from market.clearing.rules import NOTHING_DELIVERED, Delivered, DeliverySplit, delivery_split

BPS = st.integers(min_value=0, max_value=10_000)


def deliver_all(
    parts: list[int], entitlement: int, escrow: int, bps: int, start: Delivered = NOTHING_DELIVERED
) -> tuple[Delivered, int, int]:
    """Deliver `parts` one after the other, as the sequencer does (its tally carried from
    one to the next): the pair's tally, and the entitlement and escrow left."""
    tally = start
    for tokens in parts:
        split = delivery_split(tokens, entitlement, escrow, bps, tally)
        assert 0 <= split.fee <= split.released <= escrow
        entitlement, escrow = entitlement - tokens, escrow - split.released
        tally = tally.plus(split)
    return tally, entitlement, escrow


@st.composite
def funded_parts(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    entitlement = draw(st.integers(min_value=1, max_value=10**12))
    escrow = draw(st.integers(min_value=0, max_value=10**15))
    parts: list[int] = []
    left = entitlement
    for _ in range(draw(st.integers(min_value=1, max_value=30))):
        if not left:
            break
        small = draw(st.booleans())  # mostly small deliveries: the ones floored to 0
        part = draw(st.integers(min_value=1, max_value=min(left, 1_000 if small else left)))
        parts.append(part)
        left -= part
    return entitlement, escrow, parts


@given(funded_parts(), BPS)
def test_any_split_of_a_delivery_releases_and_charges_what_the_whole_would(
    funded: tuple[int, int, list[int]], bps: int
) -> None:
    entitlement, escrow, parts = funded
    total = sum(parts)
    tally, entitlement_left, escrow_left = deliver_all(parts, entitlement, escrow, bps)
    whole = delivery_split(total, entitlement, escrow, bps)
    assert tally == Delivered(tokens=total, released=whole.released, fee=whole.fee)
    # zero sums: what was released and what is left (the settlement's refund) is the escrow
    assert tally.released + escrow_left == escrow
    assert entitlement_left == entitlement - total
    if entitlement_left == 0:
        assert escrow_left == 0  # the last delivery releases what is left: no dust


def test_many_small_gateway_calls_pay_the_provider_pro_rata() -> None:
    # the review's case: a lot of 1,000,000 tokens for 60, 250 bps, calls of 164 tokens
    calls = [164] * 3_048  # 499,872 tokens
    tally, _, escrow_left = deliver_all(calls, 1_000_000, 60, 250)
    assert tally.released == 60 * 499_872 // 1_000_000 == 29  # was 0: each call released 0
    assert escrow_left == 31  # all the settlement refunds
    # one-token releases of 39 each: the fee on their sum, 97, not 100 x floor(0.975) = 0
    tally, _, _ = deliver_all([1] * 100, 1_000, 39_000, 250)
    assert (tally.released, tally.fee) == (3_900, 97)


@given(
    st.integers(min_value=2, max_value=10**9), st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=1, max_value=10**9), st.integers(min_value=0, max_value=10**12), BPS,
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=10),
)  # fmt: skip
def test_a_fill_between_deliveries_never_takes_back_and_the_last_empties_the_escrow(
    bought: int, paid: int, more: int, more_paid: int, bps: int, parts: list[int]
) -> None:
    """A second fill (at any price) between deliveries moves the pair's funding: the rule
    still never releases less than 0 or a fee above the release, and the pair's last
    delivery releases all that is left."""
    first = [min(parts[0], bought - 1)]
    tally, entitlement, escrow = deliver_all(first, bought, paid, bps)
    entitlement, escrow = entitlement + more, escrow + more_paid  # the fill
    rest: list[int] = []
    for part in parts[1:]:
        if part < entitlement - sum(rest):  # leaves at least one token for the last
            rest.append(part)
    tally, entitlement, escrow = deliver_all(rest, entitlement, escrow, bps, tally)
    last = delivery_split(entitlement, entitlement, escrow, bps, tally)
    assert last.released == escrow
    assert isinstance(last, DeliverySplit) and 0 <= last.fee <= last.released
