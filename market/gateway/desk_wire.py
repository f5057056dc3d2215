"""The desk's messages between a gateway process and the sequencer process (MessagePack
over NATS request-reply; `desk_remote` sends them, `desk_server` answers).

Subjects, answered in the sequencer's queue group:

* `tokex.gw.reserve`, `ReserveRequest` -> `Reservation`: route and reserve one call (the
  gateway's only round trip before it forwards the call);
* `tokex.gw.charge`, `ChargeRequest` -> one reply per op: a gateway's group commit of
  receipts (and the progress marks riding with it), submitted to the sequencer by the
  desk as one `submit_all`, so the desk sees each call end (its receipt) and each charge
  commit;
* `tokex.gw.journal`, `JournalRequest` -> the number written: receipts of calls ended,
  made durable by the receipt journal of the sequencer process (`market.gateway.journal`)
  before the calls send their last bytes; the desk sees each call end here (a charge
  carrying the receipt later is only its charge);
* `tokex.gw.release`, `ReleaseRequest` -> the number released: calls that ended unserved
  (no receipt: an upstream error, a buyer gone before the answer), and reserves sent
  whose answer never came back (the desk may have reserved them; a release arriving
  before its reserve makes the desk undo or refuse that reserve: `desk_server`);
* `tokex.gw.models`, `ModelsRequest` -> the model list of `GET /openai/v1/models`.

Every request names the gateway process instance it comes from: the desk keeps each
instance's calls apart, and refuses the requests of an instance it knows to be gone.
Answers are `market.sequencer.wire.Answer`s, errors their `ErrorWire` (so a 402 or a 503
is raised again in the gateway as the same class).
"""

from __future__ import annotations

from typing import Any

import msgspec

from market.sequencer.ops import GatewayChargeOp, GatewayProgressOp
from schemas.gateway import GatewayReceipt

PREFIX = "tokex.gw."
RESERVE = PREFIX + "reserve"
CHARGE = PREFIX + "charge"
RELEASE = PREFIX + "release"
JOURNAL = PREFIX + "journal"
MODELS = PREFIX + "models"


class ReserveRequest(msgspec.Struct, array_like=True, frozen=True):
    instance_id: str
    receipt_id: str
    buyer: str
    key_id: str
    budget: int | None
    model: str
    prompt_estimate: int
    max_tokens: int | None
    #: the model's healthy endpoints: (provider, endpoint id, max concurrency)
    endpoints: list[tuple[str, str, int]]


class Reservation(msgspec.Struct, array_like=True, frozen=True):
    instrument: str
    provider: str
    endpoint_id: str
    max_concurrency: int
    available: int
    prompt_cap: int
    completion_cap: int
    completion_weight: int


class ChargeRequest(msgspec.Struct, array_like=True, frozen=True):
    instance_id: str
    progress: GatewayProgressOp | None
    charges: list[GatewayChargeOp]


class JournalRequest(msgspec.Struct, array_like=True, frozen=True):
    instance_id: str
    receipts: list[GatewayReceipt]


class ReleaseRequest(msgspec.Struct, array_like=True, frozen=True):
    instance_id: str
    receipt_ids: list[str]


class ModelsRequest(msgspec.Struct, array_like=True, frozen=True):
    buyer: str
    allowed: list[str] | None


Models = list[dict[str, Any]]
