-- The dead-man switch of an account (POST /v1/orders/cancel-after, Kraken's
-- cancelAllOrdersAfter): once deadline_ms passes without a refresh, the sequencer
-- cancels every open order of the account (a journaled mass cancel, so replay makes the
-- same cancels) and disarms the switch in the same batch, so a restart neither loses
-- nor repeats it. One row per account, upserted; deadline_ms 0: disarmed.
CREATE TABLE market_cancel_after (
    account_id  text   PRIMARY KEY,
    deadline_ms bigint NOT NULL CHECK (deadline_ms >= 0),
    updated_ms  bigint NOT NULL
);
CREATE INDEX market_cancel_after_armed ON market_cancel_after (deadline_ms) WHERE deadline_ms > 0;
