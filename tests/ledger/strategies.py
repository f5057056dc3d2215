"""Hypothesis strategies for random ledger activity: transfers, holds, posts, voids."""

from __future__ import annotations

from hypothesis import strategies as st

from schemas.ledger import Account, HoldCreate, HoldPost, HoldVoid, Posting, Transaction

USERS = ("u0", "u1", "u2", "u3")
ASSETS = ("USD", "tok")
HOLD_IDS = tuple(f"h{i}" for i in range(6))


def accounts(ns: str) -> dict[str, list[Account]]:
    """User accounts per asset, and the system account funding each asset."""
    return {asset: [Account(f"{ns}{u}", f"{ns}{asset}", "cash") for u in USERS] for asset in ASSETS}


def system(ns: str, asset: str) -> Account:
    return Account(f"{ns}exchange", f"{ns}{asset}", "issuance")


@st.composite
def steps(draw: st.DrawFn, ns: str = "") -> list[Transaction]:
    """A sequence of transactions, many of which must be rejected."""
    by_asset = accounts(ns)
    count = draw(st.integers(min_value=1, max_value=25))
    out: list[Transaction] = []
    for i in range(count):
        asset = draw(st.sampled_from(ASSETS))
        users = by_asset[asset]
        kind = draw(st.sampled_from(("fund", "transfer", "split", "hold", "post", "void", "bad")))
        amount = draw(st.integers(min_value=1, max_value=120))
        a, b = draw(st.sampled_from(users)), draw(st.sampled_from(users))
        hold_id = f"{ns}{draw(st.sampled_from(HOLD_IDS))}"
        part = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=120)))
        postings: tuple[Posting, ...] = ()
        holds: tuple[HoldCreate | HoldPost | HoldVoid, ...] = ()
        if kind == "fund":
            postings = (Posting(system(ns, asset), -amount), Posting(a, amount))
        elif kind == "transfer":
            postings = (Posting(a, -amount), Posting(b, amount))
        elif kind == "split":
            c = draw(st.sampled_from(users))
            half = amount // 2 or 1
            postings = (Posting(a, -amount), Posting(b, half), Posting(c, amount - half))
            postings = tuple(p for p in postings if p.amount)
        elif kind == "hold":
            holds = (HoldCreate(hold_id=hold_id, account=a, amount=amount),)
        elif kind == "post":
            holds = (HoldPost(hold_id=hold_id, amount=part),)
            # The posted value goes to b; if the amount is not known (None), guess: often wrong.
            postings = (Posting(b, part if part is not None else amount),)
        elif kind == "void":
            holds = (HoldVoid(hold_id=hold_id, amount=part),)
        else:  # unbalanced
            postings = (Posting(a, -amount), Posting(b, amount + 1))
        out.append(
            Transaction(id=f"{ns}tx{i}", code=kind, time=1000 + i, postings=postings, holds=holds)
        )
    return out
