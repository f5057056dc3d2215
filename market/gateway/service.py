"""The gateway's call path: admit, route, reserve, forward, meter, commit, tail (`Gateway.call`).

One `Gateway` per process (`app.state.gateway`): in one process `local_gateway`, started
by `gateway_lifespan` after the exchange's lifespan, with its `desk.Desk` on the sequencer;
in a gateway process of `serve --workers N` (`ops.gateway.remote_gateway_lifespan`) with
the sequencer process's desk over NATS (`desk_remote`). A call:

1. is admitted by its key's rate (429 `rate_limited`, in `openai_api`) and its account's
   calls in flight (429 `too_many_calls_in_flight`); refused before anything is reserved
   if malformed (400), for a model its key does not allow (404 `model_not_found`), or
   with `n` other than 1 (400);
2. is routed (`routing`) on the sequencer's committed memory (`catalog`: the model's
   instruments, the buyer's entitlement by account key) and the endpoints' health, and
   reserves (`metering.plan`, `meter.Reservations`) in the same step of the event loop,
   by the desk (`desk`), where the sequencer is;
3. is forwarded to the endpoint's checked address (`ssrf.resolve` again, per call) with
   the endpoint's credential, `max_tokens` set to the completion cap and, streaming,
   `stream_options.include_usage` on; a stream's events go back as they arrive, but for
   its tail: the usage-only event (only if the buyer asked for it) and `[DONE]`, or the
   error event of a stream cut;
4. ends with its charge (`metering.charge`): the rest of the reservation is released and
   the receipt goes to the `Meter`'s receipt journal (`journal`); only once it is
   committed does the buyer get the tail (non-streaming: the whole body), and the charge
   follows through the sequencer. If it cannot be committed (the database refuses or is
   unreachable: 503), the meter writes it again until it commits, and the buyer
   gets, streaming, the error event `charge_unavailable` in place of the tail; not
   streaming, the body anyway (200) with `x-tokex-charge: pending`. A 503 there would
   withhold an answer the buyer is charged for, and an SDK retrying it (the OpenAI SDKs
   retry 503 by default) would be served and charged a second time.

An upstream error status, a timeout, a failure before the answer or a non-streamed answer
larger than `GatewayConfig.max_answer_bytes`: 502, nothing charged, no receipt. A stream
that breaks after it began, sends an event longer than `max_event_bytes` (cut there), or
whose buyer goes away: charged by the rule for a cut stream (`metering`), the receipt
filed without anyone waiting for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import msgspec
import yarl

from market.auth import RateLimiter
from market.gateway import endpoints as store
from market.gateway import metering, routing
from market.gateway.cache import TtlCache
from market.gateway.desk import Desk, DeskPort, drop
from market.gateway.errors import (
    ChargeUnavailable,
    ModelNotFound,
    NoEndpoint,
    TooManyInFlight,
    UnsupportedParameter,
    UpstreamFailed,
    UpstreamRefused,
)
from market.gateway.health import upstream_headers
from market.gateway.journal import WRITERS as JOURNAL_WRITERS
from market.gateway.journal import ReceiptJournal
from market.gateway.keys import KeyGrant
from market.gateway.meter import (
    CommitterSource,
    Group,
    JournalWrite,
    Meter,
    Reservations,
    SequencerSource,
)
from market.gateway.progress import Progress
from market.gateway.sse import MAX_EVENT_BYTES, UNDECODABLE, EventReader
from market.gateway.ssrf import EndpointRefused, Target, resolve
from market.signing import now_ms
from schemas.errors import DomainError
from schemas.gateway import MODEL_NAME_MAX_LENGTH, GatewayReceipt

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder()


class _Usage(msgspec.Struct):
    usage: Any = None  # an answer's other fields are skipped, not decoded


_answer_decoder = msgspec.json.Decoder(_Usage)
#: A model's name as a call may give it: no control characters (C0, DEL, C1; PostgreSQL
#: refuses a NUL), no longer than an endpoint may register (`schemas.gateway.ModelName`).
_MODEL_RE = re.compile(rf"[^\x00-\x1f\x7f-\x9f]{{1,{MODEL_NAME_MAX_LENGTH}}}")
_encoder = msgspec.json.Encoder()

#: The response header naming a call's receipt (`GET /v1/receipts`), sent with the first byte.
RECEIPT_HEADER = "x-tokex-receipt"
#: Sent (as `pending`) with a non-streamed body whose receipt could not be committed yet:
#: the meter retries it; the receipt is in `GET /v1/receipts` once it commits.
CHARGE_HEADER = "x-tokex-charge"
#: How long the gateway keeps what it read of its configuration (s), and how many entries.
#: Changes made in this process (a key revoked, an endpoint registered, deleted, probed)
#: clear it at once; others (a row edited by hand) are seen within this.
ENDPOINTS_CACHE_S = 1.0
GRANTS_CACHE_S = 2.0
TARGETS_CACHE_S = 5.0
CACHE_ENTRIES = 10_000
#: The most of a non-streamed answer the gateway reads (`TOKEX_GATEWAY_MAX_ANSWER_BYTES`).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The gateway's settings (`ops.gateway` fills them from `ops.config.Settings`)."""

    allow_hosts: frozenset[str]
    #: The longest a failed charge waits before it is submitted again (s).
    flush_s: float = 1.0
    #: How often streaming calls' progress is recorded (s; `market.gateway.progress`).
    progress_s: float = 0.25
    upstream_timeout_s: float = 60.0
    #: The longest a connection to an upstream idles before it is closed rather than
    #: reused (s; below the upstream's own idle timeout, see `upstream_session`).
    upstream_idle_s: float = 2.0
    #: Calls in flight per buying account (the gateway's memory per account is bounded
    #: by it): more get 429 `too_many_calls_in_flight`.
    max_in_flight: int = 256
    #: Calls per second per inference key, on average and in a burst (429 `rate_limited`).
    rate_limit: float = 100.0
    rate_burst: int = 200
    #: The most of a non-streamed answer read (bytes): a larger one is a 502, nothing
    #: charged. And of one event of a stream (`sse.EventReader`): a longer one cuts it.
    max_answer_bytes: int = MAX_ANSWER_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    #: Receipt journal commits in flight at once (`market.gateway.journal`).
    receipt_writers: int = JOURNAL_WRITERS


