"""The gateway's lifespans for `tokex serve`, from the settings: endpoint health probes
(`market.gateway.health`) and the gateway itself (`market.gateway.lifespan`; after the
exchange's lifespan, whose sequencer it uses)."""

from __future__ import annotations

from market.gateway.health import health_lifespan
from market.gateway.lifespan import gateway_lifespan
from market.gateway.ssrf import parse_allow_hosts
from ops.app import Lifespan
from ops.config import Settings


def gateway_lifespans(settings: Settings) -> list[Lifespan]:
    allow = parse_allow_hosts(settings.endpoint_allow_hosts)
    return [
        health_lifespan(allow, settings.endpoint_health_interval_s),
        gateway_lifespan(
            allow, settings.gateway_flush_ms / 1000, settings.gateway_upstream_timeout_s
        ),
    ]
