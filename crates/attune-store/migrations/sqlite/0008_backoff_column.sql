-- The retry backoff as a column (SQLite), so that lifecycle decisions read it without parsing the
-- action snapshot. Keep in step with migrations/postgres/0008_backoff_column.sql.
ALTER TABLE executions ADD COLUMN backoff_seconds BIGINT NOT NULL DEFAULT 0;
UPDATE executions SET backoff_seconds = COALESCE(json_extract(action, '$.retry.backoff_seconds'), 0);
