-- Sensors (sqlite): loaded with their packs (definition), and where each runs. A sensor is held by
-- one worker at a time under a lease its heartbeats renew, like an execution's: it is taken by a
-- conditional update (free, or its lease lapsed, and out of backoff), so two workers never both
-- run it. Keep in step with the other backend's 0014_sensors.sql.
CREATE TABLE sensors (
    ref              TEXT PRIMARY KEY,
    pack_ref         TEXT NOT NULL,
    runtime          TEXT NOT NULL,
    definition       TEXT NOT NULL,
    enabled          BOOLEAN NOT NULL,
    -- Set by `attune sensor enable|disable`; kept across reloads of the pack.
    enabled_override BOOLEAN,
    worker_id        TEXT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    started_at       BIGINT,
    restarts         BIGINT NOT NULL DEFAULT 0,
    -- Exits in a row (reset by a run of a minute or more): the backoff grows with it.
    failures         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_error_at    BIGINT,
    retry_at         BIGINT NOT NULL DEFAULT 0,
    events           BIGINT NOT NULL DEFAULT 0,
    malformed        BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL
);
