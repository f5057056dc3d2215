-- The signatures of private websocket subscribes, claimed once for every gateway.
--
-- Each gateway process of `tokex serve --workers N` has its own in-memory replay window,
-- and a subscribe to the `orders` channel does not go through the sequencer process
-- (whose window sees every gateway's commands): the same signed subscribe sent unchanged
-- to another gateway would be accepted there, and whoever replayed it would read the
-- account's private updates (and, if the owner asked for `cancel_on_disconnect`, arm it).
-- A subscribe claims its signature here first (market/stream_claims.py): the second claim
-- of one signature, from any gateway, is refused 401 `replayed_signature`. A signature is
-- only good within the replay window (30 s), so a claim is kept past that and then
-- dropped: expires_ms. Unlogged: after a crash the table is empty, and a signature made
-- before the restart is refused anyway (signed before the process started).

CREATE UNLOGGED TABLE market_stream_signatures (
    signature bytea PRIMARY KEY CHECK (length(signature) = 64),
    expires_ms bigint NOT NULL
);
