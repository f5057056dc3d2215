"""Instrument symbols and definitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.errors import InvalidInstrument, InvalidSymbol
from market.instruments import (
    format_duration,
    format_symbol,
    format_window_start,
    make_instrument,
    parse_symbol,
    validate_instrument,
)
from schemas.market import Instrument, TradingState

DEC_1 = 1_796_083_200  # 2026-12-01T00:00Z


def test_parse_the_design_example() -> None:
    assert parse_symbol("llama-3.1-70b/2026-12-01T00Z/1h") == ("llama-3.1-70b", DEC_1, 3_600)


@pytest.mark.parametrize(
    ("symbol", "start", "duration"),
    [
        ("m/2026-12-01T13:30Z/30m", DEC_1 + 13 * 3600 + 1800, 1_800),
        ("m/2026-12-01T00Z/90m", DEC_1, 5_400),
        ("m/2026-12-01T00Z/2d", DEC_1, 2 * 86_400),
        ("Qwen2.5_72B-instruct/2026-12-01T23Z/25h", DEC_1 + 23 * 3600, 25 * 3600),
    ],
)
def test_parse_and_format_round_trip(symbol: str, start: int, duration: int) -> None:
    model = symbol.split("/")[0]
    assert parse_symbol(symbol) == (model, start, duration)
    assert format_symbol(model, start, duration) == symbol


@pytest.mark.parametrize(
    "symbol",
    [
        "",
        "llama",
        "llama/2026-12-01T00Z",
        "llama/2026-12-01T00Z/1h/x",
        "/2026-12-01T00Z/1h",
        "-llama/2026-12-01T00Z/1h",
        "lla ma/2026-12-01T00Z/1h",
        "llama/2026-12-01/1h",
        "llama/2026-12-01T00:00:00Z/1h",
        "llama/2026-13-01T00Z/1h",
        "llama/2026-02-30T00Z/1h",
        "llama/2026-12-01T24Z/1h",
        "llama/2026-12-01T00Z/0h",
        "llama/2026-12-01T00Z/1x",
        "llama/2026-12-01T00Z/01h",
        "llama/2026-12-01T00Z/1.5h",
        "llama/2026-12-01T00Z/" + "1" * 7 + "m",
        "x" * 65 + "/2026-12-01T00Z/1h",
    ],
)
def test_invalid_symbols(symbol: str) -> None:
    with pytest.raises(InvalidSymbol) as err:
        parse_symbol(symbol)
    assert err.value.code == "invalid_symbol"


@pytest.mark.parametrize(
    ("symbol", "canonical"),
    [
        ("llama/2026-12-01T00:00Z/1h", "llama/2026-12-01T00Z/1h"),
        ("llama/2026-12-01T00Z/60m", "llama/2026-12-01T00Z/1h"),
        ("llama/2026-12-01T00Z/24h", "llama/2026-12-01T00Z/1d"),
    ],
)
def test_only_the_canonical_spelling_is_accepted(symbol: str, canonical: str) -> None:
    with pytest.raises(InvalidSymbol, match=canonical):
        parse_symbol(symbol)


def test_format_rejects_what_cannot_be_a_symbol() -> None:
    with pytest.raises(InvalidSymbol):
        format_window_start(DEC_1 + 30)
    with pytest.raises(InvalidSymbol):
        format_duration(90)
    with pytest.raises(InvalidSymbol):
        format_duration(0)
    with pytest.raises(InvalidSymbol):
        format_symbol("a/b", DEC_1, 3600)


@settings(max_examples=200)
@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
    st.integers(0, 4_000_000_000 // 60).map(lambda m: m * 60),
    st.integers(1, 100_000).map(lambda m: m * 60),
)
def test_format_then_parse_is_identity(model: str, start: int, duration: int) -> None:
    assert parse_symbol(format_symbol(model, start, duration)) == (model, start, duration)


def test_make_instrument() -> None:
    inst = make_instrument(
        "llama-3.1-70b/2026-12-01T00Z/1h", lot_size=1000, tick_size=5, price_min=5, price_max=500
    )
    assert (inst.model, inst.window_start, inst.duration) == ("llama-3.1-70b", DEC_1, 3600)
    assert inst.state is TradingState.OPEN


@pytest.mark.parametrize(
    "rules",
    [
        {"lot_size": 0, "tick_size": 5, "price_min": 5, "price_max": 500},
        {"lot_size": 10, "tick_size": 0, "price_min": 5, "price_max": 500},
        {"lot_size": 10, "tick_size": 5, "price_min": 0, "price_max": 500},
        {"lot_size": 10, "tick_size": 5, "price_min": 500, "price_max": 495},
        {"lot_size": 10, "tick_size": 5, "price_min": 7, "price_max": 500},
        {"lot_size": 10, "tick_size": 5, "price_min": 5, "price_max": 502},
    ],
)
def test_invalid_trading_rules(rules: dict[str, int]) -> None:
    with pytest.raises(InvalidInstrument) as err:
        make_instrument("m/2026-12-01T00Z/1h", **rules)  # type: ignore[arg-type]
    assert err.value.code == "invalid_instrument"


def test_symbol_must_agree_with_the_fields() -> None:
    inst = Instrument(
        symbol="m/2026-12-01T00Z/1h",
        model="m",
        window_start=DEC_1,
        duration=7200,
        lot_size=1,
        tick_size=1,
        price_min=1,
        price_max=10,
    )
    with pytest.raises(InvalidInstrument):
        validate_instrument(inst)
    with pytest.raises(InvalidInstrument):
        make_instrument("not a symbol", lot_size=1, tick_size=1, price_min=1, price_max=2)
