-- `overlap: buffer_one` (PostgreSQL): a buffered enforcement later becomes `matched` (or is
-- settled otherwise) by an UPDATE, which the event stream shows like a new enforcement. Keep in
-- step with migrations/sqlite/0015_buffered.sql.
CREATE INDEX enforcements_buffered ON enforcements (created_at) WHERE outcome = 'buffered';

CREATE TRIGGER enforcements_settled AFTER UPDATE OF outcome ON enforcements
FOR EACH ROW WHEN (OLD.outcome IS DISTINCT FROM NEW.outcome) EXECUTE FUNCTION attune_rule_event();
