-- Snapshots of the books, so that recovery replays only the journal's tail.
--
-- market_snapshots: the matching engine's state (MatchingEngine.snapshot(), the books of
-- every instrument; a settled instrument's book is reduced to its instrument and its
-- next seq) after every market_journal entry below journal_seq, and none above. One row
-- is one snapshot: the state and its journal position are written together or not at
-- all. The sequencer writes one every so many entries or seconds and on shutdown, in
-- the background, and keeps the latest two (an older one is a fallback should the
-- newest not decode, e.g. after an upgrade changed the book's snapshot format; with
-- none, recovery replays the journal from its first row).
--
-- Derived data, unlike the journal: deleting rows loses nothing but start-up time.

CREATE TABLE market_snapshots (
    journal_seq bigint  PRIMARY KEY CHECK (journal_seq >= 0),
    time_ms     bigint  NOT NULL,
    format      integer NOT NULL,
    engine      bytea   NOT NULL,
    created_ms  bigint  NOT NULL
);
