"""Money with units: integer minor units on the wire, `$21,098.75` for people.

Pure (no float anywhere: integer `divmod` by a power of ten). A `Currency` has a code, a
`scale` (its minor units per unit as a power of ten: USD 2, a cent; JPY 0) and a symbol.
`KNOWN` holds the usual ones; `currency(code, scale)` gives one, with the scale the
exchange was set up with (`tokex serve --currency-scale`) or the known one.

    format_money(2_109_875, USD)   -> "$21,098.75"
    format_money(-5, USD)          -> "-$0.05"
    parse_money("$21,098.75", USD) -> 2_109_875   (refused: more decimals than the scale)
    format_count(30_000)           -> "30,000"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.errors import DomainError, ErrorKind

#: The largest scale a currency may have (18: wei-like units still fit).
MAX_SCALE = 18


class InvalidAmount(DomainError):
    code = "invalid_amount"
    kind = ErrorKind.INVALID


class InvalidCurrency(DomainError):
    code = "invalid_currency"
    kind = ErrorKind.INVALID


@dataclass(frozen=True, slots=True)
class Currency:
    code: str
    #: Minor units per unit, as a power of ten (USD 2: 100 cents to the dollar).
    scale: int
    #: Written before the amount ("$"); empty: the code is written after it ("12.50 XTS").
    symbol: str = ""


KNOWN: dict[str, Currency] = {
    c.code: c
    for c in (
        Currency("USD", 2, "$"), Currency("EUR", 2, "€"), Currency("GBP", 2, "£"),
        Currency("JPY", 0, "¥"), Currency("CHF", 2), Currency("CAD", 2, "CA$"),
        Currency("AUD", 2, "A$"), Currency("CNY", 2, "CN¥"), Currency("INR", 2, "₹"),
        Currency("KRW", 0, "₩"), Currency("BHD", 3), Currency("KWD", 3),
    )
}  # fmt: skip

_CODE = re.compile(r"[A-Z][A-Z0-9]{2,11}")


def currency(code: str, scale: int | None = None) -> Currency:
    """The currency `code` with `scale` (None: the known scale; an unknown code needs one)."""
    if not _CODE.fullmatch(code):
        raise InvalidCurrency(f"not a currency code: {code[:20]!r} (e.g. USD)")
    known = KNOWN.get(code)
    if scale is None:
        if known is None:
            raise InvalidCurrency(f"{code} is not a known currency: give its scale")
        return known
    if not 0 <= scale <= MAX_SCALE:
        raise InvalidCurrency(f"a scale is 0 to {MAX_SCALE} digits, not {scale}")
    return Currency(code, scale, known.symbol if known is not None else "")


def format_count(value: int) -> str:
    """An integer with thousands separators: 30000 -> "30,000"."""
    return f"{value:,}"


def format_money(minor: int, money: Currency) -> str:
    """`minor` units of `money` for people: "$21,098.75", "-$0.05", "1,000 XTS"."""
    units, fraction = divmod(abs(minor), 10**money.scale)
    text = f"{units:,}"
    if money.scale:
        text += "." + str(fraction).zfill(money.scale)
    text = money.symbol + text if money.symbol else f"{text} {money.code}"
    return "-" + text if minor < 0 else text


_AMOUNT = re.compile(r"(-?)([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.([0-9]+))?")


def parse_money(text: str, money: Currency) -> int:
    """People's amount as minor units: "21098.75", "21,098.75", "$21,098.75",
    "21,098.75 USD". Refused (InvalidAmount): more decimals than the currency has, another
    currency's symbol or code, anything that is not a plain decimal."""
    body = text.strip()
    if body.endswith(money.code):
        body = body[: -len(money.code)].rstrip()
    negative = body.startswith("-")
    body = body.removeprefix("-")
    if money.symbol and body.startswith(money.symbol):
        body = body[len(money.symbol) :]
    match = _AMOUNT.fullmatch(("-" if negative else "") + body)
    if match is None:
        raise InvalidAmount(f"not an amount of {money.code}: {text[:40]!r} (e.g. 1,234.50)")
    sign, units, fraction = match.groups()
    fraction = fraction or ""
    if len(fraction) > money.scale:
        raise InvalidAmount(
            f"{money.code} has {money.scale} decimals; {text[:40]!r} has {len(fraction)}"
        )
    per_unit: int = 10**money.scale
    minor_part = int(fraction.ljust(money.scale, "0")) if money.scale else 0
    minor = int(units.replace(",", "")) * per_unit + minor_part
    return -minor if sign else minor
