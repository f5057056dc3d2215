"""The request id of the work in progress, for the logs (a context variable).

The HTTP layer (`ops.observe`) sets it for each request, from the client's
`X-Request-Id` or a new one; the sequencer reads it when a command is queued, so the
command's batch and commit log lines name the request that sent it.
"""

from __future__ import annotations

import os
import random
import re
from contextvars import ContextVar

#: The request id of the request being served in this context (None outside one).
REQUEST_ID: ContextVar[str | None] = ContextVar("tokex_request_id", default=None)

#: The signature and timestamp of the signed HTTP request being served ("<base64> <ms>",
#: both already checked), set by `market.auth.AuthMiddleware`: a gateway process sends it
#: with the request's command, so the sequencer process refuses the same signed request
#: replayed to another gateway (`market.sequencer.responder`). None outside one.
SIGNED: ContextVar[str | None] = ContextVar("tokex_signed", default=None)

#: What a client's own request id may be: printable, no spaces or quotes, 1-128 chars.
#: Anything else is replaced by a new id (a log line never carries what a client chose
#: to inject into it).
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


#: Where new request ids come from: 64 random bits each, from a generator seeded from the
#: system's randomness (again in a forked child). An id tells requests apart in the logs;
#: it is no secret and guards nothing, so it need not cost a system call (os.urandom is
#: ~6 us here, a tenth of a request's own work).
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    return f"req_{_ids.getrandbits(64):016x}"


def accept_request_id(client_value: str | None) -> str:
    """The client's id if it is acceptable, else a new one."""
    if client_value is not None and _CLIENT_ID.fullmatch(client_value):
        return client_value
    return new_request_id()


def current_request_id() -> str | None:
    return REQUEST_ID.get()
