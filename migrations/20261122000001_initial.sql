-- People and their dates.
CREATE TABLE users (
    id          uuid PRIMARY KEY,
    first_name  text NOT NULL,
    last_name   text NOT NULL,
    timezone    text NOT NULL,
    dates       jsonb NOT NULL DEFAULT '{}',
    attributes  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (user, event type, occurrence). `occurrence` is the local wall
-- time the plugin returned; `due_at` is that instant in UTC; `run_at` is when
-- the next delivery attempt may start (due_at, or later after a failure).
CREATE TABLE events (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    event_type    text NOT NULL,
    occurrence    timestamp NOT NULL,
    timezone      text NOT NULL,
    due_at        timestamptz NOT NULL,
    run_at        timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processing', 'delivered', 'failed', 'cancelled')),
    -- Delivery attempts made. `attempts_before_retry` is the count when an
    -- operator last retried it, so a manual retry grants a fresh round.
    attempts      integer NOT NULL DEFAULT 0,
    attempts_before_retry integer NOT NULL DEFAULT 0,
    last_error    text,
    lease_id      uuid,
    lease_until   timestamptz,
    delivered_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The exactly-once key. Cancelled rows do not count, so an occurrence can be
-- scheduled afresh after its type was unloaded and loaded again.
CREATE UNIQUE INDEX events_occurrence_key
    ON events (user_id, event_type, occurrence) WHERE status <> 'cancelled';

-- What the claimer scans: pending events by the time they may run.
CREATE INDEX events_pending_run_at ON events (run_at) WHERE status = 'pending';

-- What the rescuer scans: leases that may have expired.
CREATE INDEX events_processing_lease ON events (lease_until) WHERE status = 'processing';

CREATE INDEX events_user ON events (user_id);
CREATE INDEX events_status_type ON events (status, event_type);

-- Wake every host's claimer when an event becomes pending. Identical payloads
-- in one transaction are folded into one notification by PostgreSQL.
CREATE FUNCTION kairos_notify_pending() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('kairos_events', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_notify_pending
    AFTER INSERT OR UPDATE OF status, run_at ON events
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION kairos_notify_pending();
