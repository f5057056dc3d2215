"""The one time convention of the API wire, and the old request names kept for a version.

On the wire (HTTP bodies, query parameters, websocket frames) every time is an integer of
Unix milliseconds named `..._ms`, and every duration carries its unit last (`timeout_ms`,
`duration_s`); seconds are kept only where the instrument's symbol counts in seconds (its
window start and duration, and the delivery grace and dispute period measured against it).

Requests still accept the names they had before (`DEPRECATED_FIELDS`) for one version:
the old name is moved to the new field on decoding (`take_alias`), giving both is refused.
Answers use the new names only. The journal and the signed, canonical bytes (engine
commands and events, ledger transactions, receipts, audit files) keep their own names:
they are formats of record, and the API translates at its edge.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

__all__ = ["DEPRECATED_FIELDS", "DEPRECATED_QUERY_PARAMETERS", "take_alias", "unix_ms"]

#: Request struct name -> {old field name: new field name}, accepted for one version.
DEPRECATED_FIELDS: Final[dict[str, dict[str, str]]] = {
    "PlaceOrder": {"expire_at": "expire_at_ms"},
    "CreateInstrument": {
        "delivery_grace_seconds": "delivery_grace_s",
        "dispute_period_seconds": "dispute_period_s",
    },
    "Subscribe": {"timestamp": "timestamp_ms"},
}

#: Query parameters by their old name -> new name (the report routes), for one version.
DEPRECATED_QUERY_PARAMETERS: Final[dict[str, str]] = {
    "from_time": "from_time_ms",
    "to_time": "to_time_ms",
}


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def unix_ms(moment: datetime) -> int:
    """An aware datetime (a `timestamptz` from the database) as Unix milliseconds, exactly
    (rounded down to the millisecond; no float)."""
    return (moment - _EPOCH) // _MS


def take_alias(struct: Any, old: str, new: str, *, unset: Any = None) -> None:
    """Move the deprecated field `old` of a just-decoded `struct` to `new` (then `old` is
    None). `unset` is `new`'s default: sending both names is a ValueError, which msgspec
    reports as a validation error of the body."""
    value = getattr(struct, old)
    if value is None:
        return
    if getattr(struct, new) != unset:
        raise ValueError(f"`{old}` is the deprecated name of `{new}`: send only `{new}`")
    msgspec.structs.force_setattr(struct, new, value)
    msgspec.structs.force_setattr(struct, old, None)
