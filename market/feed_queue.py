"""A market data subscriber: one connection's outbound queue of encoded frames, bounded.

The hub (`market.feed.MarketData`) pushes frames; the connection's sender
(`market.stream`) takes them. The queue is bounded twice: in frames
(`DEFAULT_QUEUE_LIMIT`) and in bytes of frame text (`DEFAULT_QUEUE_BYTES`), since one
full-depth snapshot of a deep book is as big as thousands of deltas. A frame that
comes while the queue holds either bound's worth drops the subscriber: its queue is
discarded and its connection closed with `CLOSE_SLOW_CONSUMER`. So its queue holds
at most `queue_bytes` plus one frame, and a frame larger than the byte bound is still
delivered to a subscriber that keeps up.

The subscriber also knows which books' snapshots are still queued (not yet taken by
its sender), so that the hub can refuse a re-subscribe that would queue another.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from schemas.stream import Channel

#: Websocket close codes (application range 4000-4999).
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_SLOW_CONSUMER_REASON: Final = "slow consumer: fell behind; reconnect and resubscribe"

DEFAULT_QUEUE_LIMIT: Final = 4096  # frames queued per subscriber before it is dropped
#: Bytes of frame text queued per subscriber before it is dropped (a snapshot of a book
#: of 1,000 levels a side is ~32 KiB: room for ~250 of them).
DEFAULT_QUEUE_BYTES: Final = 8 * 2**20


class Subscriber:
    """One connection's outbound queue of encoded frames, bounded in frames and bytes.

    `push` never blocks: when the queue is full, the subscriber is marked
    dropped and its queue discarded; the connection's sender sees
    `close_code` and closes the socket.
    """

    __slots__ = (
        "_byte_limit", "_bytes", "_closed", "_limit", "_queue", "_wake", "account_id", "close_code",
        "close_reason", "orders_instrument", "snapshots_queued", "subs",
    )  # fmt: skip

    def __init__(
        self, limit: int = DEFAULT_QUEUE_LIMIT, byte_limit: int = DEFAULT_QUEUE_BYTES
    ) -> None:
        self._limit = limit
        self._byte_limit = byte_limit
        self._queue: deque[str] = deque()
        self._bytes = 0  # of the frames in `_queue`: characters of JSON, nearly all ASCII
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.account_id: str | None = None  # set by a private subscription
        #: The one instrument of its private subscription's updates (None: every one).
        self.orders_instrument: str | None = None
        self.subs: set[tuple[Channel, str]] = set()
        #: Instruments whose book snapshot (from a subscribe) is queued, not yet taken.
        self.snapshots_queued: set[str] = set()

    @property
    def dropped(self) -> bool:
        return self.close_code is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames queued now."""
        return self._bytes

    def push(self, frame: str) -> bool:
        """Queue a frame; False (and dropped) if the subscriber is too far behind."""
        if self.close_code is not None:
            return False
        if len(self._queue) >= self._limit or self._bytes >= self._byte_limit:
            self.close(CLOSE_SLOW_CONSUMER, CLOSE_SLOW_CONSUMER_REASON)
            return False
        self._queue.append(frame)
        self._bytes += len(frame)
        self._wake.set()
        return True

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._drain()
            self._wake.set()
            self._closed.set()

    async def wait_closed(self) -> None:
        """Until the subscriber is closed (dropped, or its connection ended)."""
        await self._closed.wait()

    def pending(self) -> list[str]:
        """Take every queued frame (without waiting)."""
        frames = list(self._queue)
        self._drain()
        return frames

    def _drain(self) -> None:
        self._queue.clear()
        self._bytes = 0
        self.snapshots_queued.clear()

    async def next_frames(self) -> list[str]:
        """Wait for frames; an empty list means the subscriber was closed."""
        while not self._queue and self.close_code is None:
            self._wake.clear()
            await self._wake.wait()
        if self.close_code is not None:
            return []
        return self.pending()
