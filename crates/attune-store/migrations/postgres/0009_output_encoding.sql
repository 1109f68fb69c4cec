-- How stored output is written (PostgreSQL): 'utf-8' (the text itself) or 'base64' (the exact bytes of
-- binary output, invalid UTF-8 or output holding NUL). Keep in step with
-- migrations/sqlite/0009_output_encoding.sql.
ALTER TABLE executions ADD COLUMN stdout_encoding TEXT NOT NULL DEFAULT 'utf-8';
ALTER TABLE executions ADD COLUMN stderr_encoding TEXT NOT NULL DEFAULT 'utf-8';
ALTER TABLE execution_logs ADD COLUMN encoding TEXT NOT NULL DEFAULT 'utf-8';
