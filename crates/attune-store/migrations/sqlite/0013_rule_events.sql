-- Events and enforcements on the event stream (SQLite): a log written by triggers, read after a
-- cursor like execution_history and worker_events. Keep in step with
-- migrations/postgres/0013_rule_events.sql.
CREATE TABLE rule_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    trigger_type TEXT,
    rule_ref     TEXT,
    outcome      TEXT,
    execution_id TEXT,
    reason       TEXT
);

CREATE TRIGGER trigger_events_received AFTER INSERT ON trigger_events
BEGIN
    INSERT INTO rule_events (at, kind, event_id, trigger_type, reason)
    VALUES (NEW.created_at, 'event', NEW.id, NEW.trigger_type, NEW.source);
END;

CREATE TRIGGER enforcements_recorded AFTER INSERT ON enforcements
BEGIN
    INSERT INTO rule_events (at, kind, event_id, rule_ref, outcome, execution_id, reason)
    VALUES (NEW.created_at, 'enforcement', NEW.event_id, NEW.rule_ref, NEW.outcome, NEW.execution_id, NEW.reason);
END;
