"""Money with units: integer minor units formatted and parsed without a float."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from market.money import (
    InvalidAmount,
    InvalidCurrency,
    currency,
    format_count,
    format_money,
    parse_money,
)

USD = currency("USD")
JPY = currency("JPY")


@pytest.mark.parametrize(
    ("minor", "money", "text"),
    [
        (2_109_875, USD, "$21,098.75"),
        (0, USD, "$0.00"),
        (5, USD, "$0.05"),
        (-5, USD, "-$0.05"),
        (-30_000_000, USD, "-$300,000.00"),
        (10_000_000, USD, "$100,000.00"),
        (1_234_567, JPY, "¥1,234,567"),
        (10_005, currency("XTS", 3), "10.005 XTS"),
        (12_345, currency("BHD"), "12.345 BHD"),
        (2**62, USD, "$46,116,860,184,273,879.04"),  # the wire's largest amount, exactly
        (10**20 + 1, currency("WEI", 18), "100.000000000000000001 WEI"),
    ],
)
def test_format_money(minor: int, money: object, text: str) -> None:
    assert format_money(minor, money) == text  # type: ignore[arg-type]
    assert parse_money(text, money) == minor  # type: ignore[arg-type]


def test_parse_money_forms_and_refusals() -> None:
    for text in ("21098.75", "21,098.75", "$21,098.75", "21,098.75 USD", " 21098.75 "):
        assert parse_money(text, USD) == 2_109_875
    assert parse_money("7", USD) == 700
    assert parse_money("7.5", USD) == 750
    for bad in ("1.234", "1e3", "12,34", "€5", "5 EUR", "", "$", "1.", ".5", "NaN", "1_000"):
        with pytest.raises(InvalidAmount):
            parse_money(bad, USD)
    with pytest.raises(InvalidAmount):
        parse_money("1.5", JPY)  # no decimals in yen


def test_currencies() -> None:
    assert (USD.code, USD.scale, USD.symbol) == ("USD", 2, "$")
    assert currency("USD", 4).scale == 4 and currency("USD", 4).symbol == "$"
    for code, scale in (("usd", None), ("XTS", None), ("USD", 19), ("USD", -1), ("U$D", 2)):
        with pytest.raises(InvalidCurrency):
            currency(code, scale)


def test_format_count() -> None:
    assert format_count(30_000) == "30,000"
    assert format_count(-1_000_000) == "-1,000,000"
    assert format_count(0) == "0"


@given(st.integers(min_value=-(2**63), max_value=2**63), st.integers(min_value=0, max_value=18))
def test_format_then_parse_is_the_same_integer(minor: int, scale: int) -> None:
    for money in (currency("USD", scale), currency("XTS", scale)):
        assert parse_money(format_money(minor, money), money) == minor
