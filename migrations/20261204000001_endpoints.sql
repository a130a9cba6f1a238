-- Endpoints: the webhook URLs events go to, as the fleet sees them. A row is
-- keyed by a digest of the full URL (`id`); `url` is shown without
-- credentials or query string, which are never stored.
CREATE TABLE endpoints (
    id                   text PRIMARY KEY,
    url                  text NOT NULL,
    state                text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'disabled')),
    -- `failing`: disabled by the host after KAIROS_ENDPOINT_DISABLE_AFTER of
    -- nothing but retryable failures, probed, enabled again on success;
    -- `manual`: disabled through the API, never probed.
    disabled_reason      text CHECK (disabled_reason IN ('failing', 'manual')),
    consecutive_failures bigint NOT NULL DEFAULT 0,
    -- The first failed attempt after the last success; null while it succeeds.
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    -- When the next probe of a failing endpoint may be sent (one replica wins it).
    next_probe_at        timestamptz,
    -- A fleet-wide cap on deliveries per second: a token bucket of one
    -- second's worth, filled at `rate_per_s`, that every replica takes from.
    rate_per_s           double precision CHECK (rate_per_s > 0),
    tokens               double precision NOT NULL DEFAULT 0,
    tokens_at            timestamptz NOT NULL DEFAULT now(),
    -- A receiver's `Retry-After` pauses the whole endpoint until then.
    paused_until         timestamptz,
    -- When it was last enabled: its waiting events are released at a rate
    -- that starts low and doubles, so a receiver that just came back is not
    -- flooded.
    released_at          timestamptz,
    changed_at           timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'disabled') = (disabled_reason IS NOT NULL))
);
