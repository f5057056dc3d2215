"""CPU time of the processes under a benchmark, read from /proc (Linux).

`CpuSample.take(groups)` reads utime + stime of every process of each group (a group is a
root pid and, if asked, its children); `since(earlier)` gives each group's CPU seconds in
between. A process that starts between the two samples counts from zero; one that ends
in between is lost (its time goes to its parent's `cutime`, which is not read): the
groups here are long-lived (the server, its signature helper, PostgreSQL's postmaster
with its backends and background workers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Group:
    """A process and (with `children`) every process whose parent it is."""

    pid: int
    children: bool = False
    only_children: bool = False  # the root's own time is not counted (it is another group)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in ticks) of `pid`, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _all_stats() -> dict[int, tuple[int, int]]:
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Ticks per (group name, pid) at one moment."""

    ticks: Mapping[tuple[str, int], int]

    @classmethod
    def take(cls, groups: Mapping[str, Group]) -> CpuSample:
        stats = _all_stats()
        ticks: dict[tuple[str, int], int] = {}
        for name, group in groups.items():
            if group.pid in stats and not group.only_children:
                ticks[(name, group.pid)] = stats[group.pid][1]
            if group.children:
                for pid, (ppid, used) in stats.items():
                    if ppid == group.pid:
                        ticks[(name, pid)] = used
        return cls(ticks)

    def since(self, earlier: CpuSample) -> dict[str, float]:
        """CPU seconds each group used between `earlier` and this sample."""
        used: dict[str, float] = {}
        for (name, pid), ticks in self.ticks.items():
            before = earlier.ticks.get((name, pid), 0)
            used[name] = used.get(name, 0.0) + max(0, ticks - before) / _TICKS_PER_S
        return used


def postmaster_pid(pg_data: Path) -> int | None:
    """The postmaster of the cluster in `pg_data` (first line of its postmaster.pid)."""
    try:
        return int((pg_data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
