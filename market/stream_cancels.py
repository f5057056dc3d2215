"""Cancels on disconnect the sequencer could not take yet, retried until it does.

A websocket armed with `cancel_on_disconnect` (`market.stream`) submits `CancelAllOp`
for its account when the connection ends. During a database outage (or while the
sequencer process of `serve --workers N` is away) that submit is refused; the bot is
gone, and its orders would stay open and could fill once the database is back. So the
cancel is owed: `OwedCancels` keeps the account (and the instrument, if the subscribe
that armed it named one) and submits again, 0.25 s after, then doubling to every 5 s,
until the sequencer answers. Nothing is re-checked on a retry (the
arming key was checked when the connection ended): an account whose owner reconnected
meanwhile is still cancelled, as it would have been at once without the outage.

It is per process: in `serve --workers N` the gateway process that held the socket
retries, through its `RemoteSequencer` (over NATS); in `serve` the one process does. At
shutdown (`drain`, from the app's last lifespan, so before the sequencer or its NATS
connection closes) each owed cancel gets a few more tries; one still refused then is
logged as an error and lost, as is everything owed when the process crashes: the owner
cancels through `POST /v1/orders/cancel-all` (or arms the dead-man switch,
`POST /v1/orders/cancel-after`, which the sequencer keeps). At most `max_accounts` are owed
at once; past that a cancel is logged as an error and not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from market.sequencer.ops import CancelAllOp
from market.sequencer.port import Exchange
from schemas.errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

FIRST_DELAY_S: Final = 0.25
MAX_DELAY_S: Final = 5.0
MAX_ACCOUNTS: Final = 10_000
DRAIN_TRIES: Final = 3
#: Where the sequencer is now: the app's (`app.state.sequencer`), which a database outage
#: replaces when the exchange reopens; None while there is none.
SequencerOf = Callable[[], Exchange | None]
#: An owed cancel: the account, and the one instrument whose orders it cancels (None: all).
_Scope = tuple[str, str | None]
#: The errors that mean "not now" (retried); any other is the sequencer's answer.
_RETRIED_KINDS: Final = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.RATE_LIMITED})


async def cancel_orders(
    sequencer: Exchange | None, account_id: str, instrument: str | None = None
) -> bool:
    """Submit the account's cancel-all (of `instrument` only, if given); False if the
    sequencer did not take it (retry)."""
    if sequencer is None:
        log.info("stream: cancel on disconnect of %s not taken yet: no sequencer", account_id)
        return False
    try:
        result = await sequencer.submit(CancelAllOp(account_id, instrument))
    except DomainError as exc:
        if exc.kind in _RETRIED_KINDS:
            log.info("stream: cancel on disconnect of %s not taken yet: %s", account_id, exc.code)
            return False
        log.error("stream: cancel on disconnect of %s refused: %r", account_id, exc)
        return True  # an answer: retrying would get it again
    except Exception as exc:  # the sequencer or its connection failed: retry
        log.info("stream: cancel on disconnect of %s failed: %s: %s", account_id,
                 type(exc).__name__, exc)  # fmt: skip
        return False
    log.info("stream: disconnect cancelled %d orders of %s", len(result.cancelled), account_id)
    return True


class OwedCancels:
    """The accounts of this process whose cancel on disconnect is owed (module docstring)."""

    def __init__(
        self,
        *,
        max_accounts: int = MAX_ACCOUNTS,
        first_delay_s: float = FIRST_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        self.max_accounts = max_accounts
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        #: (account, instrument or None) -> (the sequencer to submit to, the retrying task)
        self._owed: dict[_Scope, tuple[SequencerOf, asyncio.Task[None]]] = {}

    def __len__(self) -> int:
        return len(self._owed)

    def __contains__(self, account_id: object) -> bool:
        """Whether a cancel of the account (of any scope) is owed."""
        return any(owed == account_id for owed, _ in self._owed)

    def owe(self, sequencer: SequencerOf, account_id: str, instrument: str | None = None) -> bool:
        """Retry the account's cancel (of `instrument` only, if given) until the sequencer
        takes it, asking `sequencer` for the sequencer at each try; False if the set is full."""
        scope = (account_id, instrument)
        if scope in self._owed:
            return True
        if len(self._owed) >= self.max_accounts:
            log.error("stream: %d cancels on disconnect owed already; %s's orders stay open",
                      len(self._owed), account_id)  # fmt: skip
            return False
        log.warning("stream: cancel on disconnect of %s owed: retrying until it is taken",
                    account_id)  # fmt: skip
        task = asyncio.create_task(self._retry(sequencer, scope))
        self._owed[scope] = (sequencer, task)
        return True

    async def _retry(self, sequencer: SequencerOf, scope: _Scope) -> None:
        delay = self.first_delay_s
        while True:
            await asyncio.sleep(delay)
            if await cancel_orders(sequencer(), *scope):
                self._owed.pop(scope, None)
                return
            delay = min(delay * 2, self.max_delay_s)

    async def drain(self, tries: int = DRAIN_TRIES, delay_s: float = FIRST_DELAY_S) -> None:
        """At shutdown: stop the retrying, and give each owed cancel `tries` more tries,
        `delay_s` apart (doubling)."""
        tasks = [task for _, task in self._owed.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        owed, self._owed = self._owed, {}  # less any taken meanwhile
        for scope, (sequencer, _) in sorted(owed.items(), key=lambda item: _order(item[0])):
            account_id = scope[0]
            delay = delay_s
            for attempt in range(tries):
                if attempt:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay_s)
                if await cancel_orders(sequencer(), *scope):
                    break
            else:
                log.error("stream: shutting down with %s's cancel on disconnect not taken: "
                          "its orders stay open", account_id)  # fmt: skip


def _order(scope: _Scope) -> tuple[str, str]:
    return scope[0], scope[1] or ""


__all__ = ["OwedCancels", "cancel_orders"]
