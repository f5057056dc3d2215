"""The gateway's wire forms: providers' inference endpoints and buyers' inference keys.

An endpoint is a provider's OpenAI-compatible server (vLLM, llama.cpp server, Ollama,
SGLang, TGI) for one model; its upstream credential goes in, never out (no view has it).
An inference key is a buyer's bearer secret `tkx_...` for `/openai/v1`, shown once.
A receipt is one metered call; its hash, tree and proof are defined in `ledger.receipts`.
A call mark is the durable progress of a streaming call (`gateway_calls`), from which a
call cut by a crash of the exchange is charged when it restarts (`market.gateway.progress`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from schemas.ledger_api import LedgerEntry
from schemas.ledger_proofs import InclusionProof

EndpointId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,64}(?!\n)$")]
MODEL_NAME_MAX_LENGTH = 128
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=MODEL_NAME_MAX_LENGTH)]
BaseUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
#: Sent as a header (`Authorization: Bearer ...`): printable ASCII only.
Credential = Annotated[
    str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+(?!\n)$")
]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
Tokens = Annotated[int, msgspec.Meta(gt=0, le=2**62)]
TimeMs = Annotated[int, msgspec.Meta(gt=0, le=2**62)]


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class RegisterEndpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/endpoints` (provider)."""

    endpoint_id: EndpointId
    model: ModelName
    base_url: BaseUrl
    #: Sent upstream as `Authorization: Bearer ...`; stored, never returned nor logged.
    credential: Credential | None = None
    max_concurrency: Concurrency = 16


class EndpointView(msgspec.Struct, frozen=True, kw_only=True):
    endpoint_id: str
    model: str
    base_url: str
    has_credential: bool
    max_concurrency: int
    health: Health
    health_detail: str
    checked_ms: int


class CreateInferenceKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/inference-keys` (buyer). `{}`: every model the buyer holds, no budget,
    no expiry."""

    models: Annotated[list[ModelName], msgspec.Meta(min_length=1, max_length=100)] | None = None
    #: The most tokens the key may have metered in all (on top of the entitlement's limit).
    token_budget: Tokens | None = None
    #: Unix time (ms) after which the key is refused.
    expires_ms: TimeMs | None = None


class InferenceKeyView(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    models: list[str] | None
    token_budget: int | None
    expires_ms: int | None
    created_at_ms: int  # Unix ms
    revoked: bool


class InferenceKeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The one answer that carries the secret: store it, the exchange keeps only its hash."""

    key_id: str
    secret: str
    models: list[str] | None
    token_budget: int | None
    expires_ms: int | None


class Ending(StrEnum):
    """How a receipt's call ended, as the exchange knows it."""

    #: The gateway saw the call end: it finished, its stream broke off, its buyer left.
    SEEN = "seen"
    #: The exchange crashed during the call: closed when it restarted, by the call's last
    #: durable progress mark (`CallMark`).
    CRASH = "crash"


class GatewayReceipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One metered call through the gateway (a row of `gateway_receipts`, append-only).

    `tokens` is what the call was charged (see market/gateway/metering.py for the rule);
    the token counts are what the upstream reported. `request_sha256` is the hash of the
    bytes the gateway sent upstream, `response_sha256` of the bytes it sent the buyer,
    but for one case: a stream whose receipt could not be made durable when it ended gets
    a `charge_unavailable` error event in place of its tail (the usage event and `[DONE]`),
    while its receipt, made and submitted before that was known (and so kept unchanged
    for its retry: a first write may have committed), hashes the tail held back.
    A call cut by a crash (`ending` CRASH) is charged by its last progress mark: its
    `ended_ms` is that mark's time and `response_sha256` the hash of the events the
    gateway had passed on (or held back for the tail) by then. `ending` is left out of the
    encoded forms while it is SEEN (its default): such a receipt's canonical bytes are those
    of a receipt made before the field existed (`ledger.receipts`, layout v1).
    """

    receipt_id: str
    key_id: str
    buyer: str
    provider: str
    instrument: str
    endpoint_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    tokens: int
    started_ms: int
    ended_ms: int
    request_sha256: bytes
    response_sha256: bytes
    ending: Ending = Ending.SEEN


class CallMark(msgspec.Struct, frozen=True, kw_only=True):
    """A streaming call's progress as the exchange last recorded it (a row of
    `gateway_calls`, replaced by each newer mark, deleted with the call's receipt).

    The call as opened (its ids, parties, endpoint, model, reservation: `prompt_cap`,
    `completion_cap`, `completion_weight`; its start and the SHA-256 of the request sent
    upstream) and how far it had come at `marked_ms`: the completion chunks passed on,
    the upstream's usage if it had arrived (the four counts, or None), and the SHA-256 of
    the events passed on (or held for the tail) until then; and which gateway process
    instance owns it (`instance_id`).
    """

    receipt_id: str
    key_id: str
    buyer: str
    provider: str
    instrument: str
    endpoint_id: str
    model: str
    prompt_cap: int
    completion_cap: int
    completion_weight: int
    started_ms: int
    request_sha256: bytes
    chunks: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    response_sha256: bytes
    marked_ms: int
    #: The gateway process instance that owns the call (migration 0015): only its own
    #: end, or its process's, closes the call as cut by a crash.
    instance_id: str = ""


class GatewayDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """What one (buyer, provider, instrument) group of a charge became: a delivery
    transaction (None when nothing was charged or the charge was refused)."""

    buyer: str
    provider: str
    instrument: str
    report_id: str
    tokens: int
    transaction_id: str | None
    refused: str | None = None  # the error code, when the group could not be charged


class ReceiptView(msgspec.Struct, frozen=True, kw_only=True):
    """One receipt as `GET /v1/receipts` lists it: the receipt, its hash
    (`ledger.receipts.receipt_hash`) and the delivery transaction that charged it (None
    while it is not charged yet, or if it was charged nothing)."""

    receipt: GatewayReceipt
    receipt_sha256: bytes
    transaction_id: str | None


class ReceiptProof(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /v1/receipts/{receipt_id}/proof`: the receipt is leaf `proof.leaf_index` of
    the `proof.tree_size` receipts whose root the delivery's signed body commits to
    (`delivery`: its ledger entry, canonical bytes). Check it offline with
    `ledger.receipts.verify_receipt_proof`, then the entry in the ledger's log with
    `GET /v1/ledger/proof/inclusion?index={delivery.index}`."""

    receipt: GatewayReceipt
    receipt_sha256: bytes
    proof: InclusionProof
    delivery: LedgerEntry
