"""Runtime settings of a tokex process.

One immutable value built once (by the CLI, or by a test) and handed down to
the app factory and the database helpers. Only `DATABASE_URL` is read from the
environment (and, handy for tests and load runs, the rate limit from `TOKEX_RATE_LIMIT` /
`TOKEX_RATE_BURST`, the sequencer's queue bound from `TOKEX_QUEUE_MAX`, the connection
limits, and whether `tokex serve` migrates from `TOKEX_MIGRATE`: every variable in
`ENV_OVERRIDES`); everything else comes from command-line flags or their defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec

from market.money import Currency, currency
from schemas.errors import DomainError, ErrorKind

DEFAULT_DATA_DIR = ".tokex"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Origin line of the ledger's signed checkpoints (C2SP signed-note format).
DEFAULT_EXCHANGE_NAME = "tokex.local/ledger"
#: The exchange's currency code (the sequencer's and the ledger's cash asset).
EXCHANGE_CURRENCY = "USD"


class ConnectionLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What one client connection may take of the server (enforced by `ops.limits`)."""

    #: An idle keep-alive connection is closed this long after its last response.
    keep_alive_timeout_ms: int = 5_000
    #: From a connection's opening (or a later request's first byte) to the end of the
    #: request's headers; then 408 and closed. Also how long a new silent connection lives.
    header_timeout_ms: int = 10_000
    #: A request's line and headers at most (431 `headers_too_large` beyond, then closed).
    max_header_bytes: int = 65_536
    #: From the end of a request's headers to the end of its body; then closed.
    body_timeout_ms: int = 30_000
    #: Open HTTP connections at most (lowered to fit the open-file limit); past it the
    #: longest-quiet connection with no request being answered (idle, or its headers or
    #: body still coming) is closed, and if there is none the new one gets 503
    #: `too_many_connections`.
    max_connections: int = 4_096
    #: Open websockets at most (they leave `max_connections` when they upgrade), lowered to
    #: half of what the open-file limit leaves for client sockets; past it the upgrade is
    #: refused with 503 `too_many_websockets`, so plain HTTP keeps its room.
    max_websockets: int = 4_096
    #: The share, in percent, of `max_connections` and of `max_websockets` that the
    #: connections of one client address may hold: past it a new one from that address
    #: closes that address's own longest-quiet idle connection (503 if it has none), so
    #: one address cannot take every place. Set 100 behind a reverse proxy (every client
    #: then has the proxy's address).
    client_share_percent: int = 50
    #: The websocket stream's own keep-alive: a ping this often, closed if no pong in time.
    ws_ping_interval_ms: int = 20_000
    ws_ping_timeout_ms: int = 20_000


#: Settings that may come from the environment: field name -> variable.
ENV_OVERRIDES: dict[str, str] = {
    "migrate": "TOKEX_MIGRATE",
    "accept_ledger_regression": "TOKEX_ACCEPT_LEDGER_REGRESSION",
    "accept_unsigned_journal": "TOKEX_ACCEPT_UNSIGNED_JOURNAL",
    "signing_key_file": "TOKEX_SIGNING_KEY_FILE",
    "rate_limit": "TOKEX_RATE_LIMIT",
    "rate_burst": "TOKEX_RATE_BURST",
    "queue_max": "TOKEX_QUEUE_MAX",
    "currency_scale": "TOKEX_CURRENCY_SCALE",
    "max_open_orders": "TOKEX_MAX_OPEN_ORDERS",
    "pipeline_depth": "TOKEX_PIPELINE_DEPTH",
    "settle_wait_ms": "TOKEX_SETTLE_WAIT_MS",
    "endpoint_allow_hosts": "TOKEX_ENDPOINT_ALLOW_HOSTS",
    "endpoint_health_interval_s": "TOKEX_ENDPOINT_HEALTH_INTERVAL_S",
    "gateway_flush_ms": "TOKEX_GATEWAY_FLUSH_MS",
    "gateway_progress_ms": "TOKEX_GATEWAY_PROGRESS_MS",
    "receipt_writers": "TOKEX_RECEIPT_WRITERS",
    "gateway_upstream_timeout_s": "TOKEX_GATEWAY_UPSTREAM_TIMEOUT_S",
    "gateway_upstream_idle_ms": "TOKEX_GATEWAY_UPSTREAM_IDLE_MS",
    "gateway_max_in_flight": "TOKEX_GATEWAY_MAX_IN_FLIGHT",
    "gateway_rate_limit": "TOKEX_GATEWAY_RATE_LIMIT",
    "gateway_rate_burst": "TOKEX_GATEWAY_RATE_BURST",
    "gateway_max_answer_bytes": "TOKEX_GATEWAY_MAX_ANSWER_BYTES",
    "gateway_max_event_bytes": "TOKEX_GATEWAY_MAX_EVENT_BYTES",
    "keep_alive_timeout_ms": "TOKEX_KEEP_ALIVE_TIMEOUT_MS",
    "header_timeout_ms": "TOKEX_HEADER_TIMEOUT_MS",
    "body_timeout_ms": "TOKEX_BODY_TIMEOUT_MS",
    "max_header_bytes": "TOKEX_MAX_HEADER_BYTES",
    "max_connections": "TOKEX_MAX_CONNECTIONS",
    "max_websockets": "TOKEX_MAX_WEBSOCKETS",
    "client_share_percent": "TOKEX_CLIENT_SHARE_PERCENT",
    "ws_ping_interval_ms": "TOKEX_WS_PING_INTERVAL_MS",
    "ws_ping_timeout_ms": "TOKEX_WS_PING_TIMEOUT_MS",
}
_LIMIT_FIELDS = ConnectionLimits.__struct_fields__
_DEFAULT_LIMITS = ConnectionLimits()


