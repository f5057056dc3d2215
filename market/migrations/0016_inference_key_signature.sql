-- The signed request that made each inference key (`tokex serve --workers N`).
--
-- gateway_inference_keys.request_signature: the Ed25519 signature of the signed
--     `POST /v1/inference-keys` that created the key. Each gateway process has its own
--     in-memory replay window, and this write does not go through the sequencer process
--     (whose window sees every gateway's commands), so the same signed request sent to
--     another gateway, or another host, would make a second bearer key. Unique: the
--     replay fails on this constraint, in the one database every gateway writes to
--     (401 `replayed_signature`, market/gateway/keys.py). NULL for keys from before it.

ALTER TABLE gateway_inference_keys
    ADD COLUMN request_signature bytea
        CONSTRAINT gateway_inference_keys_request_signature_key UNIQUE
        CHECK (length(request_signature) = 64);
