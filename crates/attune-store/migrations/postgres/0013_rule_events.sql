-- Events and enforcements on the event stream (PostgreSQL): a log written by triggers, read after
-- a cursor like execution_history and worker_events. Keep in step with
-- migrations/sqlite/0013_rule_events.sql.
CREATE TABLE rule_events (
    id           BIGSERIAL PRIMARY KEY,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    trigger_type TEXT,
    rule_ref     TEXT,
    outcome      TEXT,
    execution_id TEXT,
    reason       TEXT
);

CREATE FUNCTION attune_rule_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'trigger_events' THEN
        INSERT INTO rule_events (at, kind, event_id, trigger_type, reason)
        VALUES (NEW.created_at, 'event', NEW.id, NEW.trigger_type, NEW.source);
    ELSE
        INSERT INTO rule_events (at, kind, event_id, rule_ref, outcome, execution_id, reason)
        VALUES (NEW.created_at, 'enforcement', NEW.event_id, NEW.rule_ref, NEW.outcome, NEW.execution_id, NEW.reason);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER trigger_events_received AFTER INSERT ON trigger_events FOR EACH ROW EXECUTE FUNCTION attune_rule_event();
CREATE TRIGGER enforcements_recorded AFTER INSERT ON enforcements FOR EACH ROW EXECUTE FUNCTION attune_rule_event();
