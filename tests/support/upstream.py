"""A stand-in for a provider's OpenAI-compatible server (vLLM, llama.cpp server, Ollama...).

In production an endpoint points at the provider's own inference server; tests (and the
demo) point it at this one, which answers deterministically and can be told to fail:

    with Upstream(models=["llama-3.1-70b"]) as up:   # a thread serving 127.0.0.1:<port>
        up.base_url                                   # "http://127.0.0.1:<port>/v1"
        up.mode = Mode.ERROR_500                      # how the next requests are answered
        up.requests                                   # what it received

Routes (under /v1): `GET /models`, `POST /chat/completions`, `POST /completions`, each
non-streaming or streaming (SSE, `data: {...}` lines, then `data: [DONE]`; the usage
chunk, with empty `choices`, only when `stream_options.include_usage` is true, as OpenAI
and vLLM do).

Deterministic output: the prompt's tokens are its whitespace-separated words (of every
message's content, or of `prompt`; of a content given as parts, the words of its `text`
parts, and `image_tokens` for each `image_url` part, as a vision model meters an image
it decoded: a class setting, 765 by default, a 1024 x 1024 image in high detail under
OpenAI's tile rule); the completion is the words `w0 w1 ... w{n-1}`, n =
`max_tokens` (default 16) capped at `max_completion` (a class setting), one word per
stream chunk; `usage` reports exactly those counts (`cached_tokens` 0).

Failure modes (`Mode`): ERROR_500 (500 with an OpenAI error body, also for /models),
TIMEOUT (answers nothing for `hang_s` seconds), CUT_STREAM (streams half of the words,
then drops the connection with no usage and no [DONE]; non-streaming: drops the
connection before any answer), NO_USAGE (no usage chunk, no `usage` field), LYING_USAGE
(usage claims `lie_factor` times the completion tokens actually sent), REFUSE_400 (400
with an OpenAI error body, as vLLM refuses a prompt beyond the model's context).

Failure modes of `GET /models` alone (the health probe's; calls are answered as OK):
DEEP_MODELS (200, a JSON body of 20,000 nested arrays), SLOW_MODELS (200, then a byte
a second for `hang_s` seconds: a body that never ends within a probe's timeout),
BIG_MODELS (200, a JSON object padded to `big_bytes`). Failure modes of the answers
alone: BIG_ANSWER (non-streaming: a JSON answer, usage and all, padded to `big_bytes`;
streaming: after the first chunk, an event of `big_bytes` with no blank line in it
before its end, sent in pieces of 64 KiB), DEEP_ANSWER (non-streaming: 200, its `usage`
20,000 nested arrays).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Response, Stream

from tests.support.server import free_port


class Mode(Enum):
    OK = "ok"
    ERROR_500 = "error_500"
    TIMEOUT = "timeout"
    CUT_STREAM = "cut_stream"
    NO_USAGE = "no_usage"
    LYING_USAGE = "lying_usage"
    REFUSE_400 = "refuse_400"
    DEEP_MODELS = "deep_models"
    SLOW_MODELS = "slow_models"
    BIG_MODELS = "big_models"
    BIG_ANSWER = "big_answer"
    DEEP_ANSWER = "deep_answer"


class _Cut(Exception):
    """Raised mid-answer: uvicorn drops the connection."""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] = field(default_factory=dict)


def _content_tokens(content: Any, image_tokens: int) -> int:
    if not isinstance(content, list):
        return len(str(content or "").split())
    words = [str(p.get("text") or "") for p in content if p.get("type") == "text"]
    images = sum(1 for p in content if p.get("type") == "image_url")
    return len(" ".join(words).split()) + images * image_tokens


def _padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON, spaces before its closing brace making it `size` bytes."""
    raw = json.dumps(body).encode()
    return raw[:-1] + b" " * max(0, size - len(raw)) + b"}"


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _big_event(size: int) -> AsyncIterator[bytes]:
    """One SSE event of `size` bytes (a JSON object padded with spaces, no blank line
    before its end), sent in pieces of 64 KiB."""
    raw = b"data: " + _padded({"choices": []}, size - 8) + b"\n\n"
    for start in range(0, len(raw), 65_536):
        yield raw[start : start + 65_536]
        await asyncio.sleep(0)


