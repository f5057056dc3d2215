"""The queue of one price level, and the walks over one side of a book.

A `Level` is a deque of resting orders, FIFO by arrival (the front is the
oldest order: time priority). Taking an order out from the middle is lazy, so
that cancel, amend and expiry cost O(1) however long the queue: the order's
open quantity is set to 0 (a live resting order always has open > 0) and it
stays in the deque as a tombstone. Tombstones are

- popped as soon as they reach the front, so the front of a non-empty level is
  always a live order (an empty deque is exactly an empty level);
- skipped by every walk over a level (depth, snapshot, FOK check);
- dropped by `sweep_level` while a level holds more than `LEVEL_COMPACT_MIN`
  of them and they are more than half of its deque: each such cancel sweeps
  the next `SWEEP` entries from a cursor kept per level (a hint: any start is
  correct), so the work per cancel is bounded by `SWEEP` entries however long
  the queue (plus a `deque.rotate`, pointer moves in C that touch no order),
  and amortised O(1): a level holds about as many tombstones as live orders
  at most. The count lives in a dict beside the levels (a deque subclass with
  a slot for it made append and pop ~40% slower, measured) and is exact:
  every pop of a tombstone at the front takes it off. Sweeping a whole level
  at once cost up to ~2 ms a cancel on a level of ~2,000 entries in a book of
  100,000 orders (each entry a cache miss), once every ~1,000 cancels there.

A level of at most `SHORT` entries is scanned instead (`deque.remove`): there a
scan in C is cheaper than the bookkeeping, and the front check comes first.

Measured against the alternative, an `OrderedDict` per level (delete by id in
O(1), a C linked list): an `OrderedDict` insert costs ~85 ns against ~15 ns
for a deque append (it allocates a node per entry), so in the book a new
resting order cost ~1.6 us against ~1.0-1.4 us with tombstones, for about the
same cancel; both replaced `deque.remove` over the whole queue, which on a
deep book (hundreds of orders per price) made a cancel cost up to 10x a new
order.

Sides: a dict key -> Level plus a binary heap of the keys (see `market.book`).
The helpers here are pure functions of those structures; the book's hot paths
(new order, matching, cancel) inline what they need instead.
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop
from typing import Final

from market.book_order import Resting
from schemas.market import DepthLevel

LEVEL_COMPACT_MIN: Final = 16  # tombstones a level may always hold
SWEEP: Final = 512  # entries of a level one cancel sweeps at most
COMPACT_MIN: Final = 1_024  # heap size below which a side's empty levels stay
SHORT: Final = 32  # a level this long is scanned rather than left with a tombstone


Level = deque[Resting]


def sweep_level(level: Level, key: int, cursors: dict[int, int]) -> int:
    """Drop the tombstones among the `SWEEP` entries of `level` from its cursor
    in `cursors` (0 if none), keeping the order of the rest; move the cursor past
    them (dropped at the end of the level); return how many were dropped."""
    size = len(level)
    start = cursors.get(key, 0)
    if start >= size:
        start = 0
    take = min(SWEEP, size - start)
    level.rotate(-start)  # the swept entries at the front, popped and put back
    popleft = level.popleft
    live = [o for o in [popleft() for _ in range(take)] if o.open]
    level.extendleft(reversed(live))
    level.rotate(start)
    end = start + len(live)
    if end >= len(level):
        cursors.pop(key, None)
    else:
        cursors[key] = end
    return take - len(live)


def drop_empty_top(levels: dict[int, Level], heap: list[int], dead: dict[int, int]) -> None:
    """Restore "the top of the heap is a non-empty level" after a removal."""
    while heap and not levels[heap[0]]:
        key = heappop(heap)
        del levels[key]
        del dead[key]


def keys_up_to(heap: list[int], limit: int) -> list[int]:
    """Keys <= limit in a binary heap, visiting only those (a child is never
    smaller than its parent, so a branch stops at the first key above limit)."""
    out: list[int] = []
    n = len(heap)
    stack = [0] if n and heap[0] <= limit else []
    while stack:
        i = stack.pop()
        out.append(heap[i])
        for child in (2 * i + 1, 2 * i + 2):
            if child < n and heap[child] <= limit:
                stack.append(child)
    return out


def fillable(
    levels: dict[int, Level], heap: list[int], owner: str, skip_own: bool, qty: int, lim_key: int
) -> bool:
    """Could a taker of `owner` fill `qty` entirely up to `lim_key` now? Counts
    other owners' open quantity in priority order up to the first own order,
    or past own orders when `skip_own` (STP cancel_oldest would cancel them)."""
    need = qty
    for key in sorted(keys_up_to(heap, lim_key)):
        for maker in levels[key]:
            if not maker.open:
                continue
            if maker.owner == owner:
                if skip_own:
                    continue
                return False
            need -= maker.open
            if need <= 0:
                return True
    return False


def depth_side(levels: dict[int, Level], n: int, sign: int) -> list[DepthLevel]:
    """The first `n` non-empty levels of a side, best first (price = sign * key)."""
    out: list[DepthLevel] = []
    for key in sorted(k for k, level in levels.items() if level):
        if len(out) >= n:
            break
        opens = [o.open for o in levels[key] if o.open]
        out.append(DepthLevel(sign * key, sum(opens), len(opens)))
    return out


def compact(
    sides: tuple[tuple[dict[int, Level], list[int]], ...],
    dead: dict[int, int],
    cursors: dict[int, int],
    min_keys: int,
) -> int:
    """Drop the empty levels left deep in the book (and the sweep cursors of
    levels gone) and rebuild the heaps; return the heap size at which to compact
    next (twice the live levels, at least `min_keys`), so this is amortised O(1)
    per new level."""
    most = 0
    for levels, heap in sides:
        for key in [k for k, level in levels.items() if not level]:
            del levels[key]
            del dead[key]
        heap[:] = list(levels)
        heapify(heap)
        most = max(most, len(heap))
    for key in [k for k in cursors if k not in dead]:
        del cursors[key]
    return max(min_keys, 2 * most)


def in_priority_order(levels: dict[int, Level]) -> list[Resting]:
    """Every live order of a side, best level first, FIFO within a level."""
    return [o for key in sorted(levels) for o in levels[key] if o.open]
