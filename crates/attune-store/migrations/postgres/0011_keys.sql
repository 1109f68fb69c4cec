-- The key store (postgres). A secret key's value is stored only encrypted (`ciphertext`: base64 of
-- nonce and AEAD output, under the master key whose fingerprint is `key_id`); a plain key's in
-- `value`. `scope` is '' for a global key, else a pack's ref. Keep in step with
-- migrations/sqlite/0011_keys.sql.
CREATE TABLE keys (
    scope      TEXT NOT NULL,
    name       TEXT NOT NULL,
    secret     BOOLEAN NOT NULL,
    value      TEXT,
    ciphertext TEXT,
    key_id     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT,
    PRIMARY KEY (scope, name)
);
