-- Priorities (issue 16): waiting executions are taken by rank, smallest first. The rank is the
-- submission time moved a minute earlier per priority step (`attune_core::action::queue_rank`), so
-- the order is one index scan and no priority starves. Existing rows rank by submission time.
-- Same text on both backends.
ALTER TABLE executions ADD COLUMN queue_rank BIGINT NOT NULL DEFAULT 0;
UPDATE executions SET queue_rank = created_at;
CREATE INDEX executions_ready_rank ON executions (queue_rank, id) WHERE status = 'scheduled' AND lease_token IS NULL;
