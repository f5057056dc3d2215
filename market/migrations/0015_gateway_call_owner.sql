-- Which gateway process owns each streaming call in flight (`tokex serve --workers N`).
--
-- gateway_calls.instance_id: the gateway process instance that opened the call (written
--     with its first progress mark, schemas.gateway.CallMark; a process's id is new at
--     every start, market/gateway/desk.py). Calls are closed as cut by a crash only when
--     their owner is gone: every open call when the whole exchange starts, and a dead
--     gateway process's calls, and no one else's, when the sequencer process sees it
--     exit. '' for rows from before this migration (and from one process, which closes
--     every open call at its start anyway).

ALTER TABLE gateway_calls ADD COLUMN instance_id text NOT NULL DEFAULT '';
CREATE INDEX gateway_calls_instance ON gateway_calls (instance_id);
