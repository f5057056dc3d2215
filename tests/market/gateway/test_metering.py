"""The gateway's pure rules: reservation and charge, routing, SSE reading, reservations."""

from __future__ import annotations

from collections.abc import Sequence

from market.gateway import metering, routing
from market.gateway.meter import Reservations
from market.gateway.sse import EventReader

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 10}


def test_plan_caps_the_completion_by_what_is_left() -> None:
    estimate = metering.prompt_estimate(BODY)
    assert estimate >= len("hello there") + metering.PROMPT_OVERHEAD
    full = metering.plan(BODY, 1_000)
    assert full == metering.Plan(estimate, 10) and full.reserved == estimate + 10
    assert metering.plan(BODY, estimate + 4) == metering.Plan(estimate, 4)
    assert metering.plan(BODY, estimate) is None  # not even one completion token
    no_cap = {k: v for k, v in BODY.items() if k != "max_tokens"}
    assert metering.plan(no_cap, 10**9) == metering.Plan(estimate, metering.DEFAULT_MAX_TOKENS)


def test_charge_never_exceeds_the_reservation() -> None:
    p = metering.Plan(prompt_cap=20, completion_cap=10)
    honest = metering.Usage(prompt_tokens=5, completion_tokens=7, cached_tokens=2)
    assert metering.charge(p, honest, 99) == metering.Charge(5, 7, 2, 0)
    lying = metering.Usage(prompt_tokens=500, completion_tokens=700, cached_tokens=900)
    assert metering.charge(p, lying, 0) == metering.Charge(20, 10, 20, 0)
    assert metering.charge(p, None, 4).tokens == 4  # no usage: the streamed chunks
    assert metering.charge(p, None, 40).tokens == 10


def test_usage_must_be_integers() -> None:
    assert metering.parse_usage({"prompt_tokens": 1, "completion_tokens": 2}) == metering.Usage(
        1, 2
    )
    for bad in ({"prompt_tokens": "1", "completion_tokens": 2},
                {"prompt_tokens": 1.0, "completion_tokens": 2},
                {"prompt_tokens": True, "completion_tokens": 2},
                {"prompt_tokens": -1, "completion_tokens": 2}, None, []):  # fmt: skip
        assert metering.parse_usage(bad) is None


def window(symbol: str, start_s: int, duration_s: int) -> routing.Window:
    return routing.Window(symbol, start_s * 1000, (start_s + duration_s) * 1000)


def test_routing_rule() -> None:
    now_ms = 10_000_000
    early = window("m/early", 9_000, 3_600)  # ends first
    late = window("m/late", 9_000, 7_200)
    future = window("m/future", 20_000, 3_600)
    past = window("m/past", 1_000, 3_600)
    live = routing.live([late, future, past, early], now_ms)
    assert live == ["m/early", "m/late"]

    held = {"m/early": {"p1": 5, "p2": 50}, "m/late": {"p1": 1_000}}
    eps = [routing.Endpoint("p1", "a", 2), routing.Endpoint("p2", "b", 1),
           routing.Endpoint("p2", "c", 1)]  # fmt: skip
    route = routing.choose(live, lambda s: held.get(s, {}), eps, {})
    assert route == routing.Route("m/early", "p2", eps[1], 50)  # most left on the first to end
    busy = routing.choose(live, lambda s: held.get(s, {}), eps, {("p2", "b"): 1})
    assert isinstance(busy, routing.Route) and busy.endpoint.endpoint_id == "c"
    full = {("p2", "b"): 1, ("p2", "c"): 1}
    assert routing.choose(live, lambda s: held.get(s, {}), eps, full).provider == "p1"  # type: ignore[union-attr]
    assert routing.choose(live, lambda s: {}, eps, {}) is routing.NoRoute.NO_ENTITLEMENT
    assert routing.choose(live, lambda s: held.get(s, {}), [], {}) is routing.NoRoute.NO_ENDPOINT
    all_full = {("p1", "a"): 2, **full}
    assert routing.choose(live, lambda s: held.get(s, {}), eps, all_full) is routing.NoRoute.BUSY


