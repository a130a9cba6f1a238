-- The fleet's event types live here, not in each replica's data directory:
-- every replica sharing the database serves what these tables say.

-- Component bytes, stored once per content.
CREATE TABLE components (
    sha256      text PRIMARY KEY,
    bytes       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT components_size CHECK (octet_length(bytes) <= 33554432)
);

-- Every change of any type takes the next number, so a generation never
-- repeats, not even after a type is deleted and loaded again.
CREATE SEQUENCE event_type_generation;

-- One row per event type the fleet has had. A deleted type keeps its row
-- (`deleted_at` set) so the deletion has a generation and a time, which a
-- file in a replica's plugin directory must be newer than to bring it back.
CREATE TABLE event_types (
    name         text PRIMARY KEY,
    sha256       text NOT NULL REFERENCES components (sha256),
    version      text NOT NULL,
    config       jsonb NOT NULL DEFAULT '{}',
    webhook_url  text,
    -- Who made the change: the admin API or a replica's plugin directory.
    source       text NOT NULL CHECK (source IN ('api', 'directory')),
    generation   bigint NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    -- What a plugin directory last published for this type (a digest of
    -- the component and its settings): a directory file publishes only
    -- what differs from it, so restarting replicas on the same image never
    -- undoes a later upload or delete.
    directory_digest text
);

-- Each replica says here, every heartbeat, that it is alive and which
-- generation of each type it serves (and which it could not load).
CREATE TABLE replicas (
    id            uuid PRIMARY KEY,
    host          text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    -- Its heartbeat period: it is stale after missing three.
    heartbeat_ms  bigint NOT NULL,
    -- {"type": {"generation": n, "sha256": "...", "error": "..."|null}}
    serving       jsonb NOT NULL DEFAULT '{}'
);

-- The scheduling pass of a type's generation runs once for the fleet: the
-- replica named in `owner` runs it while its heartbeat is fresh; `cursor` is
-- the last user id done, so a replica taking over a dead owner's pass
-- carries on from there.
ALTER TABLE event_type_passes
    ADD COLUMN generation bigint,
    ADD COLUMN owner uuid,
    ADD COLUMN cursor uuid,
    ADD COLUMN done bigint NOT NULL DEFAULT 0,
    ADD COLUMN total bigint;