@dataclass(frozen=True, slots=True)
class Answer:
    """A served call's answer, for whichever path sends it (`openai_asgi`, or Litestar's
    routes in `openai_api`): a non-streamed body whole, or a stream's SSE bytes (its
    first event already read; closing the iterator early ends the call).
    `charge_pending`: the body's charge is not committed yet (`CHARGE_HEADER`)."""

    receipt_id: str
    body: bytes = b""
    events: AsyncGenerator[bytes, None] | None = None
    charge_pending: bool = False


@dataclass(slots=True)
class Call:
    """One call in flight, from its reservation to its receipt."""

    grant: KeyGrant
    group: Group
    route: routing.Route
    row: store.EndpointRow
    model: str
    plan: metering.Plan
    started_ms: int
    receipt_id: str
    request_bytes: bytes = b""
    response_hash: Any = field(default_factory=hashlib.sha256)
    finished: bool = False
    #: A stream's completion chunks passed on and the upstream's usage, so far (read by
    #: `progress.Progress` for its marks).
    chunks: int = 0
    usage: metering.Usage | None = None


#: The upstream's statuses that refuse the request itself (`UpstreamRefused`).
REFUSALS = frozenset({400, 413, 422})
#: The most of an upstream's refusal read, and of its message passed on.
REFUSAL_READ_BYTES = 64 * 1024
REFUSAL_MESSAGE_CHARS = 500