def test_a_small_leftover_on_the_first_window_neither_refuses_nor_cuts_a_call() -> None:
    """Found in review: the first pair with any entitlement was taken, so 50 tokens left
    on the window ending first refused (402) a call 1M tokens on the next one covered,
    and 100 left cut its completion short. Whole calls first, then the least."""
    live = ["m/early", "m/late"]
    held = {"m/early": {"p1": 50}, "m/late": {"p1": 1_000_000}}
    eps = [routing.Endpoint("p1", "a", 4)]
    whole = routing.choose(live, lambda s: held[s], eps, {}, lambda s: (120 + 256, 121))
    assert whole == routing.Route("m/late", "p1", eps[0], 1_000_000)
    held["m/late"]["p1"] = 200  # neither covers the whole call: the least, window first
    least = routing.choose(live, lambda s: held[s], eps, {}, lambda s: (120 + 256, 21))
    assert least == routing.Route("m/early", "p1", eps[0], 50)
    none = routing.choose(live, lambda s: held[s], eps, {}, lambda s: (10_000, 5_000))
    assert none is routing.NoRoute.NO_ENTITLEMENT


def test_sse_events_split_across_reads() -> None:
    reader = EventReader()
    first = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: {"choi'
    assert [e.has_content for e in reader.feed(first)] == [True]
    rest = (
        b'ces": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\r\n\r\ndata: [DONE]\n\n'
    )
    usage, done = reader.feed(rest)
    assert usage.usage_only and usage.usage == metering.Usage(1, 1) and not usage.has_content
    assert done.done and done.raw == b"data: [DONE]\n\n"


def test_sse_events_of_every_shape_say_whether_they_carry_content() -> None:
    cases = {
        b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n': False,
        b'data: {"choices": [{"delta": {"tool_calls": [{"id": "t"}]}}]}\n\n': True,
        b'data: {"choices": [{"delta": {"reasoning_content": "hm"}}]}\n\n': True,
        b'data: {"choices": [{"text": "a", "index": 0, "logprobs": null}]}\n\n': True,
        b'data: {"choices": [{"delta": null, "text": "a"}]}\n\n': True,
        b'data: {"choices": [{"delta": {"content": ["odd"]}}]}\n\n': True,  # not a string
        b'data: {"choices": null, "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n':
            False,
        b'data: [1, 2]\n\n': False,
        b'event: x\ndata: {"choices":\ndata: [{"delta": {"content": "b"}}]}\n\n': True,
        b": a comment\n\n": False,
    }  # fmt: skip
    events = EventReader().feed(b"".join(cases))
    assert [e.raw for e in events] == list(cases)
    assert [e.has_content for e in events] == list(cases.values())
    usage = events[6]
    assert usage.usage == metering.Usage(2, 3) and usage.usage_only


def test_an_sse_event_nested_too_deeply_is_passed_on_as_carrying_nothing() -> None:
    """msgspec raises RecursionError (not DecodeError) on it: it broke the relay."""
    deep = b"[" * 5_000 + b"]" * 5_000
    for data in (deep, b'{"choices": [], "x": ' + deep + b"}"):
        (event,) = EventReader().feed(b"data: " + data + b"\n\n")
        assert event.raw.endswith(b"\n\n")
        assert (event.usage, event.has_content, event.done) == (None, False, False)


def test_reservations() -> None:
    r = Reservations()
    g = ("b", "p", "i")
    r.reserve(g, "k", 30)
    assert r.left(g, 100) == 70 and r.key_left("k", 50) == 20 and r.key_left("k", None) is None
    r.finish(g, "k", 30, 12)  # 18 released, 12 charged but not yet in the ledger
    assert r.left(g, 100) == 88 and r.key_left("k", 50) == 38
    r.settled(g, 12)  # the ledger's balance now says 88
    assert r.left(g, 88) == 88 and r.outstanding == {}


async def test_the_meter_keeps_its_charges_while_the_exchange_reopens() -> None:
    """After a database outage the exchange reopens with a new sequencer: the meter finds
    it at each flush, and the calls metered meanwhile are charged once, by the new one."""
    from market.gateway.meter import Meter
    from market.sequencer.ops import Done, GatewayChargeOp
    from schemas.gateway import GatewayReceipt

    class Reopened:  # the sequencer after the reopen: records what it is asked to commit
        def __init__(self) -> None:
            self.committed: list[GatewayChargeOp] = []

        async def submit_all(self, ops: list[GatewayChargeOp]) -> list[Done[list[object]]]:
            self.committed.extend(ops)
            return [Done([]) for _ in ops]

    journaled: list[GatewayReceipt] = []

    async def journal(receipts: Sequence[GatewayReceipt]) -> None:  # durable at once
        journaled.extend(receipts)

    group = ("b", "p", "m/2030-01-01T00Z/1h")
    reservations = Reservations()
    reservations.reserve(group, "k", 10)
    reservations.finish(group, "k", 10, 7)
    current: list[object] = [None]  # reopening: no sequencer yet
    meter = Meter(lambda: current[0], reservations, 1.0, journal)  # type: ignore[arg-type,return-value]
    receipt = GatewayReceipt(
        receipt_id="rcp_1", key_id="k", buyer="b", provider="p", instrument=group[2],
        endpoint_id="e", model="m", prompt_tokens=3, completion_tokens=4, cached_tokens=0,
        reasoning_tokens=0, tokens=7, started_ms=1, ended_ms=2, request_sha256=b"\0" * 32,
        response_sha256=b"\1" * 32,
    )  # fmt: skip
    meter.add(receipt)
    await meter.written()
    assert journaled == [receipt]
    await meter.flush()
    assert meter.backlog == 1 and reservations.outstanding[group] == 7
    new = Reopened()
    current[0] = new
    await meter.flush()
    await meter.flush()
    assert [op.receipts for op in new.committed] == [(receipt,)]
    assert meter.backlog == 0 and reservations.outstanding.get(group, 0) == 0


def test_a_completion_weight_counts_completion_tokens_that_many_times() -> None:
    estimate = metering.prompt_estimate(BODY)
    p = metering.plan(BODY, 1_000, completion_weight=3)
    assert p == metering.Plan(estimate, 10, 3) and p.reserved == estimate + 30
    # What is left after the prompt estimate buys a third as many completion tokens.
    assert metering.plan(BODY, estimate + 20, completion_weight=3) == metering.Plan(estimate, 6, 3)
    assert metering.plan(BODY, estimate + 2, completion_weight=3) is None
    usage = metering.Usage(prompt_tokens=5, completion_tokens=7)
    assert metering.charge(p, usage, 0).tokens == 5 + 3 * 7
    assert metering.charge(p, None, 4).tokens == 12  # streamed chunks are completion tokens
    capped = metering.charge(p, metering.Usage(10**6, 10**6), 0)
    assert capped.tokens == p.reserved  # never more than was reserved
    assert metering.charge(metering.plan(BODY, 1_000), usage, 0).tokens == 12  # default 1


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


def _chat(*parts: dict[str, object]) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}]}


