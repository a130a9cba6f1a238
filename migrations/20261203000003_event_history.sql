-- Finished events (delivered, failed, cancelled) move to `event_history` in
-- the transaction that finishes them, so `events` holds only what may still
-- be delivered (pending, processing): the claimer's scans, the indexes every
-- delivery writes and VACUUM stay the size of the backlog, not of history.
-- `all_events` reads both, for the API.
--
-- The columns are those of `events`, in the same order. History is a record,
-- not a constraint: the exactly-once key stays on `events`, and planning
-- also checks the history (`insert_planned`), so an occurrence delivered
-- once is not planned again.
CREATE TABLE event_history (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    event_type    text NOT NULL,
    occurrence    timestamp NOT NULL,
    timezone      text NOT NULL,
    due_at        timestamptz NOT NULL,
    run_at        timestamptz NOT NULL,
    status        text NOT NULL CHECK (status IN ('delivered', 'failed', 'cancelled')),
    attempts      integer NOT NULL,
    attempts_before_retry integer NOT NULL,
    last_error    text,
    lease_id      uuid,
    lease_until   timestamptz,
    delivered_at  timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE INDEX event_history_user ON event_history (user_id);
-- An operator's listing of failed events (`GET /events?status=failed`).
CREATE INDEX event_history_failed ON event_history (due_at, id) WHERE status = 'failed';

WITH finished AS (
    DELETE FROM events WHERE status IN ('delivered', 'failed', 'cancelled') RETURNING *
)
INSERT INTO event_history SELECT * FROM finished;

-- Only live rows stay; their indexes for finished ones go.
DROP INDEX events_failed;
DROP INDEX events_cancelled_user;
ALTER TABLE events DROP CONSTRAINT events_status_check;
ALTER TABLE events ADD CONSTRAINT events_status_check CHECK (status IN ('pending', 'processing'));

CREATE VIEW all_events AS
    SELECT * FROM events
    UNION ALL
    SELECT * FROM event_history;