class InvalidSetting(DomainError):
    """A setting (an environment variable or a flag) the exchange cannot start with."""

    code = "invalid_setting"
    kind = ErrorKind.INVALID


def _setting_error(problem: str, env: Mapping[str, str], flags: Mapping[str, object]) -> str:
    """msgspec's "Expected `int` >= 0 - at `$.settle_wait_ms`" said of the setting as the
    operator gave it: the variable or the flag, and its value."""
    field = problem.rpartition("`$.")[2].rstrip("`").split(".")[0].split("[")[0]
    var = ENV_OVERRIDES.get(field)
    what = problem.partition(" - at ")[0]
    if field in flags:
        return f"--{field.replace('_', '-')} {flags[field]!r}: {what}"
    if var is not None and env.get(var):
        return f"{var}={env[var]!r}: {what}"
    return problem


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
    #: `tokex serve` applies pending migrations at start (True), or only checks that none is
    #: pending and refuses to start otherwise (`TOKEX_MIGRATE=0`: serving as a role that owns
    #: no table and so cannot migrate, see `ops.db_grants`).
    migrate: bool = True
    #: Serve a database whose ledger is behind the checkpoint the exchange last signed
    #: (`TOKEX_ACCEPT_LEDGER_REGRESSION=1`: a deliberate restore; see `ops.ledger_head`).
    accept_ledger_regression: bool = False
    #: Sign journal rows past the last signed checkpoint at start instead of refusing the
    #: database (`TOKEX_ACCEPT_UNSIGNED_JOURNAL=1`: a ledger written by a tool without the
    #: Merkle log; see `ledger.log.UnsignedJournal`).
    accept_unsigned_journal: bool = False
    pool_min_size: int = 1
    #: The app's pool: reads, and the receipt journal's writers (at most 12, kept).
    pool_max_size: int = 16
    log_level: str = "info"
    #: Signed requests per second per key (token bucket, see `market.auth.RateLimiter`).
    rate_limit: float = 50.0
    #: Requests a key may make at once above the steady rate.
    rate_burst: int = 100
    #: Ops the sequencer's queue holds at most (beyond: 503 `exchange_busy` with
    #: Retry-After); None: the sequencer's default, `market.sequencer.QUEUE_MAX`.
    queue_max: int | None = None
    #: Open (resting) orders one account may have at most; a limit order that could rest
    #: beyond it is refused 422 `too_many_open_orders` (`market.sequencer.orders`).
    max_open_orders: Annotated[int, msgspec.Meta(ge=1)] = 5_000
    #: Batches the sequencer has in flight at most: staged while earlier ones commit
    #: (`market.sequencer.pipeline`); 1 commits strictly one batch after the other.
    pipeline_depth: Annotated[int, msgspec.Meta(ge=1)] = 2
    #: How long past its settlement time an instrument waits for the gateway's calls
    #: still in flight on it, and their charges (ms; `market.sequencer.lifecycle`).
    settle_wait_ms: Annotated[int, msgspec.Meta(ge=0)] = 300_000
    #: The books are snapshotted every this many journal entries, or after this many
    #: seconds if the journal moved (`market.snapshot_writer`): a restart replays at most
    #: about that much of the journal.
    snapshot_interval_entries: Annotated[int, msgspec.Meta(ge=1)] = 50_000
    snapshot_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    #: Digits of minor units per unit of the exchange's currency, for people (`$21,098.75`;
    #: `GET /v1/currencies`); None: the currency's usual one (USD 2). The wire and the
    #: ledger hold integers of minor units whatever this says.
    currency_scale: Annotated[int, msgspec.Meta(ge=0, le=18)] | None = None

    #: Connection limits (see `ConnectionLimits`, where each is described).
    keep_alive_timeout_ms: int = _DEFAULT_LIMITS.keep_alive_timeout_ms
    header_timeout_ms: int = _DEFAULT_LIMITS.header_timeout_ms
    body_timeout_ms: int = _DEFAULT_LIMITS.body_timeout_ms
    max_header_bytes: int = _DEFAULT_LIMITS.max_header_bytes
    max_connections: int = _DEFAULT_LIMITS.max_connections
    max_websockets: int = _DEFAULT_LIMITS.max_websockets
    client_share_percent: Annotated[int, msgspec.Meta(ge=1, le=100)] = (
        _DEFAULT_LIMITS.client_share_percent
    )
    ws_ping_interval_ms: int = _DEFAULT_LIMITS.ws_ping_interval_ms
    ws_ping_timeout_ms: int = _DEFAULT_LIMITS.ws_ping_timeout_ms

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(**{name: getattr(self, name) for name in _LIMIT_FIELDS})

    #: Hosts a provider's endpoint may point at although they resolve to non-global
    #: addresses (comma-separated; `TOKEX_ENDPOINT_ALLOW_HOSTS`; see market.gateway.ssrf).
    endpoint_allow_hosts: str = ""
    #: Seconds between health probes of the providers' endpoints.
    endpoint_health_interval_s: float = 10.0
    #: The gateway commits each call's receipt as soon as it can (a group commit with the
    #: receipts of other calls ending meanwhile); a charge that failed is submitted again
    #: at the latest after this long (ms): settlement at least once a second by default.
    gateway_flush_ms: int = 1000
    #: How often the gateway records the progress of its streaming calls (ms): a call cut
    #: by a crash is charged by its last record (market.gateway.progress).
    gateway_progress_ms: Annotated[int, msgspec.Meta(ge=1)] = 250
    #: Receipt journal commits in flight at once, a database connection each (of the
    #: app's pool in one process, at least 4 of its 16 left for reads; of the sequencer
    #: process's with `--workers`): a call's end waits for one commit unless all are busy
    #: (market.gateway.journal).
    receipt_writers: Annotated[int, msgspec.Meta(ge=1, le=12)] = 8
    #: How long the gateway waits on an upstream (connect, each read) before a 502.
    gateway_upstream_timeout_s: float = 60.0
    #: How long a connection to an upstream may idle and still be reused (ms): keep it
    #: below the shortest idle timeout of the providers' servers (uvicorn's is 5 s).
    gateway_upstream_idle_ms: Annotated[int, msgspec.Meta(ge=1)] = 2000
    #: Calls in flight per buying account through the gateway (429 beyond).
    gateway_max_in_flight: int = 256
    #: Calls per second per inference key, on average and in a burst (429 beyond).
    gateway_rate_limit: float = 100.0
    gateway_rate_burst: int = 200
    #: The most of an upstream's non-streamed answer the gateway reads (bytes; a larger
    #: one is a 502, nothing charged), and of one event of a stream (a longer one cuts
    #: the stream: the cut-call rule).
    gateway_max_answer_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    gateway_max_event_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024

    @property
    def money(self) -> Currency:
        """The exchange's currency with the scale it was set up with (for showing amounts)."""
        return currency(EXCHANGE_CURRENCY, self.currency_scale)

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
        for name, var in ENV_OVERRIDES.items():
            if env.get(var):
                values[name] = env[var]
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        try:
            return msgspec.convert(values, cls, strict=False)  # strict=False: env strings
        except msgspec.ValidationError as exc:
            raise InvalidSetting(_setting_error(str(exc), env, given)) from None
