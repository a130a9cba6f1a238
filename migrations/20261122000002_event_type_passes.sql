-- The last complete scheduling pass of each event type over all users: which
-- component and config it was made with. A host that starts (or a replica that
-- loads) the same component with the same config skips the pass.
CREATE TABLE event_type_passes (
    event_type    text PRIMARY KEY,
    sha256        text NOT NULL,
    config        jsonb NOT NULL,
    completed_at  timestamptz NOT NULL DEFAULT now()
);
