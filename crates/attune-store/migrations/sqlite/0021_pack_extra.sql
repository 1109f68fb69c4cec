-- What a pack's manifest holds beyond ref, label, description and version: its configuration and
-- schema, and the notes on keys accepted but not used or files skipped (JSON: PackMeta's
-- `config`, `conf_schema`, `notes`).
ALTER TABLE packs ADD COLUMN extra TEXT;
