"""Instruments: the symbol `<model>/<window start>/<duration>` and the trading rules.

Symbol grammar (canonical form, one spelling per instrument):

- model: 1-64 characters of letters, digits, `.`, `_`, `-`, starting with a
  letter or digit (e.g. `llama-3.1-70b`).
- window start: UTC, `YYYY-MM-DDTHHZ` when on the hour, else `YYYY-MM-DDTHH:MMZ`
  (e.g. `2026-12-01T00Z`). Windows start on a whole minute.
- duration: a positive whole number of minutes written in the largest unit that
  divides it: `d` days, `h` hours, `m` minutes (e.g. `1h`, `90m`, `2d`).

`parse_symbol` accepts only the canonical form, so two strings that name the
same instrument cannot both exist.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from market.errors import InvalidInstrument, InvalidSymbol
from schemas.market import Instrument, TradingState

_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_START_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2})(?::(\d{2}))?Z")
_DURATION_RE = re.compile(r"([1-9]\d{0,5})([mhd])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}


def format_window_start(window_start: int) -> str:
    """Unix seconds (a whole minute) -> `YYYY-MM-DDTHH[:MM]Z`."""
    if window_start % 60:
        raise InvalidSymbol(f"window start {window_start} is not on a whole minute")
    dt = datetime.fromtimestamp(window_start, tz=UTC)
    if dt.minute:
        return dt.strftime("%Y-%m-%dT%H:%MZ")
    return dt.strftime("%Y-%m-%dT%HZ")


def format_duration(duration: int) -> str:
    """Seconds (a positive whole number of minutes) -> `<n><unit>`, largest unit."""
    if duration <= 0 or duration % 60:
        raise InvalidSymbol(f"duration {duration}s is not a positive whole number of minutes")
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if duration % size == 0:
            return f"{duration // size}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_symbol(model: str, window_start: int, duration: int) -> str:
    if not _MODEL_RE.fullmatch(model):
        raise InvalidSymbol(f"invalid model name {model!r}")
    return f"{model}/{format_window_start(window_start)}/{format_duration(duration)}"


def parse_symbol(symbol: str) -> tuple[str, int, int]:
    """`<model>/<window start>/<duration>` -> (model, window start s, duration s).

    Raises `InvalidSymbol` unless the symbol is well formed and canonical.
    """
    parts = symbol.split("/")
    if len(parts) != 3:
        raise InvalidSymbol(f"symbol {symbol!r} is not <model>/<window start>/<duration>")
    model, start_text, duration_text = parts
    if not _MODEL_RE.fullmatch(model):
        raise InvalidSymbol(f"invalid model name {model!r} in {symbol!r}")
    m = _START_RE.fullmatch(start_text)
    if m is None:
        raise InvalidSymbol(f"invalid window start {start_text!r} in {symbol!r}")
    year, month, day, hour = (int(g) for g in m.group(1, 2, 3, 4))
    minute = int(m.group(5)) if m.group(5) is not None else 0
    try:
        dt = datetime(year, month, day, hour, minute, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidSymbol(f"invalid window start {start_text!r} in {symbol!r}") from exc
    d = _DURATION_RE.fullmatch(duration_text)
    if d is None:
        raise InvalidSymbol(f"invalid duration {duration_text!r} in {symbol!r}")
    duration = int(d.group(1)) * _UNIT_SECONDS[d.group(2)]
    window_start = int(dt.timestamp())
    canonical = format_symbol(model, window_start, duration)
    if canonical != symbol:
        raise InvalidSymbol(f"symbol {symbol!r} is not canonical; write {canonical!r}")
    return model, window_start, duration


def validate_instrument(instrument: Instrument) -> Instrument:
    """Check an instrument definition; return it unchanged or raise `InvalidInstrument`."""
    model, window_start, duration = _parse_for_instrument(instrument.symbol)
    if (model, window_start, duration) != (
        instrument.model,
        instrument.window_start,
        instrument.duration,
    ):
        raise InvalidInstrument(
            f"symbol {instrument.symbol!r} does not match model/window_start/duration fields"
        )
    if instrument.lot_size <= 0:
        raise InvalidInstrument(f"lot size must be positive, got {instrument.lot_size}")
    if instrument.tick_size <= 0:
        raise InvalidInstrument(f"tick size must be positive, got {instrument.tick_size}")
    lo, hi, tick = instrument.price_min, instrument.price_max, instrument.tick_size
    if lo <= 0 or hi < lo:
        raise InvalidInstrument(f"price band [{lo}, {hi}] must satisfy 0 < min <= max")
    if lo % tick or hi % tick:
        raise InvalidInstrument(f"price band [{lo}, {hi}] must lie on the tick {tick}")
    return instrument


def make_instrument(
    symbol: str,
    *,
    lot_size: int,
    tick_size: int,
    price_min: int,
    price_max: int,
    state: TradingState = TradingState.OPEN,
) -> Instrument:
    """Build a validated `Instrument` from its symbol and trading rules."""
    model, window_start, duration = _parse_for_instrument(symbol)
    return validate_instrument(
        Instrument(
            symbol=symbol,
            model=model,
            window_start=window_start,
            duration=duration,
            lot_size=lot_size,
            tick_size=tick_size,
            price_min=price_min,
            price_max=price_max,
            state=state,
        )
    )


def _parse_for_instrument(symbol: str) -> tuple[str, int, int]:
    try:
        return parse_symbol(symbol)
    except InvalidSymbol as exc:
        raise InvalidInstrument(exc.message) from exc
