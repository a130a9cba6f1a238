-- The record: finished events and their delivery attempts, kept for
-- KAIROS_RETENTION and removed by dropping whole days, never by DELETE; and
-- the audit log of every change made through the API.
--
-- One change to the schema with the hot table of 20261203000003: `events`
-- holds only what may still be delivered and is not partitioned (the claimer
-- never reads history); `event_history` and `event_attempts` are partitioned
-- by the event's `due_at`, one partition per UTC day, so an event and its
-- attempts leave together. The host's partition keeper (`retention.rs`)
-- creates each day's partition ahead of time and drops those past retention;
-- a DEFAULT partition catches what no day holds yet (events cancelled long
-- before they were due), and the keeper moves those rows into their day
-- when it creates it.

-- event_history, partitioned: same columns in the same order (rows move
-- between it and `events`, and `all_events` is their positional union).
CREATE TABLE event_history_by_day (LIKE event_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (due_at);
CREATE TABLE event_history_default PARTITION OF event_history_by_day DEFAULT;
INSERT INTO event_history_by_day SELECT * FROM event_history;

DROP VIEW all_events;
DROP TABLE event_history;
ALTER TABLE event_history_by_day RENAME TO event_history;

-- A partitioned table's keys must hold its partition key.
ALTER TABLE event_history ADD PRIMARY KEY (id, due_at);
CREATE INDEX event_history_user ON event_history (user_id);
CREATE INDEX event_history_failed ON event_history (due_at, id) WHERE status = 'failed';
CREATE INDEX event_history_finished_brin ON event_history USING brin (updated_at);

CREATE VIEW all_events AS
    SELECT * FROM events
    UNION ALL
    SELECT * FROM event_history;

-- One row per delivery attempt whose outcome a host recorded, written in the
-- statement that records the outcome. `due_at` is the event's: the
-- partition key, shared with `event_history`. `n` is not stored: it is the
-- attempt's rank by time, which no write can get wrong.
CREATE TABLE event_attempts (
    event_id    uuid NOT NULL,
    due_at      timestamptz NOT NULL,
    at          timestamptz NOT NULL,
    replica     uuid NOT NULL,
    -- The HTTP status, or NULL when none came back.
    status      smallint,
    latency_ms  integer NOT NULL,
    -- Never a URL's credentials or query string.
    error       text,
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'refused'))
) PARTITION BY RANGE (due_at);
CREATE TABLE event_attempts_default PARTITION OF event_attempts DEFAULT;
CREATE INDEX event_attempts_event ON event_attempts (event_id, at);

-- What was done through the API (and found in the plugin directory), in the
-- transaction that did it. `actor` is a token's fingerprint (the first 12
-- hex digits of its SHA-256), `plugin-dir`, `kairos` or `anonymous` (a
-- client route left open on loopback). Kept for KAIROS_AUDIT_RETENTION.
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log USING brin (at);

-- Operational webhooks (KAIROS_OPS_WEBHOOK_URL): one row per change of
-- state, inserted by the statement that makes the change, so that however
-- many replicas see it, the change is told once. `key` names the change
-- (`endpoint:<id>:<changed_at>`, `replica.stale:<id>:<heartbeat_at>`,
-- `type.failing:<name>:<generation>`); `id` is the message's `webhook-id`,
-- the same on every attempt.
CREATE TABLE ops_events (
    id          uuid PRIMARY KEY,
    key         text NOT NULL UNIQUE,
    type        text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}',
    attempts    integer NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    last_error  text
);
CREATE INDEX ops_events_unsent ON ops_events (next_at) WHERE sent_at IS NULL;
