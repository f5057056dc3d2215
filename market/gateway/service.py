"""The gateway's call path: route, reserve, forward, meter, receipt (`Gateway.call`).

One `Gateway` per process (`app.state.gateway`, started by `gateway_lifespan` after the
exchange's lifespan, since it needs the sequencer). A call:

1. is refused before anything is reserved if malformed (400), for a model its key does
   not allow (404 `model_not_found`), or with `n` other than 1 (400);
2. is routed (`routing`) on the sequencer's committed memory and the endpoints' health,
   and reserves (`metering.plan`, `meter.Reservations`) in the same step of the event loop;
3. is forwarded to the endpoint's checked address (`ssrf.resolve` again, per call) with
   the endpoint's credential, `max_tokens` set to the completion cap and, streaming,
   `stream_options.include_usage` on; the answer goes back as it arrives (SSE events
   passed on one by one; the usage-only event only if the buyer asked for it);
4. ends with its charge (`metering.charge`): the rest of the reservation is released and
   a receipt goes to the `Meter`, which charges it through the sequencer within a flush.

An upstream error status, a timeout or a failure before the answer: 502, nothing charged,
no receipt. A stream that breaks after it began: the buyer gets an OpenAI-style error
event, and the call is charged by the rule for a cut stream.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import msgspec
from litestar import Response
from litestar.response import Stream

from market.gateway import endpoints as store
from market.gateway import metering, routing
from market.gateway.errors import (
    InsufficientEntitlement,
    ModelNotFound,
    NoEndpoint,
    UnsupportedParameter,
    UpstreamFailed,
)
from market.gateway.health import upstream_headers
from market.gateway.keys import KeyGrant
from market.gateway.meter import Group, Meter, Reservations, SequencerSource, current
from market.gateway.sse import EventReader
from market.gateway.ssrf import EndpointRefused, Target, resolve
from market.sequencer import Sequencer
from market.signing import now_ms
from schemas.gateway import GatewayReceipt

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Call:
    """One call in flight, from its reservation to its receipt."""

    grant: KeyGrant
    group: Group
    route: routing.Route
    model: str
    plan: metering.Plan
    started_ms: int
    request_bytes: bytes = b""
    response_hash: Any = field(default_factory=hashlib.sha256)
    finished: bool = False


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UnsupportedParameter(f"the body is not JSON: {exc}", code="invalid_request") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise UnsupportedParameter(
            "the body must be an object with a `model`", code="invalid_request"
        )
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise UnsupportedParameter("only n = 1 (and best_of = 1) is supported")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise UnsupportedParameter(f"{name} must be a positive integer", code="invalid_request")
    return body


def upstream_body(body: dict[str, Any], plan: metering.Plan) -> bytes:
    out = dict(body)
    out.pop("max_completion_tokens", None)
    out["max_tokens"] = plan.completion_cap
    if out.get("stream"):
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    return _encoder.encode(out)


class Gateway:
    def __init__(
        self, pool: asyncpg.Pool, sequencer: SequencerSource, *, allow_hosts: frozenset[str],
        flush_s: float, upstream_timeout_s: float,
    ) -> None:  # fmt: skip
        self.pool = pool
        self._sequencer = sequencer
        self.allow_hosts = allow_hosts
        self.reservations = Reservations()
        self.meter = Meter(sequencer, self.reservations, flush_s)
        self.in_flight: dict[tuple[str, str], int] = {}
        self.http = httpx.AsyncClient(
            timeout=upstream_timeout_s, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )  # fmt: skip
        self._endpoints: dict[tuple[str, str], store.EndpointRow] = {}

    @property
    def sequencer(self) -> Sequencer:
        """The exchange's sequencer now (a new one after a reopen)."""
        return current(self._sequencer)

    async def close(self) -> None:
        await self.meter.close()
        await self.http.aclose()

    # -- which models, which route -----------------------------------------------------

    def held(self, buyer: str) -> dict[str, dict[str, int]]:
        """Entitlement left per instrument and provider (less the reservations)."""
        out: dict[str, dict[str, int]] = {}
        for e in self.sequencer.entitlements_of(buyer):
            if e.buyer == buyer and e.entitlement > 0:
                left = self.reservations.left((buyer, e.provider, e.instrument), e.entitlement)
                out.setdefault(e.instrument, {})[e.provider] = left
        return out

    async def models(self, grant: KeyGrant) -> list[dict[str, Any]]:
        """The models this key may use now: live instruments it holds entitlement on."""
        await self.sequencer.committed()
        held = self.held(grant.buyer)
        now = now_ms()
        seen: dict[str, int] = {}
        for i in self.sequencer.instruments():
            left = held.get(i.symbol, {})
            if (
                any(n > 0 for n in left.values())
                and grant.allows(i.model)
                and routing.live([i], i.model, now)
            ):
                seen.setdefault(i.model, i.window_start)
        return [{"id": m, "object": "model", "created": c, "owned_by": "tokex"}
                for m, c in sorted(seen.items())]  # fmt: skip

    async def _load_key_used(self, grant: KeyGrant) -> None:
        """What a budgeted key has used so far, read once per process; what is left is
        computed after the last await before the reservation (`Reservations.key_left`)."""
        if grant.token_budget is not None and grant.key_id not in self.reservations.key_used:
            async with self.pool.acquire() as conn:
                used = await conn.fetchval(
                    "SELECT coalesce(sum(tokens), 0) FROM gateway_receipts WHERE key_id = $1",
                    grant.key_id,
                )
            self.reservations.key_used.setdefault(grant.key_id, int(used))

    async def open_call(self, grant: KeyGrant, body: dict[str, Any]) -> Call:
        """Route the call and reserve for it (or raise 402/404/503)."""
        model: str = body["model"]
        if not grant.allows(model):
            raise ModelNotFound(f"this key may not use model {model!r}")
        async with self.pool.acquire() as conn:
            rows = await store.healthy_endpoints(conn, model)
        await self._load_key_used(grant)
        await self.sequencer.committed()
        # From here to the reservation: no await, so no other call sees the same balance
        # (of the entitlement or of the key's budget).
        key_left = self.reservations.key_left(grant.key_id, grant.token_budget)
        for row in rows:
            self._endpoints[(row.provider, row.endpoint_id)] = row
        endpoints = [routing.Endpoint(r.provider, r.endpoint_id, r.max_concurrency) for r in rows]
        now = now_ms()
        live = routing.live(self.sequencer.instruments(), model, now)
        held = self.held(grant.buyer)
        route = routing.choose(live, lambda s: held.get(s, {}), endpoints, self.in_flight)
        if route is routing.NoRoute.NO_ENTITLEMENT:
            raise InsufficientEntitlement(f"no entitlement left for model {model!r} now")
        if route is routing.NoRoute.NO_ENDPOINT:
            raise NoEndpoint(f"no healthy endpoint serves model {model!r} for your entitlement")
        if route is routing.NoRoute.BUSY:
            raise NoEndpoint(
                f"every endpoint of {model!r} is at its concurrency", code="endpoints_busy"
            )
        available = route.available if key_left is None else min(route.available, key_left)
        weight = next(i.completion_weight for i in live if i.symbol == route.instrument)
        plan = metering.plan(body, available, weight)
        if plan is None:
            left = (
                "this key's budget"
                if key_left is not None and key_left < route.available
                else "entitlement"
            )
            raise InsufficientEntitlement(
                f"{available} tokens of {left} left: not enough for this prompt and a completion"
            )
        group = (grant.buyer, route.provider, route.instrument)
        self.reservations.reserve(group, grant.key_id, plan.reserved)
        slot = (route.provider, route.endpoint.endpoint_id)
        self.in_flight[slot] = self.in_flight.get(slot, 0) + 1
        return Call(grant, group, route, model, plan, now)

    def finish(
        self, call: Call, usage: metering.Usage | None, chunks: int, *, served: bool
    ) -> None:
        """End a call once: charge it (if it was served), release the rest, file its receipt."""
        if call.finished:
            return
        call.finished = True
        slot = (call.route.provider, call.route.endpoint.endpoint_id)
        self.in_flight[slot] -= 1
        if not self.in_flight[slot]:
            del self.in_flight[slot]
        charged = metering.charge(call.plan, usage, chunks) if served else metering.NOTHING
        self.reservations.finish(call.group, call.grant.key_id, call.plan.reserved, charged.tokens)
        if not served:
            return
        buyer, provider, instrument = call.group
        self.meter.add(GatewayReceipt(
            receipt_id="rcp_" + secrets.token_hex(12), key_id=call.grant.key_id, buyer=buyer,
            provider=provider, instrument=instrument, endpoint_id=call.route.endpoint.endpoint_id,
            model=call.model, prompt_tokens=charged.prompt_tokens,
            completion_tokens=charged.completion_tokens, cached_tokens=charged.cached_tokens,
            reasoning_tokens=charged.reasoning_tokens, tokens=charged.tokens,
            started_ms=call.started_ms, ended_ms=max(call.started_ms, now_ms()),
            request_sha256=hashlib.sha256(call.request_bytes).digest(),
            response_sha256=call.response_hash.digest(),
        ))  # fmt: skip

    # -- forwarding ----------------------------------------------------------------------

    async def _target(self, call: Call) -> tuple[Target, store.EndpointRow]:
        row = self._endpoints[(call.route.provider, call.route.endpoint.endpoint_id)]
        try:
            return await resolve(row.base_url, self.allow_hosts), row
        except EndpointRefused as exc:
            raise NoEndpoint(f"the endpoint is unusable now: {exc.code}") from None

    def _request(
        self, target: Target, row: store.EndpointRow, path: str, body: bytes
    ) -> httpx.Request:
        headers = upstream_headers(target, row.credential)
        headers["Content-Type"] = "application/json"
        return self.http.build_request(
            "POST", target.url + path, content=body, headers=headers, extensions=target.extensions
        )

    async def call(self, grant: KeyGrant, path: str, raw: bytes) -> Response[Any] | Stream:
        body = parse_body(raw)
        call = await self.open_call(grant, body)
        try:
            target, row = await self._target(call)
            call.request_bytes = upstream_body(body, call.plan)
            request = self._request(target, row, path, call.request_bytes)
            if body.get("stream"):
                return await self._stream(call, request, wants_usage=_wants_usage(body))
            return await self._once(call, request)
        except BaseException:
            self.finish(call, None, 0, served=False)
            raise

    async def _once(self, call: Call, request: httpx.Request) -> Response[Any]:
        try:
            response = await self.http.send(request)
        except httpx.TimeoutException:
            raise UpstreamFailed(
                "the upstream timed out; nothing was charged", code="upstream_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailed(
                f"the upstream failed ({type(exc).__name__}); nothing was charged"
            ) from None
        if not 200 <= response.status_code < 300:
            raise UpstreamFailed(
                f"the upstream answered {response.status_code}; nothing was charged"
            )
        content = response.content
        try:
            answer = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamFailed("the upstream's answer is not JSON; nothing was charged") from None
        usage = metering.parse_usage(answer.get("usage")) if isinstance(answer, dict) else None
        call.response_hash.update(content)
        self.finish(call, usage, 0, served=True)
        return Response(content, media_type="application/json")

    async def _stream(self, call: Call, request: httpx.Request, *, wants_usage: bool) -> Stream:
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamFailed(
                "the upstream timed out; nothing was charged", code="upstream_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailed(
                f"the upstream failed ({type(exc).__name__}); nothing was charged"
            ) from None
        if not 200 <= response.status_code < 300:
            await response.aclose()
            raise UpstreamFailed(
                f"the upstream answered {response.status_code}; nothing was charged"
            )
        relay = self._relay(call, response, wants_usage)
        # Started here, not when the response is first sent: a started generator's cleanup
        # (which ends the call) runs even if the buyer is gone before anything is sent.
        first = await anext(relay)
        return Stream(_chain(first, relay), media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def _relay(
        self, call: Call, response: httpx.Response, wants_usage: bool
    ) -> AsyncIterator[bytes]:
        reader, usage, chunks, done = EventReader(), None, 0, False
        try:
            try:
                async for data in response.aiter_raw():
                    for event in reader.feed(data):
                        usage = event.usage or usage
                        chunks += event.has_content
                        done = done or event.done
                        if event.usage_only and not wants_usage:
                            continue
                        call.response_hash.update(event.raw)
                        yield event.raw
            except httpx.HTTPError:
                pass
            if not done:
                cut = _cut_event()
                call.response_hash.update(cut)
                yield cut
        finally:
            self.finish(call, usage, chunks, served=True)
            await response.aclose()


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _cut_event() -> bytes:
    error = {"error": {"message": "the upstream's stream broke off; you are charged for what "
                       "was streamed (or the upstream's usage, if it came)",
                       "type": "upstream_error", "code": "upstream_stream_cut"}}  # fmt: skip
    return b"data: " + _encoder.encode(error) + b"\n\n"
