-- Buyer vouchers and disputes of providers' own delivery reports (issue 13, items 5 and 6).
--
-- market_instruments.dispute_period_seconds: how long a provider's own report stays
-- pending (disputable by the buyer) before it settles; an instrument's term, by default
-- its delivery grace. NULL for the instruments listed before this migration (the table is
-- append-only, so they are not rewritten): their delivery grace.
--
-- market_reports: every provider's own report (POST /v1/deliveries) from its acceptance:
-- the split fixed when it was made (`released`, `fee`: held in the ledger by the
-- transaction `hold_id`), when its period ends (`due_ms`), and its state:
--   pending -> settled   (the period ended undisputed: a delivery transaction)
--   pending -> disputed  (the buyer disputed it: `dispute_id`, `dispute_reason`)
--   disputed -> paid | refunded (the operator resolved it: `settled_tx`)
-- A trigger allows only these steps, and nothing else of a row changes but its state,
-- its dispute and its times. Settled and paid reports also have their row in
-- market_deliveries (what was delivered); a refunded one does not.
--
-- market_vouchers: every accepted buyer voucher (append-only), with its signature, so the
-- acknowledgement that released escrow can be checked again offline. The buyer's latest
-- voucher per (buyer, provider, instrument) is the one with the most tokens.

ALTER TABLE market_instruments
    ADD COLUMN dispute_period_seconds bigint CHECK (dispute_period_seconds >= 0);

CREATE TABLE market_reports (
    provider       text   NOT NULL,
    report_id      text   NOT NULL,
    request_digest bytea  NOT NULL,
    instrument     text   NOT NULL,
    buyer          text   NOT NULL,
    tokens         bigint NOT NULL CHECK (tokens > 0),
    released       bigint NOT NULL CHECK (released >= 0),
    fee            bigint NOT NULL CHECK (fee >= 0 AND fee <= released),
    hold_id        text   NOT NULL UNIQUE,
    created_ms     bigint NOT NULL,
    due_ms         bigint NOT NULL,
    status         text   NOT NULL
        CHECK (status IN ('pending', 'settled', 'disputed', 'paid', 'refunded')),
    dispute_id     text   UNIQUE,
    dispute_reason text   CHECK (length(dispute_reason) <= 1000),
    disputed_ms    bigint,
    settled_tx     text   UNIQUE,
    updated_ms     bigint NOT NULL,
    PRIMARY KEY (provider, report_id)
);

CREATE INDEX market_reports_pending ON market_reports (due_ms) WHERE status = 'pending';
CREATE INDEX market_reports_buyer ON market_reports (buyer, status);

CREATE FUNCTION market_report_step() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ((OLD.status = 'pending' AND NEW.status IN ('settled', 'disputed'))
            OR (OLD.status = 'disputed' AND NEW.status IN ('paid', 'refunded')))
       OR (NEW.provider, NEW.report_id, NEW.request_digest, NEW.instrument, NEW.buyer,
           NEW.tokens, NEW.released, NEW.fee, NEW.hold_id, NEW.created_ms, NEW.due_ms)
          IS DISTINCT FROM
          (OLD.provider, OLD.report_id, OLD.request_digest, OLD.instrument, OLD.buyer,
           OLD.tokens, OLD.released, OLD.fee, OLD.hold_id, OLD.created_ms, OLD.due_ms)
       OR (OLD.dispute_id IS NOT NULL AND NEW.dispute_id IS DISTINCT FROM OLD.dispute_id)
    THEN
        RAISE EXCEPTION 'report %/% cannot go from % to %',
            OLD.provider, OLD.report_id, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER market_reports_step BEFORE UPDATE ON market_reports
    FOR EACH ROW EXECUTE FUNCTION market_report_step();
CREATE TRIGGER market_reports_no_delete BEFORE DELETE ON market_reports
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER market_reports_no_truncate BEFORE TRUNCATE ON market_reports
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
REVOKE DELETE, TRUNCATE ON market_reports FROM PUBLIC;

CREATE TABLE market_vouchers (
    buyer          text   NOT NULL,
    provider       text   NOT NULL,
    instrument     text   NOT NULL,
    version        bigint NOT NULL CHECK (version > 0),
    tokens         bigint NOT NULL CHECK (tokens > 0),
    key_id         text   NOT NULL,
    signature      bytea  NOT NULL CHECK (length(signature) = 64),
    delta          bigint NOT NULL CHECK (delta > 0),
    transaction_id text   NOT NULL UNIQUE,
    time_ms        bigint NOT NULL,
    PRIMARY KEY (buyer, provider, instrument, version)
);

CREATE INDEX market_vouchers_latest ON market_vouchers (buyer, provider, instrument, tokens DESC);
CREATE INDEX market_vouchers_provider ON market_vouchers (provider);

SELECT ledger_make_append_only('market_vouchers'::regclass);
