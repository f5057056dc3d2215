"""The gateway's lifespans for `tokex serve`, from the settings: endpoint health probes
(`market.gateway.health`) and the gateway itself (`market.gateway.lifespan`; after the
exchange's lifespan, whose sequencer it uses)."""

from __future__ import annotations

from market.gateway.health import health_lifespan
from market.gateway.lifespan import gateway_lifespan
from market.gateway.service import GatewayConfig
from market.gateway.ssrf import parse_allow_hosts
from ops.app import Lifespan
from ops.config import Settings


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        allow_hosts=parse_allow_hosts(settings.endpoint_allow_hosts),
        flush_s=settings.gateway_flush_ms / 1000,
        progress_s=settings.gateway_progress_ms / 1000,
        upstream_timeout_s=settings.gateway_upstream_timeout_s,
        max_in_flight=settings.gateway_max_in_flight,
        rate_limit=settings.gateway_rate_limit,
        rate_burst=settings.gateway_rate_burst,
    )


def gateway_lifespans(settings: Settings) -> list[Lifespan]:
    config = gateway_config(settings)
    return [
        health_lifespan(config.allow_hosts, settings.endpoint_health_interval_s),
        gateway_lifespan(config),
    ]
