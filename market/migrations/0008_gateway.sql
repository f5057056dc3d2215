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
