-- Postern state store, version 1: the tables that state.json held, one row per record.
-- The same SQL runs on SQLite (the embedded default) and PostgreSQL (replicas). Times are
-- seconds since the epoch (BIGINT); records with nested parts (devices, sign-in state) keep
-- them as a JSON document (`doc`) beside the columns that queries and constraints need.

CREATE TABLE enroll_tokens (
    id TEXT PRIMARY KEY,
    -- SHA-256 (hex) of the secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE,
    site TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    used BIGINT,
    used_by TEXT
);

CREATE TABLE connectors (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    serial TEXT NOT NULL,
    hostname TEXT,
    enrolled BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    revoked BIGINT,
    previous_serial TEXT,
    renewed BIGINT
);

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    exp BIGINT NOT NULL,
    user_name TEXT NOT NULL,
    revoked BIGINT NOT NULL
);

-- user_key: the user name, ASCII-lowercased (users compare ignoring case).
CREATE TABLE revoked_users (
    user_key TEXT PRIMARY KEY,
    before_time BIGINT NOT NULL
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_key TEXT NOT NULL,
    credential_id TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    -- Bumped by every change: updates are compare-and-set on it.
    version BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_key);

CREATE TABLE cli_codes (
    key_hash TEXT PRIMARY KEY,
    expires BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX cli_codes_by_expiry ON cli_codes (expires);

CREATE TABLE ceremonies (
    id TEXT PRIMARY KEY,
    expires BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX ceremonies_by_expiry ON ceremonies (expires);

-- Facts about the store itself (the import of an old state.json, ...).
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
