-- Events (sqlite): trigger types and rules loaded with their packs, the events that arrived, and
-- exactly one enforcement per (event, rule), which the UNIQUE constraint guarantees whoever
-- processes the event and however often. Timers hold each timer's next tick; a tick is claimed by
-- a conditional update, so one server of several fires it. Keep in step with the other backend's
-- 0012_events.sql.
CREATE TABLE trigger_types (
    ref        TEXT PRIMARY KEY,
    pack_ref   TEXT NOT NULL,
    definition TEXT NOT NULL
);
CREATE TABLE rules (
    ref              TEXT PRIMARY KEY,
    pack_ref         TEXT NOT NULL,
    trigger_type     TEXT NOT NULL,
    definition       TEXT NOT NULL,
    -- Set by `attune rule enable|disable`; kept across reloads of the pack.
    enabled_override BOOLEAN,
    updated_at       BIGINT NOT NULL
);
CREATE TABLE trigger_events (
    id                 TEXT PRIMARY KEY,
    trigger_type       TEXT NOT NULL,
    trigger_parameters TEXT NOT NULL,
    payload            TEXT NOT NULL,
    source             TEXT NOT NULL,
    late               BOOLEAN NOT NULL,
    created_at         BIGINT NOT NULL,
    processed_at       BIGINT
);
CREATE INDEX trigger_events_unprocessed ON trigger_events (created_at) WHERE processed_at IS NULL;
CREATE INDEX trigger_events_by_time ON trigger_events (created_at);
CREATE TABLE enforcements (
    id           TEXT PRIMARY KEY,
    event_id     TEXT NOT NULL,
    rule_ref     TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    execution_id TEXT,
    reason       TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (event_id, rule_ref)
);
CREATE INDEX enforcements_by_rule ON enforcements (rule_ref, created_at);
CREATE TABLE timers (
    key           TEXT PRIMARY KEY,
    trigger_type  TEXT NOT NULL,
    parameters    TEXT NOT NULL,
    next_fire_at  BIGINT NOT NULL,
    last_fired_at BIGINT
);
