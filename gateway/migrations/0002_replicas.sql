-- Postern state store, version 2: gateway replicas sharing the store, and the session-token
-- keys each publishes so that every replica verifies every replica's tokens.

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    -- Random per process: a second process claiming a live replica's id is refused.
    instance TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    -- JSON array of host:port connectors dial for this replica.
    connector_addrs TEXT NOT NULL,
    version TEXT NOT NULL,
    started BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL
);

CREATE TABLE token_keys (
    kid TEXT PRIMARY KEY,
    public_pem TEXT NOT NULL,
    replica TEXT NOT NULL,
    created BIGINT NOT NULL,
    -- Set when the replica signs with a newer key: verifies until then.
    expires BIGINT
);
