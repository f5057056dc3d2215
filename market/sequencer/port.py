"""What the routes need of the exchange: submit ops, ask queries.

Both the sequencer itself (`market.sequencer.core.Sequencer`, in one process) and a
gateway process's handle on it (`market.sequencer.remote.RemoteSequencer`, over NATS)
are an `Exchange`, so a route does not know which it talks to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar, runtime_checkable

from market.sequencer.ops import Op, Outcome
from market.sequencer.queries import Query

T = TypeVar("T")


@runtime_checkable
class Exchange(Protocol):
    """Methods only: Litestar checks a dependency with `isinstance`, which for a protocol
    of methods only looks at the class (a property would be evaluated on the instance)."""

    async def submit(self, op: Op[T]) -> T: ...

    async def submit_all(self, ops: Sequence[Op[T]]) -> list[Outcome[T]]: ...

    async def ask(self, query: Query[T]) -> T: ...

    async def committed(self) -> None: ...
