-- Every write of the delivery path (claim, outcome, next occurrence) is a
-- non-HOT row version, so it pays one index insertion per index whose
-- predicate the new version matches: at ~7 us each, they were the largest
-- share of PostgreSQL's time per delivery. Two indexes go:
--
-- * `events_user`: a user's live events are found through the exactly-once
--   key (its first column is `user_id`); only their cancelled ones need an
--   index of their own, and cancelled rows are the rare case.
-- * `events_status_type`: the claimer, the rescuer and the pending count
--   have partial indexes of their own; an operator's listing of failed
--   events keeps one. A listing of delivered or cancelled events reads the
--   table.
DROP INDEX events_user;
CREATE INDEX events_cancelled_user ON events (user_id) WHERE status = 'cancelled';

DROP INDEX events_status_type;
CREATE INDEX events_failed ON events (due_at, id) WHERE status = 'failed';
