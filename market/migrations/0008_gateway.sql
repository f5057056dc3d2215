-- The gateway's configuration: providers' inference endpoints and buyers' inference keys.
--
-- Configuration, not ledger state: like accounts and their keys (0003), these rows are
-- written directly by their routes (market/gateway), not through the sequencer, and
-- nothing of them is in the ledger's Merkle log. Who owes whom stays in the ledger alone.
--
-- Numbered 0008: the branch `rec` adds 0006 (market_snapshots) and 0007 (open_holds).
--
--   gateway_endpoints       a provider's OpenAI-compatible server for one model. The
--                           upstream credential is kept only to be sent upstream: no route
--                           returns it and nothing logs it. `health` is what the last probe
--                           (GET {base_url}/models) found; only healthy endpoints get calls.
--   gateway_inference_keys  a buyer's bearer key for /openai/v1: only the SHA-256 of the
--                           secret is stored (the secret is 256 random bits, so a fast hash
--                           cannot be brute-forced; see market/gateway/keys.py). `models`
--                           NULL means every model the buyer holds.

CREATE TABLE gateway_endpoints (
    provider        text    NOT NULL REFERENCES accounts (account_id),
    endpoint_id     text    NOT NULL CHECK (endpoint_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    model           text    NOT NULL CHECK (length(model) BETWEEN 1 AND 128),
    base_url        text    NOT NULL CHECK (length(base_url) BETWEEN 1 AND 2048),
    credential      text             CHECK (length(credential) BETWEEN 1 AND 4096),
    max_concurrency integer NOT NULL CHECK (max_concurrency BETWEEN 1 AND 100000),
    health          text    NOT NULL CHECK (health IN ('healthy', 'unhealthy')),
    health_detail   text    NOT NULL DEFAULT '',
    checked_ms      bigint  NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, endpoint_id)
);

CREATE INDEX gateway_endpoints_model_idx ON gateway_endpoints (model);

CREATE TABLE gateway_inference_keys (
    key_id        text    PRIMARY KEY CHECK (key_id ~ '^ik_[0-9a-f]{16}$'),
    buyer         text    NOT NULL REFERENCES accounts (account_id),
    secret_sha256 bytea   NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    models        text[],
    token_budget  bigint  CHECK (token_budget > 0),
    expires_ms    bigint  CHECK (expires_ms > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE INDEX gateway_inference_keys_buyer_idx ON gateway_inference_keys (buyer);

-- gateway_receipts: one row per metered call (schemas.gateway.GatewayReceipt), written by
-- the sequencer in the same statement as the delivery transaction that charged it
-- (`transaction_id`; NULL when the call was charged nothing or its charge was refused).
-- Append-only: a trigger refuses UPDATE and DELETE.
CREATE TABLE gateway_receipts (
    receipt_id        text    PRIMARY KEY CHECK (receipt_id ~ '^rcp_[0-9a-f]{24}$'),
    key_id            text    NOT NULL,
    buyer             text    NOT NULL,
    provider          text    NOT NULL,
    instrument        text    NOT NULL,
    endpoint_id       text    NOT NULL,
    model             text    NOT NULL,
    prompt_tokens     bigint  NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens bigint  NOT NULL CHECK (completion_tokens >= 0),
    cached_tokens     bigint  NOT NULL CHECK (cached_tokens >= 0),
    reasoning_tokens  bigint  NOT NULL CHECK (reasoning_tokens >= 0),
    tokens            bigint  NOT NULL CHECK (tokens >= 0),
    started_ms        bigint  NOT NULL,
    ended_ms          bigint  NOT NULL CHECK (ended_ms >= started_ms),
    request_sha256    bytea   NOT NULL CHECK (length(request_sha256) = 32),
    response_sha256   bytea   NOT NULL CHECK (length(response_sha256) = 32),
    transaction_id    text
);

CREATE INDEX gateway_receipts_key_idx ON gateway_receipts (key_id);
CREATE INDEX gateway_receipts_buyer_idx ON gateway_receipts (buyer, started_ms);
CREATE INDEX gateway_receipts_provider_idx ON gateway_receipts (provider, started_ms);

CREATE FUNCTION gateway_receipts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'gateway_receipts is append-only';
END $$;

CREATE TRIGGER gateway_receipts_append_only
    BEFORE UPDATE OR DELETE ON gateway_receipts
    FOR EACH ROW EXECUTE FUNCTION gateway_receipts_append_only();
