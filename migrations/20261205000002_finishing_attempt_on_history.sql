-- The attempt that finishes an event (delivered, failed, refused) is kept on
-- the event's history row, written by the statement that moves the event
-- there; `event_attempts` keeps the attempts that left an event pending
-- (retries, probes of a disabled endpoint). Nearly every event is delivered
-- at its first attempt, so the attempt log then costs no row and no index
-- entry of its own: a separate row per delivery cost 8 % of the delivery
-- rate in the peers run of 2026-12-05 (a heap row and an index entry at a
-- random place per delivery), against five columns of a row written anyway.
--
-- The attempt's error is the row's `last_error` unless it was delivered
-- (a delivery has none). `all_events` lists the columns of `events` and is
-- not changed: these columns are only read from `event_history`.
ALTER TABLE event_history
    ADD COLUMN attempt_at timestamptz,
    ADD COLUMN attempt_replica uuid,
    ADD COLUMN attempt_status smallint,
    ADD COLUMN attempt_latency_ms integer,
    ADD COLUMN attempt_outcome text;
-- No CHECK on `attempt_outcome`: validating one would scan the whole
-- history under this migration's lock; the host writes only the outcomes
-- `event_attempts` allows.
