"""Runtime settings of a tokex process.

One immutable value built once (by the CLI, or by a test) and handed down to
the app factory and the database helpers. Only `DATABASE_URL` is read from the
environment (and, handy for tests and load runs, the rate limit from `TOKEX_RATE_LIMIT` /
`TOKEX_RATE_BURST` and the sequencer's queue bound from `TOKEX_QUEUE_MAX`); everything
else comes from command-line flags or their defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_DATA_DIR = ".tokex"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Origin line of the ledger's signed checkpoints (C2SP signed-note format).
DEFAULT_EXCHANGE_NAME = "tokex.local/ledger"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a tokex process needs to know to start.

    `database_url` None means "use the embedded PostgreSQL under
    `<data_dir>/pg`" (see `ops.database.database_url`).
    """

    data_dir: str = DEFAULT_DATA_DIR
    database_url: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    exchange_name: str = DEFAULT_EXCHANGE_NAME
    #: The checkpoint signing key file (PRIVATE+KEY+..., mode 0600); None: created on
    #: first start as `<data_dir>/ledger-signing.key` (see `ledger.keys`).
    signing_key_file: str | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    log_level: str = "info"
    #: Signed requests per second per key (token bucket, see `market.auth.RateLimiter`).
    rate_limit: float = 50.0
    #: Requests a key may make at once above the steady rate.
    rate_burst: int = 100
    #: Ops the sequencer's queue holds at most (beyond: 503 `exchange_busy` with
    #: Retry-After); None: the sequencer's default, `market.sequencer.QUEUE_MAX`.
    queue_max: int | None = None
    #: Hosts a provider's endpoint may point at although they resolve to non-global
    #: addresses (comma-separated; `TOKEX_ENDPOINT_ALLOW_HOSTS`; see market.gateway.ssrf).
    endpoint_allow_hosts: str = ""
    #: Seconds between health probes of the providers' endpoints.
    endpoint_health_interval_s: float = 10.0
    #: How often the gateway charges its metered calls through the sequencer (ms).
    gateway_flush_ms: int = 1000
    #: How long the gateway waits on an upstream (connect, each read) before a 502.
    gateway_upstream_timeout_s: float = 60.0

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    @property
    def pg_path(self) -> Path:
        """Where the embedded PostgreSQL cluster lives."""
        return self.data_path / "pg"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings with `DATABASE_URL` taken from the environment (empty counts as unset).

        Keyword overrides (e.g. from CLI flags) win; an override of None is ignored so
        that argparse defaults of None fall through to the Struct's defaults.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {"database_url": env.get("DATABASE_URL") or None}
        for name, var in (
            ("rate_limit", "TOKEX_RATE_LIMIT"),
            ("rate_burst", "TOKEX_RATE_BURST"),
            ("queue_max", "TOKEX_QUEUE_MAX"),
            ("endpoint_allow_hosts", "TOKEX_ENDPOINT_ALLOW_HOSTS"),
            ("endpoint_health_interval_s", "TOKEX_ENDPOINT_HEALTH_INTERVAL_S"),
            ("gateway_flush_ms", "TOKEX_GATEWAY_FLUSH_MS"),
            ("gateway_upstream_timeout_s", "TOKEX_GATEWAY_UPSTREAM_TIMEOUT_S"),
        ):
            if env.get(var):
                values[name] = env[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)  # strict=False: env strings
