-- server/store.py _m006_operators
CREATE TABLE operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    disabled_at DOUBLE PRECISION
);
CREATE TABLE operator_tokens (
    id TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    label TEXT NOT NULL,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX idx_operator_tokens_hash ON operator_tokens (hash);
CREATE TABLE operator_sessions (
    hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_seen_at DOUBLE PRECISION NOT NULL,
    client TEXT
);
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT,
    last_failure_at DOUBLE PRECISION,
    locked_until DOUBLE PRECISION
);
