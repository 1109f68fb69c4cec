-- `overlap: buffer_one` (SQLite): a buffered enforcement later becomes `matched` (or is settled
-- otherwise) by an UPDATE, which the event stream shows like a new enforcement. Keep in step with
-- migrations/postgres/0015_buffered.sql.
CREATE INDEX enforcements_buffered ON enforcements (created_at) WHERE outcome = 'buffered';

CREATE TRIGGER enforcements_settled AFTER UPDATE OF outcome ON enforcements
WHEN OLD.outcome <> NEW.outcome
BEGIN
    INSERT INTO rule_events (at, kind, event_id, rule_ref, outcome, execution_id, reason)
    VALUES (NEW.created_at, 'enforcement', NEW.event_id, NEW.rule_ref, NEW.outcome, NEW.execution_id, NEW.reason);
END;