async def _big_after_first(events: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """`events`, with an event of `size` bytes after the first."""
    yield await anext(events)
    async for piece in _big_event(size):
        yield piece
    async for event in events:
        yield event


async def _trickle(seconds: float) -> AsyncIterator[bytes]:
    """A JSON body opened and then a space a second: it never ends within a timeout."""
    yield b"{"
    for _ in range(int(seconds)):
        await asyncio.sleep(1)
        yield b" "


def prompt_words(body: dict[str, Any], image_tokens: int = 0) -> int:
    if "messages" in body:
        return sum(_content_tokens(m.get("content"), image_tokens) for m in body["messages"])
    prompt = body.get("prompt", "")
    text = " ".join(prompt) if isinstance(prompt, list) else str(prompt)
    return len(text.split())


class Upstream:
    max_completion = 64
    hang_s = 30.0
    lie_factor = 10
    #: The prompt tokens an `image_url` content part is metered (see the module).
    image_tokens = 765
    #: Seconds between stream chunks (0: one turn of the event loop).
    chunk_delay_s = 0.0
    #: Whether `requests` records what was received (off for a long benchmark run).
    keep_requests = True
    #: The size of BIG_MODELS' body and of BIG_ANSWER's answer or first event (bytes).
    big_bytes = 2 * 1024 * 1024

    def __init__(self, models: list[str] | None = None, host: str = "127.0.0.1") -> None:
        self.models = models or ["llama-3.1-70b"]
        self.host = host
        self.port = free_port(host)
        self.mode = Mode.OK
        self.requests: list[Received] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- answers -------------------------------------------------------------------

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        claimed = completion * self.lie_factor if self.mode is Mode.LYING_USAGE else completion
        return {
            "prompt_tokens": prompt, "completion_tokens": claimed,
            "total_tokens": prompt + claimed,
            "prompt_tokens_details": {"cached_tokens": 0},
        }  # fmt: skip

    def models_body(self) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "owned_by": "provider"} for m in self.models]
        return {"object": "list", "data": data}

    def odd_models(self) -> AsyncIterator[bytes] | None:
        """The body of `GET /models` in its failure modes (None: the usual one)."""
        if self.mode is Mode.DEEP_MODELS:
            return _pieces([b"[" * 20_000])  # within the probe's 64 KiB
        if self.mode is Mode.BIG_MODELS:
            return _pieces([_padded(self.models_body(), self.big_bytes)])
        if self.mode is Mode.SLOW_MODELS:
            return _trickle(self.hang_s)
        return None

    def _error(self) -> Response[Any]:
        body = {"error": {"message": "upstream failed", "type": "server_error", "code": None}}
        return Response(body, status_code=500)

    def _choice(self, chat: bool, text: str, *, delta: bool, finish: str | None) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        key = "delta" if delta else "message"
        return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    async def answer(self, request: Request[Any, Any, Any], chat: bool) -> Response[Any]:
        body = await request.json()
        if self.keep_requests:
            self.requests.append(
                Received(request.method, request.url.path, dict(request.headers), body)
            )
        if self.mode is Mode.ERROR_500:
            return self._error()
        if self.mode is Mode.REFUSE_400:  # as vLLM refuses a prompt beyond the context
            message = "This model's maximum context length is 8 tokens"
            refusal = {"error": {"message": message, "type": "BadRequestError", "code": 400}}
            return Response(refusal, status_code=400)
        if self.mode is Mode.TIMEOUT:
            await asyncio.sleep(self.hang_s)
        if self.mode is Mode.CUT_STREAM and not body.get("stream"):
            raise _Cut
        out = self.reply(body, chat)
        if isinstance(out, dict):
            if self.mode is Mode.BIG_ANSWER:
                return Response(_padded(out, self.big_bytes), media_type="application/json")
            if self.mode is Mode.DEEP_ANSWER:
                deep = b'{"usage": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
                return Response(deep, media_type="application/json")
            return Response(out)
        if self.mode is Mode.BIG_ANSWER:
            out = _big_after_first(out, self.big_bytes)
        return Stream(out, media_type="text/event-stream")

    def reply(self, body: dict[str, Any], chat: bool) -> dict[str, Any] | AsyncIterator[bytes]:
        """The answer to a completion request `body`: the JSON body, or (streaming) the
        SSE events (`tests.support.upstream_lean` serves these too)."""
        n = min(int(body.get("max_tokens") or 16), self.max_completion)
        words = [f"w{i}" for i in range(n)]
        prompt = prompt_words(body, self.image_tokens)
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": f"cmpl-{len(self.requests)}", "created": int(time.time()),
                "model": body.get("model")}  # fmt: skip
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._chunks(head, chat, words, prompt, include)
        out: dict[str, Any] = {
            **head, "object": kind,
            "choices": [self._choice(chat, " ".join(words), delta=False, finish="length")],
        }  # fmt: skip
        if self.mode is not Mode.NO_USAGE:
            out["usage"] = self._usage(prompt, n)
        return out

    async def _chunks(
        self, head: dict[str, Any], chat: bool, words: list[str], prompt: int, include: bool
    ) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        cut = len(words) // 2 if self.mode is Mode.CUT_STREAM else None
        for i, word in enumerate(words):
            if i == cut:
                raise _Cut
            finish = "length" if i == len(words) - 1 else None
            text = word if i == 0 else " " + word
            chunk = {**head, "object": kind,
                     "choices": [self._choice(chat, text, delta=True, finish=finish)]}  # fmt: skip
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await asyncio.sleep(self.chunk_delay_s)
        if include and self.mode is not Mode.NO_USAGE:
            usage = {**head, "object": kind, "choices": [],
                     "usage": self._usage(prompt, len(words))}  # fmt: skip
            yield b"data: " + json.dumps(usage).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    def app(self) -> Litestar:
        upstream = self

        @get("/v1/models")
        async def models(request: Request[Any, Any, Any]) -> Response[Any]:
            upstream.requests.append(Received("GET", "/v1/models", dict(request.headers)))
            if upstream.mode is Mode.ERROR_500:
                return upstream._error()
            odd = upstream.odd_models()
            if odd is not None:
                return Stream(odd, media_type="application/json")
            return Response(upstream.models_body())

        @post("/v1/chat/completions", status_code=200)
        async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
            return await upstream.answer(request, chat=True)

        @post("/v1/completions", status_code=200)
        async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
            return await upstream.answer(request, chat=False)

        return Litestar([models, chat, completions], logging_config=None)

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> Upstream:
        config = uvicorn.Config(
            self.app(), host=self.host, port=self.port, log_level="critical",
            access_log=False, lifespan="off", timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="upstream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the stand-in upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """`python -m tests.support.upstream --port N`: serve in the foreground (ops/bench)."""
    import argparse

    parser = argparse.ArgumentParser(description="the stand-in OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", default=None)
    args = parser.parse_args()
    upstream = Upstream(models=args.model)
    upstream.port = args.port
    upstream.keep_requests = False
    uvicorn.run(
        upstream.app(), host=upstream.host, port=args.port, log_level="warning",
        access_log=False, lifespan="off",
    )  # fmt: skip


if __name__ == "__main__":
    main()
