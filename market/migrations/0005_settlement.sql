-- Delivery, window close (settlement) and withdrawals.
--
-- market_instruments.delivery_grace_seconds: deliveries are still accepted
-- this long after an instrument's window ends; then it settles.
-- market_deliveries: every accepted delivery report (append-only), with the
-- split the ledger transaction applied; (provider, report_id) is the
-- provider's idempotency key.
-- market_settlements: one row per settled instrument (append-only): once
-- here, an instrument refuses orders, listings and deliveries for good.
-- market_withdrawals: the state of each withdrawal; only the pending ->
-- paid | failed step is allowed (a trigger refuses anything else).

ALTER TABLE market_instruments
    ADD COLUMN delivery_grace_seconds bigint NOT NULL DEFAULT 0
        CHECK (delivery_grace_seconds >= 0);

CREATE TABLE market_deliveries (
    provider       text   NOT NULL,
    report_id      text   NOT NULL,
    request_digest bytea  NOT NULL,
    instrument     text   NOT NULL,
    buyer          text   NOT NULL,
    tokens         bigint NOT NULL CHECK (tokens > 0),
    released       bigint NOT NULL CHECK (released >= 0),
    fee            bigint NOT NULL CHECK (fee >= 0 AND fee <= released),
    transaction_id text   NOT NULL UNIQUE,
    time_ms        bigint NOT NULL,
    PRIMARY KEY (provider, report_id)
);

CREATE INDEX market_deliveries_buyer ON market_deliveries (buyer, instrument);
CREATE INDEX market_deliveries_instrument ON market_deliveries (instrument, provider);

CREATE TABLE market_settlements (
    instrument         text   PRIMARY KEY,
    reason             text   NOT NULL CHECK (reason IN ('window', 'operator')),
    time_ms            bigint NOT NULL,
    entitlement_burned bigint NOT NULL CHECK (entitlement_burned >= 0),
    refunded           bigint NOT NULL CHECK (refunded >= 0),
    capacity_burned    bigint NOT NULL CHECK (capacity_burned >= 0)
);

SELECT ledger_make_append_only(t)
  FROM unnest(ARRAY['market_deliveries', 'market_settlements']::regclass[]) AS t;

CREATE TABLE market_withdrawals (
    account_id     text   NOT NULL,
    withdrawal_id  text   NOT NULL,
    request_digest bytea  NOT NULL,
    amount         bigint NOT NULL CHECK (amount > 0),
    currency       text   NOT NULL,
    hold_id        text   NOT NULL UNIQUE,
    status         text   NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    created_ms     bigint NOT NULL,
    updated_ms     bigint NOT NULL,
    PRIMARY KEY (account_id, withdrawal_id)
);

CREATE INDEX market_withdrawals_pending ON market_withdrawals (created_ms) WHERE status = 'pending';

-- A withdrawal changes once, from pending to paid or failed, and nothing else about it does.
CREATE FUNCTION market_withdrawal_step() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' OR NEW.status NOT IN ('paid', 'failed')
       OR (NEW.account_id, NEW.withdrawal_id, NEW.request_digest, NEW.amount, NEW.currency,
           NEW.hold_id, NEW.created_ms)
          IS DISTINCT FROM
          (OLD.account_id, OLD.withdrawal_id, OLD.request_digest, OLD.amount, OLD.currency,
           OLD.hold_id, OLD.created_ms)
    THEN
        RAISE EXCEPTION 'withdrawal %/% cannot go from % to %',
            OLD.account_id, OLD.withdrawal_id, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER market_withdrawals_step BEFORE UPDATE ON market_withdrawals
    FOR EACH ROW EXECUTE FUNCTION market_withdrawal_step();
CREATE TRIGGER market_withdrawals_no_delete BEFORE DELETE ON market_withdrawals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER market_withdrawals_no_truncate BEFORE TRUNCATE ON market_withdrawals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
REVOKE DELETE, TRUNCATE ON market_withdrawals FROM PUBLIC;
