-- Packs as content: every version of a pack is stored as its archive (a gzip-compressed tar),
-- keyed by the archive's sha256. Versions are kept when a pack changes, so that executions
-- accepted earlier still fetch what they were submitted against. `packs.digest` is the current one.
CREATE TABLE pack_archives (
    digest     TEXT PRIMARY KEY,
    pack_ref   TEXT NOT NULL,
    size       BIGINT NOT NULL,
    archive    BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX pack_archives_by_pack ON pack_archives (pack_ref, created_at);
ALTER TABLE packs ADD COLUMN digest TEXT;
