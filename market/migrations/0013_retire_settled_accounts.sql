-- Retire the accounts of the instruments settled before retirement existed (0012), as
-- settlement does since (market.sequencer.lifecycle): every account of the instrument's
-- token (entitlements, capacities, issuance) and its escrows, where it is at zero on
-- both buckets (settlement leaves them so; one that is not stays open).
--
-- An account with no entry at or after the ledger's snapshot index is retired at that
-- index: start-up skips it, and its balance row (zero as of that index) goes now. The
-- others (settled in the journal's tail) are retired at the journal's end: start-up
-- replays them, checks they are at zero and drops them. One pass over those accounts'
-- entries, once.
WITH snap AS (SELECT next_index AS s FROM ledger_snapshot),
     ends AS (SELECT coalesce(max(idx) + 1, 0) AS e FROM ledger_transactions),
     owned AS (
        SELECT a.id
          FROM market_settlements st
          JOIN market_instruments i ON i.symbol = st.instrument
          JOIN ledger_accounts a
            ON a.asset = 'tok:' || i.symbol
            OR (a.kind = 'escrow:' || i.symbol AND a.asset = i.currency)),
     sums AS (
        SELECT e.account_id,
               coalesce(sum(e.amount) FILTER (WHERE e.bucket = 0), 0) AS available,
               coalesce(sum(e.amount) FILTER (WHERE e.bucket = 1), 0) AS held,
               max(e.tx_idx) AS last_idx
          FROM ledger_entries e
         WHERE e.account_id IN (SELECT id FROM owned)
         GROUP BY e.account_id)
INSERT INTO ledger_retired_accounts (account_id, retired_idx)
SELECT sums.account_id, CASE WHEN sums.last_idx < snap.s THEN snap.s ELSE ends.e END
  FROM sums, snap, ends
 WHERE sums.available = 0 AND sums.held = 0;

DELETE FROM ledger_balances b
 USING ledger_retired_accounts r, ledger_snapshot s
 WHERE r.account_id = b.account_id AND r.retired_idx <= s.next_index;
