-- server/store_passes.py m019_visitor_passes
CREATE TABLE visitor_passes (
    id TEXT PRIMARY KEY,
    visit TEXT NOT NULL,
    serial BIGINT NOT NULL,
    hash TEXT NOT NULL,
    last4 TEXT NOT NULL,
    key_id TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    state TEXT NOT NULL,
    issued_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    issued_by TEXT
);
CREATE INDEX idx_visitor_passes_visit ON visitor_passes (visit);
CREATE UNIQUE INDEX idx_visitor_passes_hash ON visitor_passes (hash);