def test_an_image_part_reserves_the_most_a_high_detail_image_costs() -> None:
    # OpenAI's tile rule: within 2048 x 2048, the shorter side at most 768: 4 x 2 tiles
    assert metering.IMAGE_PART_TOKENS == 85 + 170 * 8 == 1_445
    text = _chat({"type": "text", "text": "what is this?"})
    one, two = _chat({"type": "text", "text": "what is this?"}, IMAGE), _chat(IMAGE, IMAGE)
    assert metering.prompt_estimate(one) >= metering.prompt_estimate(text) + 1_445
    assert metering.prompt_estimate(two) >= 2 * 1_445
    low = {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}
    assert metering.prompt_estimate(_chat(low)) >= 1_445  # an upstream may ignore `detail`
    assert metering.plan({**one, "max_tokens": 10}, 1_445) is None  # 402: not even the image


def test_audio_is_bounded_by_its_base64_data_and_other_parts_are_refused() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 4_000, "format": "mp3"}}
    assert metering.prompt_estimate(_chat(audio)) >= 4_000  # 1 token a base64 character
    bounded = _chat({"type": "text", "text": "a"}, IMAGE, audio, {"type": "refusal"})
    assert metering.unbounded_part(bounded) is None
    assert metering.unbounded_part({"model": "m", "prompt": "a"}) is None
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA"}}
    assert metering.unbounded_part(_chat(IMAGE, pdf)) == "file"
    assert metering.unbounded_part(_chat({"type": "video_url"})) == "video_url"
    assert metering.unbounded_part(_chat({"text": "no type"})) == "None"
