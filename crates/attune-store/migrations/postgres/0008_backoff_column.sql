-- The retry backoff as a column (PostgreSQL), so that lifecycle decisions read it without parsing
-- the action snapshot. Keep in step with migrations/sqlite/0008_backoff_column.sql.
ALTER TABLE executions ADD COLUMN backoff_seconds BIGINT NOT NULL DEFAULT 0;
UPDATE executions SET backoff_seconds = COALESCE((action::json -> 'retry' ->> 'backoff_seconds')::BIGINT, 0);
