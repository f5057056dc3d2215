"""What a call reserves and what it is charged (pure: no I/O, no clock).

Reservation, before the call is forwarded (`plan`):

* the prompt estimate is an upper bound of its tokens: the UTF-8 bytes of the JSON of
  its `messages` (or `prompt`) and `tools`/`functions`, plus `PROMPT_OVERHEAD` for the
  chat template (a token is at least one byte of text), plus an allowance for each
  content part of a chat message that is not text (`media_allowance`), whose tokens
  its bytes do not bound:
  - an `image_url` part: `IMAGE_PART_TOKENS`, 1,445, the most an image costs in high
    detail under OpenAI's tile rule (scaled to fit 2,048 x 2,048, then its shorter side
    to at most 768: at most 4 x 2 tiles of 512 px, 170 tokens each, + 85), since its
    size is not known before it is decoded; whatever its `detail` (an upstream may
    ignore it). An upstream that meters an image more than that (another tokenizer,
    OpenAI's gpt-4o-mini multiplier) is paid the allowance: the charge is capped at the
    reservation (below);
  - an `input_audio` part: its base64 data, counted in the bytes already (1 token a
    character; audio is metered at about 10 tokens (OpenAI) to 50 (Whisper-style
    encoders) a second, and the least data a second the accepted formats carry, mp3
    at 8 kbit/s, is 1,334 base64 characters): nothing more;
  - a `text` or `refusal` part: its bytes, as any text;
  - any other part (`file`, whose pages' text and images are known only once read, or
    a type the gateway does not know): not bounded, so the call is refused before any
    reservation, 400 `unsupported_parameter` (`unbounded_part`, `service.parse_body`);
* the completion cap is the call's `max_tokens` (or `max_completion_tokens`; absent:
  `DEFAULT_MAX_TOKENS`), lowered to what the entitlement has left after the prompt
  estimate, divided by the instrument's `completion_weight` (rounded down); the upstream
  is sent that cap as `max_tokens`, so it cannot produce more;
* reserved = prompt estimate + weight x completion cap. Nothing left for at least one
  completion token: 402 `insufficient_entitlement`.

Charge, once the call ends (`charge`), never more than was reserved:

* the upstream reported `usage`: prompt tokens capped at the estimate, completion tokens
  capped at the completion cap (a usage that claims more is not believed beyond them);
  the tokens charged are prompt + weight x completion, the weight being the instrument's
  `completion_weight` term (default 1: both count alike, OpenAI's `total_tokens`);
* the buyer hung up mid-stream: the gateway reads the rest of the stream (not passed
  on) for its usage, at most `service.DRAIN_S`, and charges that as above: the upstream
  did the prompt's work and goes on to the cap whatever the buyer does;
* no usage arrived (the upstream sent none, the stream was cut, or none came within
  `DRAIN_S` of a hang-up): the completion chunks the gateway passed on, one token each
  (servers stream a token per chunk), and no prompt tokens: an upstream that will not
  say what it served is paid only for what the gateway saw. A non-streamed answer
  without usage is charged nothing;
* the upstream failed (an error status, a timeout or a cut before any chunk): nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

PROMPT_OVERHEAD = 16
DEFAULT_MAX_TOKENS = 4096
#: An image's allowance: OpenAI's high-detail tile rule at its most, 8 tiles + 85.
IMAGE_PART_TOKENS = 85 + 170 * 8
_BYTES_BOUND = frozenset({"text", "refusal", "input_audio"})
#: The most of an unsupported part's `type` named in the 400 that refuses it.
UNBOUNDED_TYPE_CHARS = 64
_PROMPT_FIELDS = ("messages", "prompt", "tools", "functions")
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Plan:
    prompt_cap: int
    completion_cap: int
    completion_weight: int = 1

    @property
    def reserved(self) -> int:
        return self.prompt_cap + self.completion_weight * self.completion_cap


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Charge:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    completion_weight: int = 1

    @property
    def tokens(self) -> int:
        """What the call is charged: prompt + weight x completion tokens."""
        return self.prompt_tokens + self.completion_weight * self.completion_tokens


NOTHING = Charge(0, 0, 0, 0)


def _part_types(body: dict[str, Any]) -> Iterator[object]:
    """The `type` of each object part of the chat messages' contents given as lists."""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict):
                yield part.get("type")


def media_allowance(body: dict[str, Any]) -> int:
    """The tokens a call's non-text content parts may cost beyond their bytes (see the
    module): `IMAGE_PART_TOKENS` an image."""
    return IMAGE_PART_TOKENS * sum(1 for t in _part_types(body) if t == "image_url")


def unbounded_part(body: dict[str, Any]) -> str | None:
    """The type of the first content part whose tokens the gateway cannot bound before
    the call (see the module), None if there is none."""
    for kind in _part_types(body):
        if not isinstance(kind, str):  # a list or an object is not hashable: no set lookup
            return str(kind)[:UNBOUNDED_TYPE_CHARS]
        if kind != "image_url" and kind not in _BYTES_BOUND:
            return kind[:UNBOUNDED_TYPE_CHARS]
    return None


def prompt_estimate(body: dict[str, Any]) -> int:
    parts = [body.get(name) for name in _PROMPT_FIELDS]
    return len(_encoder.encode(parts)) + PROMPT_OVERHEAD + media_allowance(body)


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """The call's own cap (`max_tokens`, else `max_completion_tokens`), None if absent."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None:
            return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Demand:
    """What a call asks for, read from its body before anything is known of the
    entitlement: its prompt estimate and its own cap (None: absent). All a reservation
    needs of the body (`plan_of`), so it travels where the reservation is decided."""

    prompt_estimate: int
    max_tokens: int | None


def demand(body: dict[str, Any]) -> Demand:
    return Demand(prompt_estimate(body), requested_max_tokens(body))


def plan(body: dict[str, Any], available: int, completion_weight: int = 1) -> Plan | None:
    """The reservation of a call, or None if `available` tokens cannot cover its prompt
    estimate and one (weighted) completion token."""
    return plan_of(demand(body), available, completion_weight)


def plan_of(wants: Demand, available: int, completion_weight: int = 1) -> Plan | None:
    """`plan`, of a call's `Demand`."""
    estimate, wanted = wants.prompt_estimate, wants.max_tokens
    room = (available - estimate) // completion_weight
    cap = min(DEFAULT_MAX_TOKENS if wanted is None else wanted, room)
    if cap < 1:
        return None
    return Plan(prompt_cap=estimate, completion_cap=cap, completion_weight=completion_weight)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62:
        return value
    return None


def parse_usage(value: Any) -> Usage | None:
    """OpenAI's `usage` object, or None if absent or malformed (counts must be integers)."""
    if not isinstance(value, dict):
        return None
    prompt, completion = _count(value.get("prompt_tokens")), _count(value.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    details = value.get("prompt_tokens_details") or {}
    done = value.get("completion_tokens_details") or {}
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    reasoning = _count(done.get("reasoning_tokens")) if isinstance(done, dict) else None
    return Usage(prompt, completion, cached or 0, reasoning or 0)


def charge(p: Plan, usage: Usage | None, streamed_chunks: int) -> Charge:
    """What the call is charged (see the module docstring)."""
    w = p.completion_weight
    if usage is None:
        return Charge(0, min(streamed_chunks, p.completion_cap), 0, 0, w)
    prompt = min(usage.prompt_tokens, p.prompt_cap)
    completion = min(usage.completion_tokens, p.completion_cap)
    return Charge(
        prompt,
        completion,
        min(usage.cached_tokens, prompt),
        min(usage.reasoning_tokens, completion),
        w,
    )
