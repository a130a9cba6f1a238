-- (user, event type) pairs whose schedule must be made again: the type's
-- plugin failed for that user, a delivery's next occurrence could not be
-- planned, or a user changed on a replica that does not have the type
-- loaded. Nothing that could not be planned is dropped: it waits here until
-- a replica that has the type plans it. A user's rows go with the user.
CREATE TABLE replans (
    user_id     uuid NOT NULL,
    event_type  text NOT NULL,
    reason      text NOT NULL,
    -- Planning failures in a row; a pair waiting only for a replica with
    -- its type has 0.
    attempts    integer NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_type)
);

CREATE INDEX replans_type_run_at ON replans (event_type, run_at);

-- A pass is recorded when it starts, so a replica without the type knows
-- the fleet has it while the pass runs; `completed_at` is set at its end.
ALTER TABLE event_type_passes
    ALTER COLUMN completed_at DROP NOT NULL,
    ALTER COLUMN completed_at DROP DEFAULT,
    ADD COLUMN started_at timestamptz NOT NULL DEFAULT now();
