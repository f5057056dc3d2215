-- Calls cut by a crash: the durable progress of the gateway's streaming calls, and the
-- receipts that close them when the exchange restarts.
--
-- gateway_calls: one row per streaming call in flight whose progress the gateway has
--     recorded (schemas.gateway.CallMark): the call as opened (ids, parties, endpoint,
--     model, its reservation, start, SHA-256 of the request) and its last progress mark
--     (completion chunks passed on, the upstream's usage once seen, the SHA-256 of the
--     events passed on so far, the mark's time). Written by the sequencer only
--     (`GatewayProgressOp`: each mark replaces the row's progress), deleted in the same
--     statement as the call's receipt, so it holds only calls in flight. A row left when
--     the exchange restarts is a call cut by a crash: it is closed by its last mark
--     (market/gateway/progress.py). The usage columns are NULL until the usage came.
-- gateway_receipts.ending: how the call ended as the exchange knows it: 'seen' (the
--     gateway saw it end; every receipt before this migration) or 'crash' (closed at a
--     restart by its last progress mark). A receipt's hash covers it in layout v2 only
--     (ledger/receipts.py), so the hashes of 'seen' receipts are unchanged.

CREATE TABLE gateway_calls (
    receipt_id        text    PRIMARY KEY CHECK (receipt_id ~ '^rcp_[0-9a-f]{24}$'),
    key_id            text    NOT NULL,
    buyer             text    NOT NULL,
    provider          text    NOT NULL,
    instrument        text    NOT NULL,
    endpoint_id       text    NOT NULL,
    model             text    NOT NULL,
    prompt_cap        bigint  NOT NULL CHECK (prompt_cap >= 0),
    completion_cap    bigint  NOT NULL CHECK (completion_cap >= 1),
    completion_weight integer NOT NULL CHECK (completion_weight >= 1),
    started_ms        bigint  NOT NULL,
    request_sha256    bytea   NOT NULL CHECK (length(request_sha256) = 32),
    chunks            bigint  NOT NULL CHECK (chunks >= 0),
    prompt_tokens     bigint           CHECK (prompt_tokens >= 0),
    completion_tokens bigint           CHECK (completion_tokens >= 0),
    cached_tokens     bigint           CHECK (cached_tokens >= 0),
    reasoning_tokens  bigint           CHECK (reasoning_tokens >= 0),
    response_sha256   bytea   NOT NULL CHECK (length(response_sha256) = 32),
    marked_ms         bigint  NOT NULL CHECK (marked_ms >= started_ms)
);

ALTER TABLE gateway_receipts
    ADD COLUMN ending text NOT NULL DEFAULT 'seen' CHECK (ending IN ('seen', 'crash'));
