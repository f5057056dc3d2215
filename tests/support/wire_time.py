"""The time convention of the API wire as a check: which names break it.

A field or query parameter whose name says it is a time or a duration must carry its
unit last: `_ms` (Unix milliseconds, or a duration in ms) or `_s` (seconds, kept for an
instrument's window and what is measured against it). See `schemas.wire_time`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

#: Words (between underscores) that make a name a time or a duration.
TIME_WORDS = frozenset(
    [
        "time",
        "times",
        "timestamp",
        "at",
        "date",
        "expire",
        "expires",
        "expiry",
        "deadline",
        "window",
        "start",
        "started",
        "end",
        "ended",
        "duration",
        "grace",
        "period",
        "checked",
        "since",
        "until",
        "ttl",
        "timeout",
        "settles",
        "created",
        "updated",
        "delay",
        "interval",
        "age",
        "epoch",
    ]
)
UNIT = re.compile(r"_(ms|s)$")
#: Names that look like times and are not, each with the reason.
NOT_TIMES = {
    "allow_started": "a flag: list into a window that has started",
    "period": "a report's bucket, hour | day",
}


def untimed(names: Iterable[tuple[str, str]]) -> list[str]:
    """Of (where, name) pairs, the time-like names without their unit, as 'where: name'."""
    return sorted(
        f"{where}: {name}"
        for where, name in names
        if TIME_WORDS & set(name.split("_")) and not UNIT.search(name) and name not in NOT_TIMES
    )


def schema_names(schemas: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(schema, property) of every non-deprecated property of JSON-schema components."""
    for schema, body in schemas.items():
        for name, prop in body.get("properties", {}).items():
            if not prop.get("deprecated"):
                yield schema, name
