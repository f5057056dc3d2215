"""`GET /ready`: whether this process serves the exchange now (beside `/health`).

`/health` says the process is alive and its database answers; `/ready` says more: the
exchange's state has been rebuilt from the database and this process holds the ledger's
writer lock (its sequencer runs and its ledger can write), so a state change sent now
will be taken. 200 `{"status": "ready", "ledger_size": N}`, else 503 with `Retry-After`:
`exchange_not_running` (this app runs no exchange), `database_unreachable` (the
supervisor has the database down), `ledger_regressed` (the database's ledger is behind
the log the exchange signed: `ops.ledger_head`) or `exchange_not_ready` (starting,
rebuilding, reopening after an outage, or stopping). It reads only memory: no database round trip.
"""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.datastructures import State

from market.api import ExchangeNotRunning
from market.auth import PUBLIC
from market.sequencer.queries import StatusQuery
from market.sequencer.remote import RemoteSequencer
from ops.database import DatabaseUnreachable
from ops.supervisor import DatabaseState
from schemas.errors import DomainError, ErrorKind


class ExchangeNotReady(DomainError):
    code = "exchange_not_ready"
    kind = ErrorKind.UNAVAILABLE


class Ready(msgspec.Struct, frozen=True):
    status: str
    ledger_size: int


def readiness(state: State) -> Ready:
    """Ready, or the error that says why not (see the module docstring)."""
    _database_ready(state)
    sequencer = state.get("sequencer")
    if sequencer is None:
        raise ExchangeNotRunning("this process runs no exchange (no sequencer, no writer)")
    if not sequencer.healthy:
        raise ExchangeNotReady(
            f"the exchange is not ready ({sequencer.state.value}); try again shortly"
        )
    return Ready(status="ready", ledger_size=sequencer.ledger.size)


def _database_ready(state: State) -> None:
    """Raise why not, if this process's database supervisor does not have it up."""
    supervisor = state.get("database_supervisor")
    if supervisor is not None and supervisor.regressed is not None:
        raise supervisor.regressed
    if supervisor is not None and supervisor.state is DatabaseState.REOPENING:
        raise ExchangeNotReady("the exchange is reopening on its database after losing it")
    if supervisor is not None and not supervisor.ready:
        raise DatabaseUnreachable("database unreachable")


@get("/ready", opt=PUBLIC, tags=["ops"], summary="Readiness: state rebuilt, writer held")
async def ready(state: State) -> Ready:
    sequencer = state.get("sequencer")
    if isinstance(sequencer, RemoteSequencer):  # a gateway process: ask the sequencer's
        _database_ready(state)  # unless its own supervisor has the database down
        status = await sequencer.ask(StatusQuery())
        if not status.healthy:
            raise ExchangeNotReady(f"the exchange is not ready ({status.state}); try again shortly")
        return Ready(status="ready", ledger_size=status.ledger_size)
    return readiness(state)
