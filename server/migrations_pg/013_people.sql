-- server/store.py _m013_people
CREATE TABLE people (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    clearance BIGINT NOT NULL,
    access_levels TEXT NOT NULL,
    roles TEXT NOT NULL,
    state TEXT NOT NULL,
    valid_from DOUBLE PRECISION,
    valid_until DOUBLE PRECISION,
    pin_hash TEXT,
    host TEXT,
    company TEXT,
    allowed_areas TEXT NOT NULL,
    escort_required BIGINT NOT NULL,
    source TEXT NOT NULL,
    desk_changed BIGINT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE cards (
    hash TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    format TEXT NOT NULL,
    last4 TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX idx_cards_person ON cards (person);
CREATE TABLE visitor_pool (
    hash TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    last4 TEXT NOT NULL,
    position BIGINT NOT NULL
);
