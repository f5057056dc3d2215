-- An index of the open holds, so that the ledger loads only those at start-up.
--
-- Recovery loads only the open holds (ledger.store.load_state): most rows of
-- ledger_hold_state are holds long closed (remaining 0), and a scan of them all made
-- start-up grow with history.
CREATE INDEX ledger_hold_state_open ON ledger_hold_state (hold_id) WHERE remaining > 0;