async def _refusal_message(response: aiohttp.ClientResponse) -> str:
    """The upstream's own message of a refusal (OpenAI's shape, else its text), trimmed."""
    try:
        raw = await response.content.read(REFUSAL_READ_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    finally:
        response.close()
    message: Any = None
    try:
        decoded = msgspec.json.decode(raw)
        if isinstance(decoded, dict):
            error = decoded.get("error")
            message = error.get("message") if isinstance(error, dict) else decoded.get("detail")
    except UNDECODABLE:
        message = raw.decode("utf-8", "replace")
    text = " ".join(str(message or "").split())[:REFUSAL_MESSAGE_CHARS]
    return f"the upstream refused the request ({response.status}): {text or 'no reason given'}"


#: How long a stream whose buyer hung up is read on for its usage (s; `_drain_soon`).
DRAIN_S = 30.0
NESTED_TOO_DEEPLY = "the body is not JSON the gateway reads: it is nested too deeply"
#: OpenAI's (and vLLM's) `max_tokens` of a legacy completion that gives none.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def parse_body(raw: bytes, path: str = "/chat/completions") -> dict[str, Any]:
    """The call's body, checked as far as the gateway reads it (400 otherwise): what it
    does not read goes to the upstream as it came, for the upstream to judge. A legacy
    completion (`path` /completions) takes one prompt a call (several in a list would
    each be completed, and paid as one), and 16 tokens when it names no cap, as OpenAI's
    and vLLM's do (not the gateway's default for chat, which would send 4,096)."""
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UnsupportedParameter(f"the body is not JSON: {exc}", code="invalid_request") from None
    except RecursionError:  # msgspec's answer to arrays or objects nested too deeply
        raise UnsupportedParameter(NESTED_TOO_DEEPLY, code="invalid_request") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise UnsupportedParameter(
            "the body must be an object with a `model`", code="invalid_request"
        )
    if not _MODEL_RE.fullmatch(body["model"]):  # it is looked up in the database
        raise UnsupportedParameter(
            f"`model` must be a name of 1 to {MODEL_NAME_MAX_LENGTH} characters without "
            "control characters",
            code="invalid_request",
        )
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise UnsupportedParameter("stream_options must be an object", code="invalid_request")
    if body.get("n", 1) != 1 or body.get("best_of", 1) != 1:
        raise UnsupportedParameter("only n = 1 (and best_of = 1) is supported")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise UnsupportedParameter(f"{name} must be a positive integer", code="invalid_request")
    unbounded = metering.unbounded_part(body)
    if unbounded is not None:
        raise UnsupportedParameter(
            f"a content part of type `{unbounded}` is not supported: its tokens cannot be "
            "bounded before the call, and the gateway reserves them before forwarding it "
            "(text, image_url and input_audio parts are)"
        )
    if path == "/completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) > 1 and isinstance(prompt[0], str | list):
            raise UnsupportedParameter("only one prompt a call is supported (not a list)")
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = COMPLETIONS_DEFAULT_MAX_TOKENS
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
    """The call path of one process (see the module). Its reservations are decided by
    `desk` (`desk.Desk` here, or the sequencer process's over NATS), its receipts are
    charged through `exchange` (the sequencer, or that desk); `reservations`: the desk's
    when it is in this process (the meter settles them at each commit), else None."""

    def __init__(
        self, pool: asyncpg.Pool, config: GatewayConfig, desk: DeskPort,
        exchange: CommitterSource, journal: JournalWrite, *,
        reservations: Reservations | None = None, instance_id: str = "",
    ) -> None:  # fmt: skip
        self.pool = pool
        self.config = config
        self.allow_hosts = config.allow_hosts
        self.desk = desk
        self.instance_id = instance_id
        self.meter = Meter(exchange, reservations, config.flush_s, journal,
                           config.receipt_writers)  # fmt: skip
        self.progress = Progress(config.progress_s, self.meter.wake, instance_id)
        self.meter.rider = self.progress
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        #: a model -> its healthy endpoints; a secret's hash -> its key's grant; a base
        #: URL -> its checked address (`ssrf.resolve`)
        self.endpoints: TtlCache[str, list[store.EndpointRow]] = TtlCache(
            ENDPOINTS_CACHE_S, CACHE_ENTRIES
        )
        self.grants: TtlCache[bytes, KeyGrant] = TtlCache(GRANTS_CACHE_S, CACHE_ENTRIES)
        self.targets: TtlCache[str, Target] = TtlCache(TARGETS_CACHE_S, CACHE_ENTRIES)
        #: calls in flight per buying account in this process (entries only while there are)
        self.account_in_flight: dict[str, int] = {}
        self.http = upstream_session(config.upstream_timeout_s, config.upstream_idle_s)
        self._urls: dict[tuple[Target, str], yarl.URL] = {}
        #: streams read on after their buyer hung up, for their usage (`_drain_soon`)
        self._draining: set[asyncio.Task[None]] = set()
        #: the receipt journal of this process, if it is here (closed after the meter)
        self.receipt_journal: ReceiptJournal | None = None

    async def close(self) -> None:
        for task in list(self._draining):  # charged by what they have: before the meter closes
            task.cancel()
        if self._draining:
            await asyncio.wait(list(self._draining))
        await self.progress.close()
        await self.meter.close()
        if self.receipt_journal is not None:
            await self.receipt_journal.close()
        await self.http.close()

    # -- which models, which route -----------------------------------------------------

    async def models(self, grant: KeyGrant) -> list[dict[str, Any]]:
        """The models this key may use now: live instruments it holds entitlement on."""
        return await self.desk.models(grant.buyer, grant.models)

    def _admit(self, grant: KeyGrant) -> None:
        if self.account_in_flight.get(grant.buyer, 0) >= self.config.max_in_flight:
            raise TooManyInFlight(
                f"your account has {self.config.max_in_flight} calls in flight, the most "
                "the gateway takes; retry when one ends"
            )

    def endpoints_changed(self) -> None:
        """An endpoint was registered, deleted or probed: read them again."""
        self.endpoints.clear()
        self.targets.clear()

    async def healthy_endpoints(self, model: str) -> list[store.EndpointRow]:
        async def load() -> list[store.EndpointRow]:
            async with self.pool.acquire() as conn:
                return await store.healthy_endpoints(conn, model)

        # only models that have endpoints are kept: the cache is bounded by them
        return await self.endpoints.get_or_load(model, load)

    async def open_call(self, grant: KeyGrant, body: dict[str, Any]) -> Call:
        """Route the call and reserve for it (or raise 402/404/429/503)."""
        model: str = body["model"]
        if not grant.allows(model):
            raise ModelNotFound(f"this key may not use model {model!r}")
        self._admit(grant)
        rows = await self.healthy_endpoints(model)
        endpoints = [routing.Endpoint(r.provider, r.endpoint_id, r.max_concurrency) for r in rows]
        receipt_id = "rcp_" + secrets.token_hex(12)
        buyer = grant.buyer
        self._admit(grant)  # and take the place at once: the desk may be awaited
        self.account_in_flight[buyer] = self.account_in_flight.get(buyer, 0) + 1
        try:
            route, plan = await self.desk.reserve(
                receipt_id, buyer, grant.key_id, grant.token_budget, model,
                metering.demand(body), endpoints,
            )  # fmt: skip
        except BaseException:
            drop(self.account_in_flight, buyer)
            raise
        slot = (route.provider, route.endpoint.endpoint_id)
        row = next(r for r in rows if (r.provider, r.endpoint_id) == slot)
        group = (buyer, route.provider, route.instrument)
        return Call(grant, group, route, row, model, plan, now_ms(), receipt_id)

    def finish(
        self, call: Call, usage: metering.Usage | None, chunks: int, *, served: bool
    ) -> asyncio.Future[None] | None:
        """End a call once: charge it (if it was served), release the rest, file its
        receipt. The future is done once the receipt is committed (None: not served)."""
        if call.finished:
            return None
        call.finished = True
        recorded = self.progress.untrack(call)
        drop(self.account_in_flight, call.grant.buyer)
        charged = metering.charge(call.plan, usage, chunks) if served else metering.NOTHING
        slot = (call.route.provider, call.route.endpoint.endpoint_id)
        self.desk.ended(call.receipt_id, call.group, call.grant.key_id, slot,
                        call.plan.reserved, charged.tokens, served=served)  # fmt: skip
        if not served:
            if recorded:
                self.meter.forget([call.receipt_id])
            return None
        buyer, provider, instrument = call.group
        return self.meter.charge(GatewayReceipt(
            receipt_id=call.receipt_id, key_id=call.grant.key_id, buyer=buyer,
            provider=provider, instrument=instrument, endpoint_id=call.route.endpoint.endpoint_id,
            model=call.model, prompt_tokens=charged.prompt_tokens,
            completion_tokens=charged.completion_tokens, cached_tokens=charged.cached_tokens,
            reasoning_tokens=charged.reasoning_tokens, tokens=charged.tokens,
            started_ms=call.started_ms, ended_ms=max(call.started_ms, now_ms()),
            request_sha256=hashlib.sha256(call.request_bytes).digest(),
            response_sha256=call.response_hash.digest(),
        ), recorded=recorded)  # fmt: skip

    async def _charged(
        self, call: Call, usage: metering.Usage | None, chunks: int
    ) -> ChargeUnavailable | None:
        """Finish a served call and wait until its receipt is durable (the receipt
        journal's commit): None once it is, else why not now (the meter writes it again
        until it is, then charges it). A buyer gone meanwhile does not cancel the commit."""
        future = self.finish(call, usage, chunks, served=True)
        if future is None:
            return None
        try:
            await asyncio.shield(future)
        except DomainError as exc:
            log.warning("gateway: call %s served, its charge pending (%s)", call.receipt_id,
                        exc.code)  # fmt: skip
            return ChargeUnavailable(
                "your call was served but its charge could not be committed now "
                f"({exc.code}); it is retried, and you are charged by the rule for a cut "
                "call: the upstream's usage, else the chunks streamed"
            )
        return None

    # -- forwarding ----------------------------------------------------------------------

    async def _target(self, call: Call) -> Target:
        target = self.targets.get(call.row.base_url)
        if target is not None:
            return target
        try:
            target = await resolve(call.row.base_url, self.allow_hosts)
        except EndpointRefused as exc:
            raise NoEndpoint(f"the endpoint is unusable now: {exc.code}") from None
        self.targets.put(call.row.base_url, target)
        return target

    async def call(self, grant: KeyGrant, path: str, raw: bytes) -> Answer:
        body = parse_body(raw, path)
        call = await self.open_call(grant, body)
        try:
            target = await self._target(call)
            call.request_bytes = upstream_body(body, call.plan)
            response = await self._send(target, call, path)
            if body.get("stream"):
                return await self._stream(call, response, wants_usage=_wants_usage(body))
            return await self._once(call, response)
        except BaseException:
            self.finish(call, None, 0, served=False)
            raise

    async def _send(self, target: Target, call: Call, path: str) -> aiohttp.ClientResponse:
        """POST to the endpoint's checked address (its Host, TLS name and credential)."""
        headers = upstream_headers(target, call.row.credential)
        headers["Content-Type"] = "application/json"
        url = self._urls.get((target, path))
        if url is None:  # parsed once per address and path, not on every call
            if len(self._urls) >= CACHE_ENTRIES:
                self._urls.clear()
            url = self._urls[target, path] = yarl.URL(target.url + path)
        try:
            response = await self.http.post(
                url, data=call.request_bytes, headers=headers,
                allow_redirects=False, server_hostname=target.server_hostname,
            )  # fmt: skip
        except TimeoutError:
            raise UpstreamFailed(
                "the upstream timed out; nothing was charged", code="upstream_timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(
                f"the upstream failed ({type(exc).__name__}); nothing was charged"
            ) from None
        if not 200 <= response.status < 300:
            if response.status in REFUSALS:
                raise UpstreamRefused(await _refusal_message(response))
            response.close()
            raise UpstreamFailed(f"the upstream answered {response.status}; nothing was charged")
        return response

    async def _once(self, call: Call, response: aiohttp.ClientResponse) -> Answer:
        try:
            content = await _read_capped(response, self.config.max_answer_bytes)
        except TimeoutError:
            raise UpstreamFailed(
                "the upstream timed out; nothing was charged", code="upstream_timeout"
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(
                f"the upstream failed ({type(exc).__name__}); nothing was charged"
            ) from None
        finally:
            response.release()
        try:
            usage = metering.parse_usage(_answer_decoder.decode(content).usage)
        except msgspec.ValidationError:  # JSON, but not an object: no usage
            usage = None
        except UNDECODABLE:
            raise UpstreamFailed("the upstream's answer is not JSON; nothing was charged") from None
        call.response_hash.update(content)
        # The body goes once its receipt is committed, or (the charge filed for retry) with
        # `x-tokex-charge: pending`: never withheld from a buyer who is charged for it.
        pending = await self._charged(call, usage, 0)
        return Answer(call.receipt_id, body=content, charge_pending=pending is not None)

    async def _stream(
        self, call: Call, response: aiohttp.ClientResponse, *, wants_usage: bool
    ) -> Answer:
        self.progress.track(call)
        relay = self._relay(call, response, wants_usage)
        # Started here, not when the response is first sent: a started generator's cleanup
        # (which ends the call) runs even if the buyer is gone before anything is sent.
        first = await anext(relay)
        return Answer(call.receipt_id, events=_chain(first, relay))

    async def _relay(
        self, call: Call, response: aiohttp.ClientResponse, wants_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        """The stream's events as they come (those of one read from the upstream as one
        piece), but its tail ([DONE] and the usage-only event, or the error of a cut), as
        the last piece, only once the call's receipt is committed. The response hash
        covers the bytes passed on, in order, the tail included. The usage and the chunks
        passed on live on the call, where its progress marks read them."""
        reader, done = EventReader(self.config.max_event_bytes), False
        tail: list[bytes] = []
        try:
            try:
                async for data in response.content.iter_any():
                    out: list[bytes] = []
                    for event in reader.feed(data):
                        call.usage = event.usage or call.usage
                        call.chunks += event.has_content
                        done = done or event.done
                        if event.usage_only and not wants_usage:
                            continue
                        if tail or event.done or event.usage_only:
                            tail.append(event.raw)
                        else:
                            out.append(event.raw)
                    if out:
                        piece = out[0] if len(out) == 1 else b"".join(out)
                        call.response_hash.update(piece)
                        yield piece
                    if reader.too_long:  # cut there: nothing more is read
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            if not done:
                tail.append(_cut_event(reader.too_long, self.config.max_event_bytes))
            last = b"".join(tail)
            call.response_hash.update(last)
            pending = await self._charged(call, call.usage, call.chunks)
            if pending is not None:  # the content is delivered: an error in place of the tail
                last = _error_event(pending.message, "service_unavailable", pending.code)
            yield last  # one piece
        finally:
            if not call.finished and call.usage is None and not response.content.at_eof():
                self._drain_soon(call, response, reader)  # the buyer hung up mid-stream
            else:
                self.finish(call, call.usage, call.chunks, served=True)
                if response.content.at_eof():
                    response.release()  # the connection goes back to the pool
                else:
                    response.close()

    def _drain_soon(
        self, call: Call, response: aiohttp.ClientResponse, reader: EventReader
    ) -> None:
        """The buyer hung up before the stream's usage came: the upstream has done the
        prompt's work, and goes on to the call's cap whatever the buyer does. Read the rest
        (not passed on, not in the response hash) for its usage, at most `DRAIN_S`, and
        charge that, as for a call read to its end; only if none comes, the cut-call rule
        (the chunks passed on, no prompt)."""
        task = asyncio.create_task(self._drain(call, response, reader), name="gateway-drain")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(
        self, call: Call, response: aiohttp.ClientResponse, reader: EventReader
    ) -> None:
        try:
            async with asyncio.timeout(DRAIN_S):
                async for data in response.content.iter_any():
                    for event in reader.feed(data):
                        call.usage = event.usage or call.usage
                    if call.usage is not None or reader.too_long:
                        break
        except (aiohttp.ClientError, TimeoutError):
            pass
        finally:
            self.finish(call, call.usage, call.chunks, served=True)
            response.close()


def local_gateway(
    pool: asyncpg.Pool, sequencer: SequencerSource, config: GatewayConfig, instance_id: str = ""
) -> tuple[Gateway, Desk]:
    """The gateway of one process (`tokex serve`): its desk here, on the sequencer, its
    receipt journal on `pool`."""
    desk = Desk(sequencer, pool)
    journal = ReceiptJournal(pool, config.receipt_writers)
    gateway = Gateway(pool, config, desk, sequencer, journal.bound(instance_id),
                      reservations=desk.reservations, instance_id=instance_id)  # fmt: skip
    gateway.meter.on_commit = desk.refresh
    gateway.receipt_journal = journal
    return gateway, desk


def upstream_session(timeout_s: float, idle_s: float) -> aiohttp.ClientSession:
    """The gateway's client to providers' endpoints: keep-alive connections reused per
    address (aiohttp's pool finds a free one in O(1); httpx's looked at every connection
    of the pool on every request, a millisecond and more of CPU a call at 64 in flight).
    `timeout_s` bounds the connection and each read; a whole call may stream for longer.
    No redirects (`allow_redirects=False` per request), no proxies from the environment,
    no cookies (an upstream's cookies are not kept, nor sent to it or to another).

    A connection idle for longer than `idle_s` is closed, not reused. An upstream closes
    the connections idle for its own timeout (5 s in uvicorn, so vLLM and SGLang, and in
    llama.cpp's server); a request sent on one just as it does is reset unanswered
    (aiohttp's `ClientOSError`: a 502 for the buyer), and the POST of a call is not
    safe to send again (the upstream may have begun it). Reusing only connections idle
    for less than the upstream's timeout keeps requests off the ones it is closing."""
    timeout = aiohttp.ClientTimeout(
        total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
    )
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=idle_s)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )  # fmt: skip


async def _chain(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:  # closed early (the buyer went away): end the call now, not at collection
        await rest.aclose()


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _error_event(message: str, kind: str, code: str) -> bytes:
    error = {"error": {"message": message, "type": kind, "code": code}}
    return b"data: " + _encoder.encode(error) + b"\n\n"


def _cut_event(too_long: bool = False, max_event_bytes: int = 0) -> bytes:
    """The error event of a stream cut: it broke off, or sent an event longer than
    `max_event_bytes` (`too_long`), where the gateway cut it; either way the cut-call
    rule (`metering.charge`)."""
    why = (f"sent an event longer than {max_event_bytes} bytes, and was cut there"
           if too_long else "broke off")  # fmt: skip
    return _error_event(
        f"the upstream's stream {why}; you are charged for what was streamed (or the "
        "upstream's usage, if it came)", "upstream_error", "upstream_stream_cut",
    )  # fmt: skip


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The answer's body, or `UpstreamFailed` (502, nothing charged) once it is longer
    than `cap` bytes (not read further: the connection is closed, not reused)."""
    if response.content_length is not None and response.content_length > cap:
        response.close()
        raise UpstreamFailed(_too_large(cap))
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > cap:
            response.close()
            raise UpstreamFailed(_too_large(cap))
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(cap: int) -> str:
    return f"the upstream's answer is larger than {cap} bytes; nothing was charged"
