"""Which exceptions mean the database cannot be reached now, not that a request is wrong.

Not in `ledger.errors`: the pure core imports that, and these name the database driver's.
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base

#: Exceptions that mean the database cannot be reached now, not that a request is wrong
#: (503 `database_unavailable`: `ops.errors`, and the gateway's OpenAI-shaped errors).
#: (TimeoutError is an OSError: a query that timed out is one the database did not answer.)
DATABASE_DOWN: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.InterfaceError,
    # "cannot switch to state N; another operation (M) is in progress": a pooled
    # connection a lost database left mid-query, failing again when it is released.
    asyncpg_base.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
#: InterfaceErrors that are about the request or the code, not the connection (500).
CLIENT_FAULTS: tuple[type[Exception], ...] = (
    asyncpg_base.ClientConfigurationError,
    asyncpg_base.UnsupportedClientFeatureError,
    asyncpg_base.UnsupportedServerFeatureError,
)
