"""The sequencer's commands, answers and market data as bytes, for NATS (MessagePack).

A command message carries ops of one type (`PlaceOp`, ...): the type is the last
token of its subject (`tokex.cmd.PlaceOp`), the payload a MessagePack array of
them, so it decodes straight into that dataclass with no tag. The answer is an
`Answer[T]`: one `Reply` per op (its value, typed by the op's `Op[T]`, or its
error), or one error for the whole request (the queue had no room for it: 503
`exchange_busy`). An error travels as its class (module and name), code, kind and
message, and comes back as that same class where this process has it loaded, so
`ops.errors` maps it exactly as in one process (status, Retry-After).

Market data: one message per committed batch, `MarketDataBatch` (its events in
order and its fill views by order id), in commit order on one subject, numbered; a
message with `resync` set (no events) says the sequencer rebuilt its memory, so every
hub must load the books again.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from market.sequencer.ops import AnyOp, Done, Failed, Op, Outcome, type_argument
from schemas.errors import DomainError, ErrorKind
from schemas.market import Event
from schemas.trading import FillView

T = TypeVar("T")

#: Subjects: commands (`tokex.cmd.<op type>`), queries, market data.
COMMAND_PREFIX = "tokex.cmd."
QUERY_SUBJECT = "tokex.query"
MARKET_DATA_SUBJECT = "tokex.md"
#: The queue group the sequencer process answers in (one member answers each request).
SEQUENCER_QUEUE = "sequencer"

#: Every op type by name (the subject's last token).
OP_TYPES: dict[str, type[Op[Any]]] = {cls.__name__: cls for cls in typing.get_args(AnyOp)}


class RemoteError(DomainError):
    """An error from the sequencer process whose class this process does not have."""


class BadCommand(DomainError):
    """A message the sequencer process cannot read (an op type or a field it does not
    know: a gateway of another version)."""

    code = "bad_command"
    kind = ErrorKind.INVALID


class ErrorWire(msgspec.Struct, array_like=True, frozen=True):
    module: str
    name: str
    code: str
    kind: str
    message: str

    @classmethod
    def of(cls, error: DomainError) -> ErrorWire:
        kind = type(error)
        return cls(kind.__module__, kind.__qualname__, error.code, error.kind.value, error.message)

    def error(self) -> DomainError:
        """The error again: of its own class if this process has it, else `RemoteError`."""
        kind = getattr(sys.modules.get(self.module), self.name, None)
        if isinstance(kind, type) and issubclass(kind, DomainError):
            error = kind.__new__(kind)
            DomainError.__init__(error, self.message, code=self.code)
        else:
            error = RemoteError(self.message, code=self.code)
        if error.kind.value != self.kind:
            error.kind = ErrorKind(self.kind)
        return error


class Reply(msgspec.Struct, Generic[T], array_like=True, omit_defaults=True):
    value: T | None = None
    error: ErrorWire | None = None


class Answer(msgspec.Struct, Generic[T], array_like=True, omit_defaults=True):
    replies: list[Reply[T]] = []
    error: ErrorWire | None = None


class MarketDataBatch(msgspec.Struct, array_like=True):
    events: list[Event]
    fills: dict[int, list[FillView]]
    #: 1, 2, ... per message of one publisher (0: not numbered); a number skipped is a
    #: message lost on the way (`market.feed_relay` then loads the books again).
    number: int = 0
    #: The sequencer rebuilt its memory (a failed or ambiguous commit, a reopen): load
    #: the books again (`DepthsQuery`), they may hold events never published.
    resync: bool = False


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode


def replies_of(outcomes: Sequence[Outcome[Any]]) -> Answer[Any]:
    replies: list[Reply[Any]] = []
    for outcome in outcomes:
        if isinstance(outcome, Done):
            replies.append(Reply(value=outcome.value))
        else:
            replies.append(Reply(error=ErrorWire.of(outcome.error)))
    return Answer(replies=replies)


def outcomes_of(answer: Answer[T]) -> list[Outcome[T]]:
    """The outcomes of an answer (`Answer.error` is for the caller to raise first)."""
    outcomes: list[Outcome[T]] = []
    for reply in answer.replies:
        if reply.error is not None:
            outcomes.append(Failed(reply.error.error()))
        else:
            outcomes.append(Done(typing.cast(T, reply.value)))
    return outcomes


class Codec:
    """Decoders made once per op type (commands, and the answers to them)."""

    def __init__(self) -> None:
        self._ops: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        self._answers: dict[str, msgspec.msgpack.Decoder[Any]] = {}

    def ops(self, name: str, payload: bytes) -> list[Op[Any]]:
        decoder = self._ops.get(name)
        if decoder is None:
            if name not in OP_TYPES:
                raise BadCommand(f"no such command: {name[:64]!r}")
            op_type = OP_TYPES[name]
            decoder = self._ops[name] = msgspec.msgpack.Decoder(list[op_type])  # type: ignore[valid-type]
        try:
            ops: list[Op[Any]] = decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise BadCommand(f"cannot read the {name} command: {exc}") from exc
        return ops

    def answer(self, name: str, payload: bytes) -> Answer[Any]:
        decoder = self._answers.get(name)
        if decoder is None:
            kind = type_argument(OP_TYPES[name], Op)
            decoder = self._answers[name] = msgspec.msgpack.Decoder(Answer[kind])  # type: ignore[valid-type]
        answer: Answer[Any] = decoder.decode(payload)
        return answer
