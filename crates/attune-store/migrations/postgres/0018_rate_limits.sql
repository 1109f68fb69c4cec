-- Rate limits (issue 16, PostgreSQL): an execution whose action has a rate limit carries its
-- bucket's key (`<action>/<rendered key>`), rate and burst; buckets hold the tokens left and when
-- they were counted. A start takes a token at claim time (`Store::claim_limited`), under an
-- advisory lock on the key. Keep in step with migrations/sqlite/0018_rate_limits.sql.
ALTER TABLE executions ADD COLUMN rate_key TEXT;
ALTER TABLE executions ADD COLUMN rate_per_second DOUBLE PRECISION;
ALTER TABLE executions ADD COLUMN rate_burst INTEGER;
CREATE TABLE rate_buckets (
    key        TEXT PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL
);
