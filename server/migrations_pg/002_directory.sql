-- server/store.py _m002_directory
CREATE TABLE visitors (
    id TEXT PRIMARY KEY,
    name TEXT,
    company TEXT,
    email TEXT,
    host TEXT,
    valid_from DOUBLE PRECISION,
    valid_until DOUBLE PRECISION,
    allowed_areas TEXT,
    escort_required BIGINT,
    status TEXT,
    card_hash TEXT,
    card_format TEXT,
    card_number_last4 TEXT,
    registered_at DOUBLE PRECISION,
    checked_in_at DOUBLE PRECISION,
    checked_out_at DOUBLE PRECISION
);
CREATE TABLE credential_states (hash TEXT PRIMARY KEY, state TEXT, changed_at DOUBLE PRECISION);
CREATE TABLE lockdowns (scope TEXT PRIMARY KEY, active BIGINT, changed_at DOUBLE PRECISION);
CREATE TABLE presence (person TEXT PRIMARY KEY, area TEXT, since DOUBLE PRECISION);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT);
